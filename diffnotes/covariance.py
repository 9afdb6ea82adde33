"""Posterior covariance estimators for diffusion models (document 003), behind one interface.

Notation of 003: ``x_t = alpha_t x_0 + sigma_t eps`` with ``alpha_t^2 = alphabar_t`` and ``sigma_t^2 = 1 - alphabar_t``;
every function takes the noise level ``lab = log alphabar_t``.  Given points ``x`` (n, d) at level ``lab`` and a score,
:func:`estimate` returns a :class:`Posterior`: the Tweedie mean ``mu_0 = (x + sigma^2 s) / alpha`` and a covariance of
``x_0 | x_t`` that is isotropic ``(n,)``, diagonal ``(n, d)`` or full ``(n, d, d)``.

Methods (the rows of 003's overview table; "NS-DDPM" is both ``sn`` and ``npr``):

=============  ========  ==============================================================================
method         kind      covariance of ``x_0 | x_t``
=============  ========  ==============================================================================
``beta``       iso       ``sigma_t^2``: the ``x_0``-covariance for which the DDPM bridge kernel has variance
                         ``beta`` (exact for every step size, see :func:`bridge_coefficients`)
``beta_tilde`` iso       ``0`` (kernel variance ``beta_tilde``)
``analytic``   iso       ``tau_0^2 = (sigma^2 - sigma^4 E||s||^2 / d) / alpha^2`` (Analytic-DPM; a table in ``lab``)
``iddpm``      diag      learned ``v``; kernel variance ``exp(v log beta + (1 - v) log beta_tilde)`` (VLB)
``sn``         diag      ``sigma^2 / alpha^2 (h - eps_hat^2)``, ``h ~ E[eps^2 | x_t]`` (SN-DPM)
``npr``        diag      ``sigma^2 / alpha^2 h``, ``h ~ E[(eps - eps_hat)^2 | x_t]`` (NPR-DPM)
``ocm``        diag      ``sigma^2 (1 + g) / alpha^2``, ``g ~ sigma^2 diag(grad s)`` (OCM, unbiased regression)
``hutchinson`` diag      ``(sigma^4 mean_m v_m * J v_m + sigma^2) / alpha^2`` with ``M`` Rademacher probes
``exact_diag`` diag      ``(sigma^4 diag J + sigma^2) / alpha^2`` with ``J = grad s`` from ``d`` VJPs
``exact_full`` full      ``(sigma^4 sym(J) + sigma^2 I) / alpha^2`` (second-order Tweedie)
=============  ========  ==============================================================================

Pass counting convention: ``forward`` counts batched forward passes of the score network (the mean costs one),
``vjp`` counts batched vector-Jacobian (backward) passes ``v -> grad_x (s^T v)`` through the score, reusing the
graph of the one forward pass, and ``head`` counts forward passes of a covariance head.  The "+#passes" of a method
is everything beyond the one forward pass of the mean.

PSD rule: an estimated covariance is symmetrised and its eigenvalues (the entries, for iso/diag) are clamped at 0;
:attr:`Posterior.clipped` counts the rows where some eigenvalue was below ``-tol * scale`` before clamping.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .nets import EpsMLP, NetScore, fit

__all__ = ["METHODS", "KIND", "Posterior", "CountedScore", "differentiable", "estimate", "tweedie_mean",
           "tweedie_cov", "AnalyticTable", "analytic_table", "analytic_table_exact", "point_errors", "Heads", "head_loss", "train_head",
           "bridge_coefficients", "psd_clip", "make_head", "mixture_003", "train_score_net",
           "train_heads", "HEAD_METHODS", "autograd_score",
           "jacobian", "covariance_errors"]

METHODS = ("beta", "beta_tilde", "analytic", "iddpm", "sn", "npr", "ocm", "hutchinson", "exact_diag", "exact_full")
KIND = {"beta": "iso", "beta_tilde": "iso", "analytic": "iso", "iddpm": "diag", "sn": "diag", "npr": "diag",
        "ocm": "diag", "hutchinson": "diag", "exact_diag": "diag", "exact_full": "full"}
HEAD_METHODS = ("iddpm", "sn", "npr", "ocm")


def _levels(lab, like):
    lab = torch.as_tensor(lab, dtype=like.dtype, device=like.device)
    if lab.ndim != 0 or not torch.isfinite(lab) or not lab < 0:
        raise ValueError(f"lab (log alphabar_t) must be a finite scalar < 0, got {lab}")
    return torch.exp(lab), -torch.expm1(lab)                   # alpha_t^2, sigma_t^2


# ---- scores with counted passes ---------------------------------------------------------------------------------
def differentiable(score):
    """A score ``fn(x, lab)`` through which autograd can differentiate in ``x``.

    Accepts a :class:`~diffnotes.nets.NetScore` (uses its raw ``eps``), a target with a ``.score`` method
    (exact score, differentiable torch code), or any differentiable callable."""
    if isinstance(score, CountedScore):
        return score.fn
    if isinstance(score, NetScore):
        return lambda x, lab: -score.eps(x, lab) / torch.sqrt(-torch.expm1(torch.as_tensor(lab, dtype=x.dtype)))
    if hasattr(score, "score") and hasattr(score, "log_prob"):
        return score.score
    if callable(score):
        return score
    raise ValueError(f"score must be callable, got {type(score).__name__}")


class CountedScore:
    """A differentiable score that counts its batched forward passes and vector-Jacobian passes."""

    def __init__(self, score):
        self.fn = differentiable(score)
        self.forward = 0
        self.vjp_calls = 0

    def __call__(self, x, lab):
        self.forward += 1
        return self.fn(x, lab)

    def with_graph(self, x, lab):
        """``(x_leaf, s(x_leaf))`` with the graph kept for later VJPs (one forward pass)."""
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            s = self(xg, lab)
        return xg, s

    def vjp(self, xg, s, v):
        """``grad_x (s(x)^T v)`` per row, i.e. ``J^T v`` (one backward pass)."""
        self.vjp_calls += 1
        (g,) = torch.autograd.grad(s, xg, v, retain_graph=True)
        return g

    def reset(self):
        self.forward = self.vjp_calls = 0


# ---- Tweedie -----------------------------------------------------------------------------------------------------
def tweedie_mean(x, s, lab):
    """First-order Tweedie: ``E[x_0 | x_t] = (x_t + sigma_t^2 s) / alpha_t``."""
    a2, s2 = _levels(lab, x)
    return (x + s2 * s) / a2.sqrt()


def tweedie_cov(J, lab):
    """Second-order Tweedie: ``Cov[x_0 | x_t] = (sigma_t^4 H + sigma_t^2 I) / alpha_t^2`` with ``H`` the Hessian of
    ``log q_t`` (``(n, d, d)``, or its diagonal ``(n, d)``)."""
    a2, s2 = _levels(lab, J)
    if J.ndim == 2:
        return (s2 ** 2 * J + s2) / a2
    eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
    return (s2 ** 2 * J + s2 * eye) / a2


# ---- the result ---------------------------------------------------------------------------------------------------
@dataclass
class Posterior:
    mean: torch.Tensor
    cov: torch.Tensor                  # (n,) iso, (n, d) diag, (n, d, d) full
    kind: str
    clipped: int = 0
    passes: dict = field(default_factory=dict)

    def full(self):
        """The covariance as ``(n, d, d)`` matrices."""
        n, d = self.mean.shape
        if self.kind == "full":
            return self.cov
        diag = self.cov[:, None].expand(n, d) if self.kind == "iso" else self.cov
        return torch.diag_embed(diag)

    def diag(self):
        n, d = self.mean.shape
        if self.kind == "iso":
            return self.cov[:, None].expand(n, d)
        return self.cov if self.kind == "diag" else torch.diagonal(self.cov, dim1=-2, dim2=-1)


def psd_clip(cov, kind, tol=1e-10):
    """Clamp an estimated covariance to PSD: ``(clipped_cov, number of rows that needed it)``.

    iso/diag: entries clamped at 0; full: symmetrised, eigenvalues clamped at 0.  A row counts as clipped when some
    eigenvalue is below ``-tol * max(1, max |eigenvalue|)`` (round-off is not counted)."""
    if kind == "full":
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        lam, U = torch.linalg.eigh(cov)
        scale = lam.abs().amax(-1).clamp_min(1.0)
        bad = (lam < -tol * scale[:, None]).any(-1)
        return (U * lam.clamp_min(0)[:, None, :]) @ U.transpose(-1, -2), int(bad.sum())
    vals = cov if kind == "diag" else cov[:, None]
    scale = vals.abs().amax(-1).clamp_min(1.0)
    bad = (vals < -tol * scale[:, None]).any(-1)
    return cov.clamp_min(0), int(bad.sum())


# ---- Analytic-DPM table -------------------------------------------------------------------------------------------
@dataclass
class AnalyticTable:
    """``Gamma(lab) = E_{q_t} ||s(x_t)||^2 / d`` on a grid of levels; ``tau2(lab)`` interpolates linearly.

    ``tau2_se`` (optional): the standard error of ``tau2`` at each level, where the table was estimated with one
    (:func:`analytic_table_exact`)."""
    labs: torch.Tensor                 # increasing
    gamma: torch.Tensor
    tau2_se: torch.Tensor | None = None

    def tau2(self, lab):
        lab = torch.as_tensor(lab, dtype=self.labs.dtype, device=self.labs.device)
        a2, s2 = _levels(lab, self.labs)
        i = torch.searchsorted(self.labs, lab.reshape(1)).clamp(1, self.labs.numel() - 1)[0]
        l0, l1 = self.labs[i - 1], self.labs[i]
        w = ((lab - l0) / (l1 - l0)).clamp(0, 1)
        g = (1 - w) * self.gamma[i - 1] + w * self.gamma[i]
        return (s2 - s2 ** 2 * g) / a2


@torch.no_grad()
def analytic_table(score, sample_x0, labs, n=4096, generator=None):
    """Monte Carlo ``E ||s(x_t)||^2 / d`` over ``x_t ~ q_t`` at each level in ``labs`` (offline, as in Analytic-DPM)."""
    fn = differentiable(score)
    labs = torch.as_tensor(labs, dtype=torch.float64).sort().values
    x0 = sample_x0(n, generator)
    eps = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    gam = []
    for lab in labs:
        a2, s2 = _levels(lab, x0)
        s = fn(a2.sqrt() * x0 + s2.sqrt() * eps, lab)
        gam.append((s ** 2).sum(-1).mean() / x0.shape[1])
    return AnalyticTable(labs.to(x0.device), torch.stack(gam))


@torch.no_grad()
def analytic_table_exact(target, labs, n=4096, generator=None):
    """Analytic-DPM's table for a target with an exact posterior (a Gaussian mixture), without the magnified noise
    of :func:`analytic_table`.

    ``tau_0^2 = E_{q_t} tr Cov[x_0 | x_t] / d`` (Analytic-DPM's optimum, equal to ``(sigma^2 - sigma^4 Gamma) /
    alpha^2`` by second-order Tweedie and ``E tr grad^2 log q = -E ||s||^2``) is estimated by Monte Carlo over
    ``x_t ~ q_t`` of the **exact** per-point trace (Rao-Blackwellised: no ``sigma^4 / alpha^2`` factor multiplies the
    Monte Carlo error, the integrand is bounded by ``tr Cov[x_0]``-like values and nearly constant at large ``t``).
    ``Gamma = (sigma^2 - alpha^2 tau_0^2) / sigma^4`` is stored so that :meth:`AnalyticTable.tau2` returns ``tau_0^2``
    at the table's levels; ``tau2_se`` holds the standard error of each ``tau_0^2``."""
    if not hasattr(target, "posterior_x0"):
        raise ValueError("target must have an exact posterior (posterior_x0), e.g. a GaussianMixture")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    labs = torch.as_tensor(labs, dtype=torch.float64).sort().values
    x0 = target.sample(n, generator=generator)
    eps = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    gam, se = [], []
    for lab in labs:
        a2, s2 = _levels(lab, x0)
        _, cov = target.posterior_x0(a2.sqrt() * x0 + s2.sqrt() * eps, lab)
        tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) / x0.shape[1]
        tau2 = tr.mean()
        gam.append((s2 - a2 * tau2) / s2 ** 2)
        se.append(tr.std() / math.sqrt(n))
    return AnalyticTable(labs.to(x0.device), torch.stack(gam), torch.stack(se))


# ---- bridge kernels -----------------------------------------------------------------------------------------------
def bridge_coefficients(lab_t, lab_s, eta=1.0):
    """The generalised bridge ``q_eta(x_s | x_t, x_0) = N(c_0 x_0 + c_t x_t, lam2 I)`` (``s`` earlier than ``t``):
    ``lam2 = eta^2 beta_tilde``, ``beta = 1 - ab_t / ab_s``, ``beta_tilde = beta (1 - ab_s) / (1 - ab_t)``,
    ``c_t = sqrt((1 - ab_s - lam2) / (1 - ab_t))``, ``c_0 = sqrt(ab_s) - c_t sqrt(ab_t)``.

    ``eta = 1`` is DDPM's posterior ``q(x_s | x_t, x_0)``; ``eta = 0`` is DDIM.  Returns
    ``(c_0, c_t, lam2, beta, beta_tilde)`` as 0-d tensors.  With ``x_0 ~ N(mu_0, Sigma_0)`` the kernel is
    ``N(c_0 mu_0 + c_t x_t, lam2 I + c_0^2 Sigma_0)``; for ``eta = 1``, ``Sigma_0 = sigma_t^2 I`` gives variance
    exactly ``beta`` and ``Sigma_0 = 0`` gives ``beta_tilde``."""
    lab_t = torch.as_tensor(lab_t, dtype=torch.float64)
    lab_s = torch.as_tensor(lab_s, dtype=lab_t.dtype, device=lab_t.device)
    if not lab_s > lab_t:
        raise ValueError(f"lab_s = {float(lab_s)} must be > lab_t = {float(lab_t)} (s earlier than t)")
    beta = -torch.expm1(lab_t - lab_s)
    omab_t, omab_s = -torch.expm1(lab_t), -torch.expm1(lab_s)
    bt = beta * omab_s / omab_t
    lam2 = eta ** 2 * bt
    c_t = ((omab_s - lam2).clamp_min(0) / omab_t).sqrt()
    c_0 = torch.exp(0.5 * lab_s) - c_t * torch.exp(0.5 * lab_t)
    return c_0, c_t, lam2, beta, bt


# ---- learned heads ------------------------------------------------------------------------------------------------
class Heads(dict):
    """``{method: EpsMLP}`` for the learned covariance heads (``iddpm``, ``sn``, ``npr``, ``ocm``).

    Each head maps ``(x_t, lab)`` to ``d`` numbers: ``v`` (I-DDPM), ``h ~ E[eps^2 | x_t]`` (SN),
    ``h ~ E[(eps - eps_hat)^2 | x_t]`` (NPR), ``g ~ sigma_t^2 diag grad s`` (OCM)."""

    def __call__(self, method, x, lab):
        net = self[method]
        dt = next(net.parameters()).dtype
        return net(x.detach().to(dt), torch.as_tensor(lab, dtype=dt)).to(x.dtype)


def _iddpm_sigma0(v, lab_t, lab_prev):
    """I-DDPM: kernel variance ``exp(v log beta + (1 - v) log beta_tilde)`` mapped to ``x_0``-space,
    ``Sigma_0 = (Sigma_kernel - beta_tilde) / c_0^2`` (``beta_tilde`` floored at ``1e-8 beta`` for the last step)."""
    c0, _, _, beta, bt = bridge_coefficients(lab_t, lab_prev, 1.0)
    bt_f = torch.maximum(bt, 1e-8 * beta)
    var = torch.exp(v * torch.log(beta) + (1 - v) * torch.log(bt_f))
    return (var - bt) / c0 ** 2


def head_loss(method, head_out, x0, eps, xt, lab, score, *, lab_prev=None, generator=None):
    """Per-sample loss of a head (``(n,)``) at one level ``lab`` (a scalar); ``score`` is a :class:`CountedScore`.

    * ``sn``:  ``|| h - eps^2 ||^2``;  ``npr``: ``|| h - (eps - eps_hat)^2 ||^2`` with ``eps_hat = -sigma s``;
    * ``ocm``: ``|| g - sigma^2 v * grad_x (s^T v) ||^2`` with one Rademacher ``v`` per sample: 003's unbiased
      regression, weighted by ``sigma^4`` (the target is then O(1) at every t);
    * ``iddpm``: the VLB term ``KL(q(x_prev | x_t, x_0) || N(mean, Sigma_kernel))`` with the mean fixed
      (``lab_prev`` is the previous step of the training schedule)."""
    a2, s2 = _levels(lab, x0)
    if method == "sn":
        return ((head_out - eps ** 2) ** 2).sum(-1)
    if method == "npr":
        with torch.no_grad():
            eps_hat = -s2.sqrt() * score(xt, lab)
        return ((head_out - (eps - eps_hat) ** 2) ** 2).sum(-1)
    if method == "ocm":
        v = torch.randint(0, 2, xt.shape, generator=generator, device=xt.device).to(xt.dtype) * 2 - 1
        xg, s = score.with_graph(xt, lab)
        target = (s2 * v * score.vjp(xg, s, v)).detach()
        return ((head_out - target) ** 2).sum(-1)
    if method == "iddpm":
        if lab_prev is None:
            raise ValueError("lab_prev is required for the iddpm head")
        with torch.no_grad():
            mu0 = tweedie_mean(xt, score(xt, lab), lab)
        c0, _, _, beta, bt = bridge_coefficients(lab, lab_prev, 1.0)
        logvar = head_out * torch.log(beta) + (1 - head_out) * torch.log(torch.maximum(bt, 1e-8 * beta))
        return (logvar + (bt + c0 ** 2 * (x0 - mu0) ** 2) * torch.exp(-logvar)).sum(-1)
    raise ValueError(f"method must be one of {HEAD_METHODS}, got {method!r}")


def train_head(method, head, score, sample_x0, schedule, *, steps=2000, batch=512, lr=2e-3, generator=None,
               progress=False):
    """Train a covariance head by :func:`head_loss` with one level per step drawn uniformly from ``2..T`` (the
    score is frozen).  Adam with cosine decay; returns the loss per step."""
    if method not in HEAD_METHODS:
        raise ValueError(f"method must be one of {HEAD_METHODS}, got {method!r}")
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be positive, got steps={steps}, batch={batch}")
    cs = score if isinstance(score, CountedScore) else CountedScore(score)
    dt = next(head.parameters()).dtype
    labs = schedule.log_alphabar

    def step_loss():
        t = int(torch.randint(2, schedule.T + 1, (1,), generator=generator,
                              device=generator.device if generator is not None else "cpu"))
        lab = labs[t]
        x0 = sample_x0(batch, generator)
        eps = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
        xt = torch.exp(0.5 * lab) * x0 + torch.sqrt(-torch.expm1(lab)) * eps
        out = head(xt.to(dt), lab.to(dt)).to(x0.dtype)
        return head_loss(method, out, x0, eps, xt, lab, cs, lab_prev=labs[t - 1], generator=generator).mean()

    return fit(head.parameters(), step_loss, steps=steps, lr=lr, progress=progress, desc=f"head {method}")


def make_head(d, hidden=64, layers=3):
    """A covariance head: an :class:`~diffnotes.nets.EpsMLP` (same input features as the score net)."""
    return EpsMLP(d, hidden=hidden, layers=layers)


def _jacobian(cs, xg, s):
    """``J = grad_x s`` (``(n, d, d)``, row ``i`` = ``grad s_i``) from ``d`` VJPs with the unit vectors."""
    d = xg.shape[1]
    rows = [cs.vjp(xg, s, torch.zeros_like(xg).index_fill_(1, torch.tensor([i], device=xg.device), 1.0))
            for i in range(d)]
    return torch.stack(rows, dim=1)


def jacobian(score, x, lab):
    """The Jacobian of a score at ``x``: ``(n, d, d)`` (``d`` VJPs; counted when ``score`` is a :class:`CountedScore`)."""
    cs = score if isinstance(score, CountedScore) else CountedScore(score)
    xg, s = cs.with_graph(x, lab)
    return _jacobian(cs, xg, s).detach()


# ---- the interface ------------------------------------------------------------------------------------------------
def estimate(method, score, x, lab, *, heads=None, table=None, M=1, lab_prev=None, generator=None, clip=True):
    """Posterior mean and covariance of ``x_0 | x_t = x`` by ``method`` (see the module table).

    score: a :class:`CountedScore` (passes are counted on it) or anything :func:`differentiable` accepts.
    heads: :class:`Heads` for the learned methods; table: :class:`AnalyticTable` for ``analytic``;
    M: Hutchinson probes; lab_prev: the level of the kernel's next step (``iddpm`` only: its variance lives on the
    step); generator: for the Hutchinson probes.  Returns a :class:`Posterior` whose ``passes`` are the passes
    spent by this call (``forward``, ``vjp``, ``head``)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not torch.is_tensor(x) or x.ndim != 2:
        raise ValueError("x must be an (n, d) tensor")
    cs = score if isinstance(score, CountedScore) else CountedScore(score)
    f0, v0 = cs.forward, cs.vjp_calls
    a2, s2 = _levels(lab, x)
    n, d = x.shape
    n_head = 0
    need_jac = method in ("hutchinson", "exact_diag", "exact_full")
    if need_jac:
        xg, s_g = cs.with_graph(x, lab)
        s = s_g.detach()
    else:
        with torch.no_grad():
            s = cs(x, lab)
    mean = tweedie_mean(x, s, lab)
    if method == "beta":
        cov = s2.expand(n).clone()
    elif method == "beta_tilde":
        cov = x.new_zeros(n)
    elif method == "analytic":
        if table is None:
            raise ValueError("table (an AnalyticTable) is required for method 'analytic'")
        cov = table.tau2(lab).to(x).expand(n).clone()
    elif method in HEAD_METHODS:
        if heads is None or method not in heads:
            raise ValueError(f"heads must contain a trained head for method {method!r}")
        with torch.no_grad():
            h = heads(method, x, lab)
        n_head = 1
        if method == "sn":
            cov = s2 / a2 * (h - s2 * s ** 2)
        elif method == "npr":
            cov = s2 / a2 * h
        elif method == "ocm":
            cov = s2 / a2 * (1 + h)
        else:
            if lab_prev is None:
                raise ValueError("lab_prev is required for method 'iddpm' (its variance lives on a step)")
            cov = _iddpm_sigma0(h, lab, lab_prev)
    elif method == "hutchinson":
        if isinstance(M, bool) or not isinstance(M, int) or M < 1:
            raise ValueError(f"M must be a positive integer, got {M!r}")
        acc = torch.zeros_like(x)
        for _ in range(M):
            v = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
            acc = acc + v * cs.vjp(xg, s_g, v)
        cov = tweedie_cov(acc / M, lab)
    else:
        J = _jacobian(cs, xg, s_g)
        if method == "exact_diag":
            cov = tweedie_cov(torch.diagonal(J, dim1=-2, dim2=-1), lab)
        else:
            cov = tweedie_cov(0.5 * (J + J.transpose(-1, -2)), lab)
    cov = cov.detach()
    clipped = 0
    if clip:
        cov, clipped = psd_clip(cov, KIND[method])
    if not torch.isfinite(cov).all() or not torch.isfinite(mean).all():
        raise FloatingPointError(f"estimate({method!r}): non-finite mean or covariance at lab = {float(lab):.4g}")
    passes = {"forward": cs.forward - f0, "vjp": cs.vjp_calls - v0, "head": n_head}
    return Posterior(mean.detach(), cov, KIND[method], clipped, passes)


# ---- the data and the trained models of chapter 03 ---------------------------------------------------------------
def mixture_003(name="grid", device=None):
    """The 2-D data of chapter 03.

    ``"grid"``: 003's mixture of 9 Gaussians, means ``{-3, 0, 3}^2``, ``sigma = 0.1`` (a product of two 1-D
    mixtures: its posterior covariances are diagonal at every t).  ``"rotated"``: the same means rotated by 45
    degrees, each component stretched along the 120-degree direction (std 0.4 and 0.05): no product structure,
    correlated posteriors."""
    g = torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64)
    means = torch.cartesian_prod(g, g)
    w = torch.full((9,), 1 / 9, dtype=torch.float64)
    if name == "grid":
        covs = 0.01 * torch.eye(2, dtype=torch.float64).expand(9, 2, 2)
    elif name == "rotated":
        c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
        means = means @ torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
        c, s = math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3)
        R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        covs = (R @ torch.diag(torch.tensor([0.4 ** 2, 0.05 ** 2], dtype=torch.float64)) @ R.T).expand(9, 2, 2)
    else:
        raise ValueError(f"name must be 'grid' or 'rotated', got {name!r}")
    from .targets import GaussianMixture
    mix = GaussianMixture(w, means, covs.contiguous())
    return mix if device is None else mix.to(device)


def train_score_net(mix, schedule, *, steps=4000, batch=1024, hidden=128, layers=3, lr=2e-3, seed=0,
                    progress=False):
    """A float32 :class:`~diffnotes.nets.EpsMLP` trained by DSM on draws from ``mix`` (returns ``(net, losses)``)."""
    from .nets import train_dsm
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = EpsMLP(mix.d, hidden=hidden, layers=layers)
    losses = train_dsm(net, lambda b, gen: mix.sample(b, generator=gen), schedule, steps=steps, batch=batch,
                       lr=lr, generator=g, progress=progress)
    return net, losses


def train_heads(mix, score, schedule, *, methods=HEAD_METHODS, steps=3000, batch=512, hidden=64, layers=3,
                lr=2e-3, seed=0, progress=False):
    """Train one head per method against ``score`` (exact or network) on draws from ``mix``: ``(Heads, losses)``."""
    heads, losses = Heads(), {}
    for i, m in enumerate(methods):
        torch.manual_seed(seed + i)
        g = torch.Generator(device=mix.device).manual_seed(seed + i)
        head = make_head(mix.d, hidden=hidden, layers=layers).to(mix.device)
        losses[m] = train_head(m, head, score, lambda b, gen: mix.sample(b, generator=gen), schedule, steps=steps,
                               batch=batch, lr=lr, generator=g, progress=progress)
        heads[m] = head.eval()
    return heads, losses


def autograd_score(target):
    """The score of ``target`` by autograd of its ``log_prob`` (an independent check of closed-form scores and
    Hessians; differentiable twice)."""
    def score(x, lab):
        with torch.enable_grad():
            xr = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(target.log_prob(xr, lab).sum(), xr, create_graph=True)
        return g
    return score


def point_errors(methods, score, target, lab, x, *, heads=None, table=None, M=1, lab_prev=None, generator=None):
    """Per-point Frobenius errors ``||Sigma_hat(x_i) - Sigma(x_i)||_F`` of each method against the exact posterior
    covariance of ``target`` at the points ``x`` (level ``lab``): ``({method: (n,)}, ||Sigma(x_i)||_F (n,),
    {method: clipped rows})``.  All methods see the same points, so differences between methods are paired."""
    _, cov = target.posterior_x0(x, lab)
    errs, clipped = {}, {}
    for m in methods:
        name, mm = (f"hutchinson:{m[1]}", m[1]) if isinstance(m, tuple) else (m, M)
        meth = m[0] if isinstance(m, tuple) else m
        p = estimate(meth, score, x, lab, heads=heads, table=table, M=mm, lab_prev=lab_prev, generator=generator)
        errs[name] = torch.linalg.matrix_norm(p.full() - cov)
        clipped[name] = p.clipped
    return errs, torch.linalg.matrix_norm(cov), clipped


def covariance_errors(methods, score, target, schedule, ts, n, *, heads=None, table=None, M=1, generator=None):
    """Relative error ``E ||Sigma_hat - Sigma||_F / E ||Sigma||_F`` of each method against the exact posterior
    covariance of ``target``, with ``x_t ~ q_t``, at each step ``t`` in ``ts`` (``iddpm`` uses the one-step kernel
    ``t -> t - 1`` of ``schedule``).  Returns ``(errors {method: (len(ts),)}, clipped {method: count})``.

    ``methods`` may contain ``("hutchinson", M)`` pairs to vary the number of probes (keyed as ``"hutchinson:M"``)."""
    labs = schedule.log_alphabar
    errs, clipped = {}, {}
    for t in ts:
        x = target.sample(n, labs[t], generator=generator)
        e, ref, cl = point_errors(methods, score, target, labs[t], x, heads=heads, table=table, M=M,
                                  lab_prev=labs[t - 1], generator=generator)
        for name in e:
            errs.setdefault(name, []).append(float(e[name].mean() / ref.mean()))
            clipped[name] = clipped.get(name, 0) + cl[name]
    return {k: torch.tensor(v) for k, v in errs.items()}, clipped
