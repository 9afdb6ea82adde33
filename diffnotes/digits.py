"""The 8x8 digits experiment of chapter 06 (document 003's least-steps table on a small real image set).

* :func:`load_split`: scikit-learn's 8x8 digits (1797 images, 64 pixels in 0..16, offline), scaled to ``[-1, 1]``
  (``x / 8 - 1``) and split into a training and a held-out set by a seeded permutation (the same seed gives the
  same split in any process).
* :class:`Empirical`: a data set as a sampler (``.sample(n, generator=)`` draws rows with replacement, ``.d``,
  ``.device``), so that :func:`diffnotes.covariance.train_score_net`, :func:`~diffnotes.covariance.train_heads`
  and :func:`~diffnotes.covariance.analytic_table` train on it as they do on a mixture.
* :class:`Classifier` and :func:`train_classifier`: a small MLP classifier whose penultimate activations are the
  feature space of the Frechet distance (the role Inception plays in FID).
* :func:`frechet_bootstrap`: the squared Frechet distance between the Gaussian fits of two feature sets, with a
  bootstrap interval (both sets resampled with replacement, batched).
* :func:`kid`, :func:`kid_weighted`: the kernel inception distance (the unbiased estimate of the squared MMD with
  the cubic polynomial kernel ``k(a, b) = (a.b / k + 1)^3`` of Binkowski et al.), and its value under bootstrap
  weights (distinct original pairs only, so that a resample does not inflate the within-set terms).
* :func:`scan` and :class:`PairedKID`: every sampler at every ``K`` of a grid on several independent replicate draws
  (same ``x_T`` and common random numbers across samplers within a draw), then a paired bootstrap over the
  held-out images, the generated images of each draw and the draws, so that differences between samplers at equal
  (or different) ``K`` come with intervals that account for what the samplers share.
* :func:`cost_factor`: the cost of a sampler step in units of one score-network forward pass, from the pass
  counters of :func:`diffnotes.skipstep.skip_step`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .nets import fit, seeded

__all__ = ["SPLIT", "CLF", "SCORE", "HEADS", "T", "train_feature_classifier", "train_score", "train_digit_heads",
           "Split", "load_split", "Empirical", "Classifier", "train_classifier", "accuracy", "features",
           "gaussian_stats", "frechet_batched", "FrechetCI", "frechet_bootstrap", "cost_factor", "n_params",
           "VJP_COST", "kid", "kid_weighted", "kid_bootstrap", "multinomial_counts", "Scan", "scan", "PairedKID",
           "paired_kid"]

#: a vector-Jacobian (backward) pass counted as this many forward passes in :func:`cost_factor`.
VJP_COST = 2.0

#: settings of the shipped weights (``scripts/train_digits.py``, the notebook's ``retrain``, ``tests/test_retrain.py``)
T = 1000
SPLIT = {"n_test": 500, "seed": 0}
CLF = {"steps": 2000, "batch": 128, "lr": 2e-3, "weight_decay": 1e-4, "hidden": 128, "n_features": 64}
SCORE = {"steps": 12000, "batch": 256, "hidden": 256, "layers": 3, "lr": 2e-3}
HEADS = {"steps": 3000, "batch": 256, "hidden": 128, "layers": 3, "lr": 2e-3}


# ---- data -----------------------------------------------------------------------------------------------------------
@dataclass
class Split:
    x_train: torch.Tensor              # (n_train, 64) in [-1, 1]
    y_train: torch.Tensor              # (n_train,) labels 0..9
    x_test: torch.Tensor
    y_test: torch.Tensor
    perm: torch.Tensor                 # the permutation of sklearn's order; test = perm[:n_test]


def load_split(n_test=500, seed=0, dtype=torch.float32, device=None):
    """The 8x8 digits, scaled to ``[-1, 1]``, split by ``torch.randperm(1797)`` seeded with ``seed``: the first
    ``n_test`` indices are held out, the rest is the training set."""
    from sklearn.datasets import load_digits

    if isinstance(n_test, bool) or not isinstance(n_test, int) or not 1 <= n_test <= 1796:
        raise ValueError(f"n_test must be an integer in [1, 1796], got {n_test!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float64) / 8.0 - 1.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    x = x.to(dtype=dtype, device=device)
    y = y.to(device=device)
    return Split(x[tr], y[tr], x[te], y[te], perm)


class Empirical:
    """The empirical law of the rows of ``x`` (``(n, d)``): ``sample(n, generator=)`` draws rows with replacement."""

    def __init__(self, x):
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[0] < 1:
            raise ValueError("x must be a non-empty (n, d) tensor")
        self.x = x
        self.d = x.shape[1]
        self.device = x.device

    def sample(self, n, lab=None, generator=None):
        if lab is not None:
            raise ValueError("lab: Empirical samples x_0 only")
        idx = torch.randint(0, self.x.shape[0], (n,), generator=generator, device=self.x.device)
        return self.x[idx]

    def to(self, device):
        return Empirical(self.x.to(device))


# ---- the feature classifier ---------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """``x (64) -> hidden -> features -> 10 logits`` with SiLU; :meth:`features` are the penultimate activations."""

    def __init__(self, d=64, hidden=128, n_features=64, classes=10, seed=None):
        super().__init__()
        seeded(lambda: self._build(d, hidden, n_features, classes), seed)

    def _build(self, d, hidden, n_features, classes):
        self.d, self.hidden, self.n_features, self.classes = d, hidden, n_features, classes
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, n_features), nn.SiLU())
        self.out = nn.Linear(n_features, classes)

    def config(self):
        return {"d": self.d, "hidden": self.hidden, "n_features": self.n_features, "classes": self.classes}

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.out(self.body(x))


def train_classifier(x, y, *, steps=3000, batch=128, lr=2e-3, weight_decay=1e-4, hidden=128, n_features=64,
                     seed=0, progress=False):
    """Cross-entropy training of a :class:`Classifier` on ``(x, y)`` (mini-batches drawn with a generator seeded
    by ``seed``; the weights initialised from ``seed``).  Returns ``(classifier, losses)``."""
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be positive, got steps={steps}, batch={batch}")
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError("x must be (n, d) and y (n,)")
    clf = Classifier(x.shape[1], hidden=hidden, n_features=n_features, seed=seed).to(x.device)
    g = torch.Generator(device=x.device).manual_seed(seed)
    dt = next(clf.parameters()).dtype
    wd = weight_decay

    def step_loss():
        idx = torch.randint(0, x.shape[0], (batch,), generator=g, device=x.device)
        loss = nn.functional.cross_entropy(clf(x[idx].to(dt)), y[idx])
        return loss + wd * sum((p ** 2).sum() for p in clf.parameters())

    losses = fit(clf.parameters(), step_loss, steps=steps, lr=lr, progress=progress, desc="classifier")
    return clf.eval(), losses


@torch.no_grad()
def accuracy(clf, x, y):
    dt = next(clf.parameters()).dtype
    return float((clf(x.to(dt)).argmax(-1) == y).double().mean())


@torch.no_grad()
def features(clf, x, chunk=4096):
    """Penultimate activations ``(n, n_features)`` in float64."""
    dt = next(clf.parameters()).dtype
    return torch.cat([clf.features(c.to(dt)) for c in x.split(chunk)]).to(torch.float64)


# ---- the shipped models, trained with the settings above ----------------------------------------------------------
def _kw(settings):
    return {k: v for k, v in settings.items() if k != "steps"}


def train_feature_classifier(split, steps=CLF["steps"], seed=0, progress=False):
    """The feature classifier on the training split (settings :data:`CLF`): ``(classifier, losses)``."""
    return train_classifier(split.x_train, split.y_train, steps=steps, seed=seed, progress=progress, **_kw(CLF))


def train_score(split, schedule, steps=SCORE["steps"], seed=0, progress=False):
    """The DSM score net (an :class:`~diffnotes.nets.EpsMLP`, settings :data:`SCORE`) on the training split:
    ``(net, losses)``."""
    from .covariance import train_score_net
    return train_score_net(Empirical(split.x_train), schedule, steps=steps, seed=seed, progress=progress,
                           **_kw(SCORE))


def train_digit_heads(split, score, schedule, steps=HEADS["steps"], seed=10, methods=None, progress=False):
    """The covariance heads (settings :data:`HEADS`) against a frozen ``score`` on the training split (the head of
    ``HEAD_METHODS[i]`` is seeded with ``seed + i`` when ``methods`` is all of them): ``(Heads, losses)``."""
    from .covariance import HEAD_METHODS, train_heads
    return train_heads(Empirical(split.x_train), score, schedule, methods=methods or HEAD_METHODS, steps=steps,
                       seed=seed, progress=progress, **_kw(HEADS))


# ---- Frechet distance with a bootstrap interval -------------------------------------------------------------------
def gaussian_stats(f):
    """Mean and (unbiased) covariance of the rows of ``f``: ``(d,), (d, d)``, or batched ``(B, n, d) -> (B, d),
    (B, d, d)``."""
    f = f.to(torch.float64)
    mu = f.mean(-2)
    c = f - mu.unsqueeze(-2)
    return mu, c.transpose(-1, -2) @ c / (f.shape[-2] - 1)


def frechet_batched(mu1, C1, mu2, C2):
    """Squared Frechet distance ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^{1/2} C2 C1^{1/2})^{1/2})``, batched over
    leading dimensions (the same formula as :func:`diffnotes.metrics.frechet_distance`)."""
    lam, U = torch.linalg.eigh(C1)
    r1 = (U * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ U.transpose(-1, -2)
    mid = torch.linalg.eigvalsh(r1 @ C2 @ r1).clamp_min(0).sqrt().sum(-1)
    tr = lambda C: torch.diagonal(C, dim1=-2, dim2=-1).sum(-1)
    return ((mu1 - mu2) ** 2).sum(-1) + tr(C1) + tr(C2) - 2 * mid


@dataclass
class FrechetCI:
    value: float                       # the point estimate on the two sets
    lo: float                          # the bootstrap interval
    hi: float
    boot: torch.Tensor                 # the bootstrap replicates

    @property
    def sd(self):
        return float(self.boot.std())

    @property
    def bias(self):
        """The bootstrap estimate of the upward bias: mean of the replicates minus the point estimate."""
        return float(self.boot.mean()) - self.value

    def __str__(self):
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def frechet_bootstrap(fa, fb, *, n_boot=200, level=0.95, generator=None, chunk=50):
    """Frechet distance ``F`` between the Gaussian fits of feature sets ``fa`` and ``fb`` (rows), with a normal
    bootstrap interval ``F -+ z sd`` at ``level``: both sets are resampled with replacement ``n_boot`` times (batched)
    and ``sd`` is the standard deviation of the replicates.

    Only the *spread* of the replicates is used: resampling with replacement repeats rows, which inflates the
    distance, so the replicates sit well above ``F`` (their mean minus ``F`` is the bootstrap estimate of ``F``'s
    own upward bias, :attr:`FrechetCI.bias`), and a percentile interval would barely reach ``F``.  ``F`` itself is
    biased upwards at finite sample size (two samples of one law give ``F > 0``): compare distances only at equal
    set sizes (the floor and every sampler here use as many rows as the held-out set).  The lower end is floored
    at 0."""
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError("fa and fb must be (n, k) and (m, k) feature sets of the same width")
    if min(fa.shape[0], fb.shape[0]) < 2:
        raise ValueError("fa and fb need at least 2 rows each")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    fa, fb = fa.to(torch.float64), fb.to(torch.float64)
    value = float(frechet_batched(*gaussian_stats(fa), *gaussian_stats(fb)))
    boots = []
    for b0 in range(0, n_boot, chunk):
        B = min(chunk, n_boot - b0)
        ia = torch.randint(0, fa.shape[0], (B, fa.shape[0]), generator=generator, device=fa.device)
        ib = torch.randint(0, fb.shape[0], (B, fb.shape[0]), generator=generator, device=fb.device)
        boots.append(frechet_batched(*gaussian_stats(fa[ia]), *gaussian_stats(fb[ib])))
    boot = torch.cat(boots)
    z = math.sqrt(2) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))
    sd = float(boot.std())
    return FrechetCI(value, max(0.0, value - z * sd), value + z * sd, boot)


# ---- cost of a step -----------------------------------------------------------------------------------------------
def n_params(module):
    return sum(p.numel() for p in module.parameters())


def cost_factor(passes, K, p_score, p_head=0):
    """Cost of one step in units of one score-network forward pass, from the pass counters of a ``K``-step run:
    ``(forward + VJP_COST * vjp + head * p_head / p_score) / K``.  A head pass is weighted by the head's
    parameter count relative to the score net's (the multiply-adds of an MLP); a backward pass by
    :data:`VJP_COST`."""
    if K < 1 or p_score < 1:
        raise ValueError(f"K and p_score must be positive, got K={K}, p_score={p_score}")
    if passes.get("head", 0) and not p_head:
        raise ValueError("p_head is required when the run used head passes")
    return (passes["forward"] + VJP_COST * passes["vjp"] + passes["head"] * p_head / p_score) / K


# ---- kernel inception distance (unbiased) and a paired bootstrap ---------------------------------------------------
def _poly_kernel(a, b):
    return (a @ b.transpose(-1, -2) / a.shape[-1] + 1.0) ** 3


def _check_features(fa, fb):
    if not (torch.is_tensor(fa) and torch.is_tensor(fb)) or fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError("fa and fb must be (n, k) and (m, k) feature tensors of the same width")
    if min(fa.shape[0], fb.shape[0]) < 2:
        raise ValueError("fa and fb need at least 2 rows each")
    if not (torch.isfinite(fa).all() and torch.isfinite(fb).all()):
        raise ValueError("fa and fb must be finite")


def kid(fa, fb):
    """Kernel inception distance: the unbiased (U-statistic) estimate of ``MMD^2`` between the laws of the rows of
    ``fa`` (n, k) and ``fb`` (m, k) with the kernel ``k(a, b) = (a.b / k + 1)^3``.  Its expectation is the true
    ``MMD^2`` (0 for two samples of one law, whatever n and m), unlike the Frechet distance; it can be negative."""
    _check_features(fa, fb)
    fa, fb = fa.to(torch.float64), fb.to(torch.float64)
    one = lambda f: torch.ones(1, f.shape[0], dtype=torch.float64, device=f.device)  # noqa: E731
    return float(kid_weighted(_poly_kernel(fa, fa), _poly_kernel(fb, fb), _poly_kernel(fa, fb), one(fa), one(fb))[0])


def kid_weighted(Kaa, Kbb, Kab, wa, wb):
    """The KID of two sets given their kernel matrices, with bootstrap weights ``wa`` (B, n), ``wb`` (B, m)
    (multinomial counts of a resample): ``(B,)`` values.  Within-set terms sum over pairs of *distinct original*
    rows (``sum_ij w_i w_j K_ij - sum_i w_i^2 K_ii`` over ``(sum w)^2 - sum w^2``), so a resample that repeats a row
    does not count it as its own neighbour; with all weights 1 this is the unbiased estimate of :func:`kid`."""
    def within(K, w):
        return ((w @ K) * w).sum(-1) - (w ** 2 * torch.diagonal(K)).sum(-1), w.sum(-1) ** 2 - (w ** 2).sum(-1)
    xa, na = within(Kaa, wa)
    xb, nb = within(Kbb, wb)
    return xa / na + xb / nb - 2 * ((wa @ Kab) * wb).sum(-1) / (wa.sum(-1) * wb.sum(-1))


def kid_bootstrap(fa, fb, *, n_boot=200, generator=None):
    """:func:`kid` of two feature sets and its bootstrap standard error (both sets resampled, distinct pairs only):
    ``(value, se)``."""
    _check_features(fa, fb)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    fa, fb = fa.to(torch.float64), fb.to(torch.float64)
    Ks = _poly_kernel(fa, fa), _poly_kernel(fb, fb), _poly_kernel(fa, fb)
    wa = multinomial_counts(n_boot, fa.shape[0], generator, fa.device)
    wb = multinomial_counts(n_boot, fb.shape[0], generator, fb.device)
    return kid(fa, fb), float(kid_weighted(*Ks, wa, wb).std())


def multinomial_counts(B, n, generator=None, device=None):
    """``(B, n)`` float64 counts of ``n`` draws with replacement from ``n`` items, ``B`` times (bootstrap weights)."""
    idx = torch.randint(0, n, (B, n), generator=generator, device=device)
    return torch.zeros(B, n, dtype=torch.float64, device=device).scatter_add_(
        1, idx, torch.ones(B, n, dtype=torch.float64, device=device))


@dataclass
class Scan:
    """Features (and pass counters) of every sampler at every ``K`` on every replicate draw."""
    labels: list                       # sampler labels, in table order
    steps: list                        # the K grid
    feats: list                        # feats[r][(label, K)]: (n, k) features of replicate r
    fd: dict                           # {(label, K): [Frechet distance to the held-out set, per replicate]}
    passes: dict                       # {(label, K): pass counters of replicate 0's run}
    clipped: dict                      # {(label, K): rows x steps clipped by the PSD rule, summed over replicates}


def scan(rows, score, xTs, schedule, steps_grid, featurize, *, heads=None, table=None, seeds, f_ref=None,
         progress=False):
    """Run every sampler ``(label, method, eta)`` of ``rows`` at every ``K`` of ``steps_grid`` on every replicate:
    replicate ``r`` starts from ``xTs[r]`` and draws its noise from a generator seeded with ``seeds[r]`` (common
    random numbers across samplers and ``K`` within a replicate).  ``featurize(x)`` maps samples to features;
    ``f_ref`` (held-out features), if given, adds each run's Frechet distance to it.  Returns a :class:`Scan`."""
    from .skipstep import even_steps, skip_step
    if len(xTs) != len(seeds) or len(xTs) < 1:
        raise ValueError(f"xTs and seeds must have the same positive length, got {len(xTs)} and {len(seeds)}")
    steps_grid = sorted(steps_grid)
    if f_ref is not None:
        mu_ref, C_ref = gaussian_stats(f_ref)
    feats, fd, passes, clipped = [], {}, {}, {}
    jobs = [(r, row, K) for r in range(len(xTs)) for row in rows for K in steps_grid]
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="scan (draw, sampler, K)")
    for r, (label, method, eta), K in jobs:
        if len(feats) <= r:
            feats.append({})
        crn = torch.Generator(device=xTs[r].device).manual_seed(seeds[r])
        run = skip_step(method, score, xTs[r], schedule, even_steps(schedule.T, K), eta=eta, heads=heads,
                        table=table, generator=crn)
        f = featurize(run.x)
        feats[r][label, K] = f
        if f_ref is not None:
            fd.setdefault((label, K), []).append(float(frechet_batched(*gaussian_stats(f), mu_ref, C_ref)))
        if r == 0:
            passes[label, K] = run.passes
        clipped[label, K] = clipped.get((label, K), 0) + run.clipped
    return Scan([row[0] for row in rows], steps_grid, feats, fd, passes, clipped)


class PairedKID:
    """KID of every (sampler, K) of a :class:`Scan` to the held-out features, averaged over the replicate draws,
    with a **paired** bootstrap: each bootstrap replicate resamples the held-out images (the same resample for every
    sampler), the generated images of each draw (the same row indices for every sampler and K of that draw: rows
    share ``x_T``) and the draws themselves (the same draws for everyone).  Differences between any two
    (sampler, K) are then judged on the same resamples, which accounts for what they share.

    ``value[(label, K)]``: the mean over draws of the unbiased KID; ``boot[(label, K)]``: (n_boot,) replicates."""

    def __init__(self, sc, f_test, *, n_boot=200, generator=None, level=0.95):
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
            raise ValueError(f"n_boot must be an integer >= 10, got {n_boot!r}")
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        R = len(sc.feats)
        dev = f_test.device
        fy = f_test.to(torch.float64)
        Kyy = _poly_kernel(fy, fy)
        n = next(iter(sc.feats[0].values())).shape[0]
        wy = multinomial_counts(n_boot, fy.shape[0], generator, dev)
        wx = [multinomial_counts(n_boot, n, generator, dev) for _ in range(R)]
        c = multinomial_counts(n_boot, R, generator, dev)                      # draws resampled
        one_x = torch.ones(1, n, dtype=torch.float64, device=dev)
        one_y = torch.ones(1, fy.shape[0], dtype=torch.float64, device=dev)
        self.value, self.boot, self.per_draw = {}, {}, {}
        for key in sc.feats[0]:
            pts, bs = [], []
            for r in range(R):
                fx = sc.feats[r][key].to(torch.float64)
                _check_features(fx, fy)
                Kxx, Kxy = _poly_kernel(fx, fx), _poly_kernel(fx, fy)
                pts.append(float(kid_weighted(Kxx, Kyy, Kxy, one_x, one_y)[0]))
                bs.append(kid_weighted(Kxx, Kyy, Kxy, wx[r], wy))
            self.per_draw[key] = pts
            self.value[key] = sum(pts) / R
            self.boot[key] = (torch.stack(bs, 1) * c).sum(1) / R
        self.z = math.sqrt(2) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))
        self.labels, self.steps, self.n_draws = sc.labels, sc.steps, R

    def se(self, key):
        """Bootstrap standard error of ``value[key]``."""
        return float(self.boot[key].std())

    def diff(self, a, b):
        """Paired difference ``value[a] - value[b]`` (keys ``(label, K)``): ``(difference, lo, hi)``, the normal
        bootstrap interval ``d -+ z sd`` of the paired replicates."""
        d = self.value[a] - self.value[b]
        sd = float((self.boot[a] - self.boot[b]).std())
        return d, d - self.z * sd, d + self.z * sd

    def least_k(self, label, threshold):
        """The least ``K`` of the grid whose mean KID is at or below ``threshold`` (None if none), and the 2.5% and
        97.5% quantiles of the least ``K`` over the bootstrap replicates (None where a replicate reaches it nowhere:
        reported as ``> max K``)."""
        def first(vals):
            return next((K for K, v in zip(self.steps, vals) if v <= threshold), None)
        K = first([self.value[label, K] for K in self.steps])
        B = self.boot[label, self.steps[0]].shape[0]
        big = max(self.steps) + 1
        ks = sorted((first([float(self.boot[label, K][b]) for K in self.steps]) or big) for b in range(B))
        lo, hi = ks[int(0.025 * (B - 1))], ks[int(math.ceil(0.975 * (B - 1)))]
        return K, (lo if lo < big else None, hi if hi < big else None)


def paired_kid(sc, f_test, *, n_boot=200, generator=None, level=0.95):
    """:class:`PairedKID` of a :class:`Scan` (see there)."""
    return PairedKID(sc, f_test, n_boot=n_boot, generator=generator, level=level)
