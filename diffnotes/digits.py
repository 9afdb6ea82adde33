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
           "gaussian_stats", "frechet_batched", "FrechetCI", "frechet_bootstrap", "cost_factor", "n_params", "least_steps_table",
           "VJP_COST"]

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


# ---- the least-steps scan -----------------------------------------------------------------------------------------
def least_steps_table(rows, score, xT, schedule, steps_grid, threshold, quality, *, heads=None, table=None, seed=0):
    """003's least-steps table: for each ``(label, method, eta)`` in ``rows``, the first ``K`` of the increasing
    ``steps_grid`` whose skip-step run (:func:`diffnotes.skipstep.skip_step` over ``even_steps(T, K)`` from ``xT``)
    has ``quality(x).value <= threshold`` (``quality`` returns a :class:`FrechetCI`).  Every run draws its noise
    from a generator seeded with ``seed`` (common random numbers across methods and ``K``).

    Returns ``{label: (K or None, {K: FrechetCI}, {K: SkipSamples})}`` over the ``K`` scanned (the scan stops at the
    first success)."""
    from .skipstep import even_steps, least_steps, skip_step
    out = {}
    for label, method, eta in rows:
        runs, cis = {}, {}

        def q_of_K(K, method=method, eta=eta, runs=runs, cis=cis):
            crn = torch.Generator(device=xT.device).manual_seed(seed)
            run = skip_step(method, score, xT, schedule, even_steps(schedule.T, K), eta=eta, heads=heads,
                            table=table, generator=crn)
            runs[K], cis[K] = run, quality(run.x)
            return cis[K].value

        K, _ = least_steps(q_of_K, steps_grid, threshold)
        out[label] = (K, cis, runs)
    return out
