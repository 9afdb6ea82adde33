"""Conditional sampling (inpainting) with an unconditional diffusion model, document 001.

``Z = [X, Y]`` with ``Y = Z[idx_y]`` observed; we want ``X_0 | Y_0 = y0`` from the joint model only.  The forward
process is document 001's Ornstein-Uhlenbeck chain (``schedules.ou``): ``Z_t = e^{-eps} Z_{t-eps} +
sqrt(1 - e^{-2 eps}) W``, i.e. a VP schedule with ``log alpha_i = -2 eps``; index ``i`` of the schedule is time
``i eps`` and noise level ``lab_i = log alphabar_i``.

Two backward kernels ``p(Z_s | Z_t)`` (``s = t - eps``):

* ``kernel="em"``: the document's Euler-Maruyama kernel, corrected (errata):
  ``N(Z_s; Z_t + eps (Z_t + 2 grad log p_t(Z_t)), 2 eps I)``.  It is *separable*: given ``Z_t``, ``X_s`` and
  ``Y_s`` are independent, and it only needs a score (any callable ``score(z, lab)``).
* ``kernel="true"``: the exact reverse kernel ``q(Z_s | Z_t)`` of a :class:`~diffnotes.targets.GaussianMixture`
  (a mixture per point; no score or discretisation error: "the model is exact" literally).  It is *not*
  separable (the component couples X and Y), so SMCDiff must propagate ``X`` from the closed-form conditional
  ``q(X_s | X_t, Y_t, Y_s)``.

Every sampler is batched over independent runs and particles: particles have shape ``(runs, n, dx)``; there is
no Python loop over runs or particles (only over time steps and Langevin steps).  ``nfe`` counts evaluations of
the score (or of the exact kernel, which plays its role) per particle.

The discretised model's own conditional ``p_em(X_0 | Y_{0:T})`` (what SMCDiff with ``kernel="em"`` targets) is
computed exactly for one-dimensional ``X`` by :func:`em_conditional_grid` (a grid forward filter).

Samplers: :func:`replacement` (Algorithm 1, both context paths), :func:`langevin_replacement` (Algorithm 2,
unadjusted or Metropolis-adjusted corrector, one step or a step per level; :func:`mala_steps` chooses the step per
level for a target acceptance rate; :func:`langevin_fixed` runs the corrector alone at one noise level),
:func:`smcdiff` (Algorithm 3, with its likelihood estimate and ESS), :func:`tds` (twisted SMC, Wu et al. 2023) and
:func:`reconstruction_guidance` (TDS's proposal without weights).  Resampling: :func:`resample_multinomial`,
:func:`resample_systematic`, at every step or adaptively (``ess_threshold``).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .samplers import _check_finite, _steps
from .schedules import VPSchedule
from .targets import (LOG2PI, GaussianMixture, logsumexp_last, sample_mixture_cols, sample_mixture_rows, softmax_last,
                      sum_last)

__all__ = ["Inpainting", "CondSamples", "context_path", "context_log_likelihood", "replacement",
           "langevin_replacement", "smcdiff", "tds", "reconstruction_guidance", "resample_multinomial",
           "resample_systematic", "RESAMPLERS", "ess", "noised", "marginal", "weighted_mean", "mode_weights",
           "w1_1d", "tds_exact", "retain_one", "langevin_fixed", "mala_steps", "em_conditional_grid", "GridConditional"]

KERNELS = ("em", "true")
CONTEXTS = ("forward", "fixed")


# ---- the problem --------------------------------------------------------------------------------------------
class Inpainting:
    """``Z = [X, Y]`` distributed as ``mixture`` with ``Y = Z[idx_y]`` observed (``X`` is the rest, in order)."""

    def __init__(self, mixture, idx_y):
        if not isinstance(mixture, GaussianMixture):
            raise ValueError("mixture must be a GaussianMixture")
        d = mixture.d
        try:
            raw = torch.as_tensor(idx_y).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"idx_y must list integer coordinates, got {idx_y!r}") from None
        if raw.dtype == torch.bool or raw.is_floating_point() or raw.is_complex():
            raise ValueError(f"idx_y must list integer coordinates (not floats or bools), got {idx_y!r}")
        iy = raw.to(torch.long).cpu()
        if iy.numel() < 1 or iy.numel() >= d or len(set(iy.tolist())) != iy.numel() or \
                (iy < 0).any() or (iy >= d).any():
            raise ValueError(f"idx_y must list distinct coordinates in [0, {d}) and leave at least one free")
        mask = torch.ones(d, dtype=torch.bool)
        mask[iy] = False
        self.mix, self.d = mixture, d
        self.iy = iy.to(mixture.device)
        self.ix = torch.arange(d)[mask].to(mixture.device)
        self.dx, self.dy = self.ix.numel(), self.iy.numel()

    @property
    def device(self):
        return self.mix.device

    def join(self, x, y):
        """``Z`` from ``x (..., dx)`` and ``y`` broadcastable to ``(..., dy)``."""
        z = x.new_empty(*x.shape[:-1], self.d)
        z[..., self.ix] = x
        z[..., self.iy] = y.expand(*x.shape[:-1], self.dy)
        return z

    def exact(self, y0):
        """The exact conditional law of ``X_0 | Y_0 = y0`` (a Gaussian mixture in ``dx`` dimensions)."""
        return self.mix.condition(self.iy, self.y0_vector(y0))

    def y0_vector(self, y0, name="y0"):
        """``y0`` as a finite float64 ``(dy,)`` vector (``name``: the parameter named in the error)."""
        if isinstance(y0, bool) or (torch.is_tensor(y0) and y0.dtype == torch.bool):
            raise ValueError(f"{name} must be a number or a vector of {self.dy} numbers, got {y0!r}")
        try:
            y0 = torch.as_tensor(y0, dtype=torch.float64, device=self.device).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a number or a vector of {self.dy} numbers, got {y0!r}") from None
        if y0.numel() != self.dy:
            raise ValueError(f"{name} must have {self.dy} entries, got {y0.numel()}")
        if not torch.isfinite(y0).all():
            raise ValueError(f"{name} must be finite, got {y0.tolist()}")
        return y0


@dataclass
class CondSamples:
    """Output of a conditional sampler.

    x: ``(runs, n, dx)`` particles; log_w: ``(runs, n)`` normalised log weights (``None``: equal weights);
    nfe: score (or exact-kernel) evaluations per particle; log_z: ``(runs,)`` log of the SMC normalising-constant
    estimate (``None`` if not an SMC method); ess: ``(runs, steps)`` effective sample size before each
    resampling, in the order of the steps taken (``t = T`` first); accept: mean Metropolis acceptance rate."""
    x: torch.Tensor
    nfe: int
    log_w: torch.Tensor | None = None
    log_z: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    accept: float | None = None
    context: torch.Tensor | None = None


# ---- small helpers ------------------------------------------------------------------------------------------
def _check_int(name, v, lo=1):
    """``v`` as a Python int (numpy and other integral types accepted; bools and floats are not)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_common(problem, schedule, runs, n, kernel, score):
    if not isinstance(problem, Inpainting):
        raise ValueError("problem must be an Inpainting")
    if not isinstance(schedule, VPSchedule):
        raise ValueError("schedule must be a VPSchedule")
    runs, n = _check_int("runs", runs), _check_int("n", n)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "em" and score is None:
        raise ValueError("score is required with kernel='em'")
    return schedule.to(problem.device), runs, n


def _randn(shape, like, generator):
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)


def noised(mix, lab):
    """The law of ``Z_t`` at noise level ``lab`` as a :class:`GaussianMixture`."""
    lab = torch.as_tensor(lab, dtype=torch.float64)
    ab = torch.exp(lab)
    eye = torch.eye(mix.d, dtype=torch.float64, device=mix.device)
    return GaussianMixture(mix.weights, torch.exp(0.5 * lab) * mix.means, ab * mix.covs - torch.expm1(lab) * eye)


def marginal(mix, idx):
    """The marginal mixture of the coordinates ``idx``."""
    idx = torch.as_tensor(idx, dtype=torch.long, device=mix.device)
    return GaussianMixture(mix.weights, mix.means[:, idx], mix.covs[:, idx][:, :, idx])


def _condition_rows(logw, means, covs, ix, iy, y):
    """Condition per-row mixtures ``(log w (m,K), means (m,K,d), covs (K,d,d))`` on ``Z[iy] = y (m,dy)``.

    Returns ``(log p(y) (m,), log posterior weights (m,K), X means (m,K,dx), X covs (K,dx,dx))``."""
    Sxx, Sxy, Syy = covs[:, ix][:, :, ix], covs[:, ix][:, :, iy], covs[:, iy][:, :, iy]
    L = torch.linalg.cholesky(Syy)
    P = torch.cholesky_inverse(L)                                   # Syy^{-1}  (K, dy, dy)
    r = y[:, None, :] - means[:, :, iy]                               # (m, K, dy)
    a = torch.einsum("kab,mkb->mka", P, r)
    mx = means[:, :, ix] + torch.einsum("kab,mkb->mka", Sxy, a)
    Cx = Sxx - Sxy @ P @ Sxy.transpose(1, 2)
    half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    ll = logw - 0.5 * sum_last(r * a) - half_logdet - 0.5 * iy.numel() * LOG2PI
    log_py = logsumexp_last(ll)
    return log_py, ll - log_py[:, None], mx, 0.5 * (Cx + Cx.transpose(1, 2))


def _sample_rows(logw, means, covs, generator):
    """One draw per row of per-row mixtures ``(log w (m,K), means (m,K,d), covs (K,d,d))``."""
    return sample_mixture_rows(softmax_last(logw), means, covs, generator=generator)


def _mix_terms_cols(z, logw, means, covs):
    """``log w_k + log N(z; means_k, covs_k)`` per component and point ``(K, m)``, points last: z (d, m),
    log w (K, m), means (K, d, m), covs (K, d, d)."""
    L = torch.linalg.cholesky(covs)
    r = z[None] - means
    quad = (r * torch.matmul(torch.cholesky_inverse(L), r)).sum(1)
    half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return logw - 0.5 * quad - (half_logdet + 0.5 * z.shape[0] * LOG2PI)[:, None]


def _gauss_logpdf(x, mean, var):
    """``log N(x; mean, var I)`` summed over the last axis (``var`` a scalar)."""
    return -0.5 * (sum_last((x - mean) ** 2) / var + x.shape[-1] * (math.log(var) + LOG2PI))


def _eps(schedule, i):
    """Time step ``eps_i = -log(alpha_i) / 2`` of the OU chain at step ``i``."""
    return float(-0.5 * schedule.log_alpha[i])


# ---- context paths and their likelihood ----------------------------------------------------------------------
def context_path(problem, y0, schedule, runs, *, kind="forward", generator=None):
    """Context ``Y_0, ..., Y_T`` per run, shape ``(runs, T + 1, dy)`` (index = step): ``"fixed"`` (``Y_t = y0``)
    or ``"forward"`` (the noising chain ``Y_i = sqrt(alpha_i) Y_{i-1} + sqrt(beta_i) W`` from ``Y_0 = y0``)."""
    if kind not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {kind!r}")
    runs = _check_int("runs", runs)
    y0 = problem.y0_vector(y0)
    sch = schedule.to(problem.device)
    if kind == "fixed":
        return y0.expand(runs, sch.T + 1, problem.dy).clone()
    noise = _randn((runs, sch.T, problem.dy), y0, generator) * sch.beta[1:sch.T + 1, None].sqrt()
    ys = [y0.expand(runs, problem.dy)]
    sa = torch.exp(0.5 * sch.log_alpha)
    for i in range(1, sch.T + 1):
        ys.append(sa[i] * ys[-1] + noise[:, i - 1])
    return torch.stack(ys, 1)


def context_log_likelihood(problem, path, schedule):
    """Exact ``log q(Y_0, ..., Y_{T-1} | Y_T)`` of a context path ``(runs, T + 1, dy)`` under the true joint:
    ``log q_0(Y_0) + sum_i log N(Y_i; sqrt(alpha_i) Y_{i-1}, beta_i) - log q_T(Y_T)`` (the forward chain of
    ``Y`` is autonomous).  This is what SMCDiff's product of mean weights estimates (with the exact kernel and
    ``X_T ~ q_T(X_T | Y_T)``)."""
    sch = schedule.to(problem.device)
    T = sch.T
    sa, beta = torch.exp(0.5 * sch.log_alpha), sch.beta
    trans = sum(_gauss_logpdf(path[:, i], sa[i] * path[:, i - 1], float(beta[i])) for i in range(1, T + 1))
    q0 = marginal(problem.mix, problem.iy).log_prob(path[:, 0])
    qT = marginal(noised(problem.mix, sch.lab(T)), problem.iy).log_prob(path[:, T])
    return q0 + trans - qT


def _check_path(problem, path, schedule):
    """A context path as a ``(P, T + 1, dy)`` float64 tensor (a ``(T + 1, dy)`` one gets ``P = 1``)."""
    if not torch.is_tensor(path):
        raise ValueError("path must be a tensor of shape (T + 1, dy) or (P, T + 1, dy)")
    path = path.to(dtype=torch.float64, device=problem.device)
    if path.ndim == 2:
        path = path[None]
    if path.ndim != 3 or path.shape[1:] != (schedule.T + 1, problem.dy):
        raise ValueError(f"path must have shape ({schedule.T + 1}, {problem.dy}) or (P, {schedule.T + 1}, "
                         f"{problem.dy}), got {tuple(path.shape)}")
    if not torch.isfinite(path).all():
        raise ValueError("path must be finite")
    return path


@dataclass
class GridConditional:
    """A law on the points ``grid (G,)`` per path: ``log_p (P, G)`` log density (``sum exp(log_p) h = 1``,
    ``h`` the spacing) and ``log_lik (P,)``, the log normalising constant of the filter."""
    grid: torch.Tensor
    log_p: torch.Tensor
    log_lik: torch.Tensor

    @property
    def h(self):
        return float(self.grid[1] - self.grid[0])

    def mean(self, f=None):
        """``E[f(X)]`` per path ``(P,)`` (``f`` defaults to the identity)."""
        fx = self.grid if f is None else f(self.grid)
        return (torch.exp(self.log_p) * fx).sum(-1) * self.h

    def cdf(self):
        """CDF at the grid points ``(P, G)`` (cumulative trapezoid rule)."""
        p = torch.exp(self.log_p)
        return (torch.cumsum(p, -1) - 0.5 * p) * self.h

    def w1(self, cond):
        """Wasserstein-1 distance ``int |F - F_cond| dx`` per path ``(P,)`` to a one-dimensional mixture ``cond``
        (e.g. the true conditional ``q(X_0 | Y_0)``), on the grid."""
        if cond.d != 1:
            raise ValueError("w1 needs a one-dimensional mixture")
        sd = cond.covs[:, 0, 0].sqrt()
        F = (cond.weights * torch.special.ndtr((self.grid[:, None] - cond.means[:, 0]) / sd)).sum(-1)
        return torch.trapezoid((self.cdf() - F).abs(), self.grid, dim=-1)


def em_conditional_grid(problem, path, schedule, *, score=None, grid=None, init="exact", chunk=16):
    """The law of ``X_0`` given the context path ``Y_{0:T} = path`` under the **discretised model** of SMCDiff
    with ``kernel="em"``: ``X_T ~ q_T(X_T | Y_T)`` (``init="exact"``) or ``N(0, 1)`` (``"gaussian"``) and the
    corrected Euler-Maruyama kernel ``N(Z_s; Z_t + eps (Z_t + 2 score(Z_t)), 2 eps I)`` (``score`` defaults to
    the exact mixture score).  For one-dimensional ``X`` this is a hidden Markov model (state ``X_t``,
    observations ``Y_{t-eps}``), solved exactly up to quadrature by the forward filter on the evenly spaced
    ``grid``: ``a_s(x') = sum_j h a_t(x_j) N(Y_s; m_Y(x_j, Y_t), 2 eps) N(x'; m_X(x_j, Y_t), 2 eps)`` with
    ``m = z + eps (z + 2 score(z))``, normalised at each step; the log normalising constants add up to
    ``log p_em(Y_{0:T-1} | Y_T)``, which SMCDiff's ``log_z`` estimates (unbiased for ``exp``).

    Since SMCDiff with ``kernel="em"`` is a bootstrap filter for exactly this model, its particles target this
    law, not ``q(X_0 | Y_0)``.  ``path``: ``(T + 1, dy)`` or ``(P, T + 1, dy)``; paths are processed ``chunk``
    at a time (memory ``chunk G^2``).  ``grid`` defaults to ``[-8, 8]`` widened to 8 sd around every component
    of ``X_0``, with spacing at most ``sqrt(2 eps) / 4``;
    a given grid's spacing must be at most ``sqrt(2 eps) / 2`` (the Riemann sum of a Gaussian of sd ``s`` on a
    grid of spacing ``h`` errs by about ``exp(-2 pi^2 s^2 / h^2)``, below 1e-30 there)."""
    if not isinstance(problem, Inpainting):
        raise ValueError("problem must be an Inpainting")
    if problem.dx != 1:
        raise ValueError("em_conditional_grid needs a one-dimensional X (dx = 1)")
    if not isinstance(schedule, VPSchedule):
        raise ValueError("schedule must be a VPSchedule")
    if init not in ("exact", "gaussian"):
        raise ValueError(f"init must be 'exact' or 'gaussian', got {init!r}")
    chunk = _check_int("chunk", chunk)
    sch = schedule.to(problem.device)
    path = _check_path(problem, path, sch)
    score = problem.mix.score if score is None else score
    e_min = min(_eps(sch, i) for i in range(1, sch.T + 1))
    if grid is None:                       # cover N(0, 1) and every component of X_0 to 8 sd
        mx, sx = problem.mix.means[:, problem.ix[0]], problem.mix.covs[:, problem.ix[0], problem.ix[0]].sqrt()
        lo, hi = min(-8.0, float((mx - 8 * sx).min())), max(8.0, float((mx + 8 * sx).max()))
        G = math.ceil((hi - lo) / (math.sqrt(2 * e_min) / 4)) + 1
        grid = torch.linspace(lo, hi, G, dtype=torch.float64, device=problem.device)
    grid = torch.as_tensor(grid, dtype=torch.float64, device=problem.device).reshape(-1)
    G = grid.numel()
    if G < 3:
        raise ValueError("grid must have at least 3 points")
    h = float(grid[1] - grid[0])
    if not h > 0 or not torch.allclose(grid.diff(), grid.new_tensor(h), rtol=1e-6, atol=1e-12):
        raise ValueError("grid must be evenly spaced and increasing")
    if h > math.sqrt(2 * e_min) / 2:
        raise ValueError(f"grid spacing {h:.3g} is too coarse for the kernel's sd sqrt(2 eps) = "
                         f"{math.sqrt(2 * e_min):.3g} (need <= half of it)")
    logh = math.log(h)
    outs_p, outs_l = [], []
    for path_c in path.split(chunk):
        Pc = path_c.shape[0]
        yT = path_c[:, sch.T]
        if init == "exact":
            mT = noised(problem.mix, sch.lab(sch.T))
            _, lw, mx, Cx = _condition_rows(mT.log_weights.expand(Pc, mT.K), mT.means.expand(Pc, mT.K, problem.d),
                                            mT.covs, problem.ix, problem.iy, yT)
            la = torch.logsumexp(lw[:, None, :] + _gauss1(grid[None, :, None], mx[:, None, :, 0],
                                                           Cx[None, None, :, 0, 0]), -1)          # (Pc, G)
        else:
            la = _gauss1(grid, 0.0, 1.0).expand(Pc, G)
        la = la - torch.logsumexp(la, -1, keepdim=True) - logh         # normalise on the grid
        log_lik = la.new_zeros(Pc)
        for i in range(sch.T, 0, -1):
            e = _eps(sch, i)
            z = problem.join(grid[None, :, None].expand(Pc, G, 1), path_c[:, i, None, :]).reshape(Pc * G, problem.d)
            mean = _em_mean(z, score, sch.lab(i), e).reshape(Pc, G, problem.d)
            lw = _gauss_logpdf(path_c[:, i - 1, None, :], mean[..., problem.iy], 2 * e)            # (Pc, G)
            lj = la + lw + logh                                        # log of h a_t(x_j) w_j
            lc = torch.logsumexp(lj, -1)                                 # log predictive of Y_s
            log_lik = log_lik + lc
            lj = lj - lc[:, None]
            trans = torch.exp(_gauss1(grid[None, None, :], mean[..., problem.ix[0]][:, :, None], 2 * e))
            a = torch.bmm(torch.exp(lj)[:, None, :], trans)[:, 0]      # (Pc, G'): sum_j p_j N(x'; m_j, 2 eps)
            la = torch.log(a)
            la = la - torch.logsumexp(la, -1, keepdim=True) - logh     # quadrature mass (~1) renormalised
        outs_p.append(la)
        outs_l.append(log_lik)
    return GridConditional(grid, torch.cat(outs_p), torch.cat(outs_l))


def _em_mean(z, score, lab, e):
    """Mean of the corrected Euler-Maruyama backward kernel, ``z + eps (z + 2 score(z))`` (errata (d))."""
    return z + e * (z + 2 * score(z, lab))


def _gauss1(x, mean, var):
    """Elementwise ``log N(x; mean, var)`` (broadcasting)."""
    var = torch.as_tensor(var, dtype=torch.float64)
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


def _init_x(problem, yT, labT, n, init, generator):
    """``X_T`` for each run: ``"exact"`` draws from ``q_T(X_T | Y_T)``; ``"gaussian"`` from ``N(0, I)``."""
    runs = yT.shape[0]
    if init == "gaussian":
        return _randn((runs, n, problem.dx), yT, generator)
    if init != "exact":
        raise ValueError(f"init must be 'exact' or 'gaussian', got {init!r}")
    mT = noised(problem.mix, labT)
    K = mT.K
    _, lw, mx, Cx = _condition_rows(mT.log_weights.expand(runs, K), mT.means.expand(runs, K, problem.d),
                                    mT.covs, problem.ix, problem.iy, yT)
    rows = _sample_rows(lw.repeat_interleave(n, 0), mx.repeat_interleave(n, 0), Cx, generator)
    return rows.reshape(runs, n, problem.dx)


# ---- one backward step of X, given Z_t = (X_t, Y_t) ----------------------------------------------------------
def _x_step(problem, kernel, score, schedule, i, x, y_t, y_s, condition):
    """Parameters of ``p(X_s | X_t, Y_t [, Y_s])`` (s = step i - 1) for particles ``x (R,N,dx)`` and contexts
    ``y_t, y_s (R,dy)``, and the log-weights ``log p(Y_s | X_t, Y_t)`` ``(R,N)``.

    Returns ``(log_w, params)``; ``params`` is a tuple of ``(R,N,...)`` tensors plus a sampler for them."""
    R, N, dx = x.shape
    z = problem.join(x, y_t[:, None, :]).reshape(R * N, problem.d)
    if kernel == "em":
        e = _eps(schedule, i)
        mean = _em_mean(z, score, schedule.lab(i), e).reshape(R, N, problem.d)
        log_w = _gauss_logpdf(y_s[:, None, :], mean[..., problem.iy], 2 * e)
        return log_w, ((mean[..., problem.ix],), _EmSampler(2 * e))
    w, means, covs = problem.mix.reverse_kernel(z, schedule.lab(i), schedule.lab(i - 1))
    logw = torch.log(w)
    if condition:
        ys = y_s[:, None, :].expand(R, N, problem.dy).reshape(R * N, problem.dy)
        log_w, lw, mx, Cx = _condition_rows(logw, means, covs, problem.ix, problem.iy, ys)
        log_w = log_w.reshape(R, N)
    else:
        log_w, lw = None, logw
        mx, Cx = means[:, :, problem.ix], covs[:, problem.ix][:, :, problem.ix]
    K = lw.shape[-1]
    return log_w, ((lw.reshape(R, N, K), mx.reshape(R, N, K, dx)), _MixSampler(Cx))


class _EmSampler:
    def __init__(self, var):
        self.var = var

    def __call__(self, params, generator):
        (mean,) = params
        return mean + math.sqrt(self.var) * _randn(mean.shape, mean, generator)


class _MixSampler:
    def __init__(self, covs):
        self.covs = covs

    def __call__(self, params, generator):
        lw, mx = params
        R, N, K, dx = mx.shape
        return _sample_rows(lw.reshape(R * N, K), mx.reshape(R * N, K, dx), self.covs, generator).reshape(R, N, dx)


def _gather(params, idx):
    """Select particles ``idx (R,N)`` in every ``(R,N,...)`` tensor of ``params``."""
    out = []
    for p in params:
        ix = idx.reshape(*idx.shape, *([1] * (p.ndim - 2))).expand(*idx.shape, *p.shape[2:])
        out.append(torch.gather(p, 1, ix))
    return tuple(out)


# ---- resampling ----------------------------------------------------------------------------------------------
def _check_logw(log_w):
    if not torch.is_tensor(log_w) or log_w.ndim != 2:
        raise ValueError("log_w must be a (runs, n) tensor")
    if torch.isnan(log_w).any() or (log_w == float("inf")).any() or \
            (log_w == float("-inf")).all(-1).any():
        raise ValueError("log_w must be finite or -inf, with at least one finite entry per run")


def resample_multinomial(log_w, generator=None):
    """Ancestor indices ``(runs, n)``: ``n`` i.i.d. draws from the normalised weights of each run."""
    _check_logw(log_w)
    return torch.multinomial(torch.softmax(log_w, -1), log_w.shape[1], replacement=True, generator=generator)


def resample_systematic(log_w, generator=None):
    """Systematic resampling: one uniform ``U`` per run, points ``(U + j) / n``, inverted through the CDF.

    Unbiased (each ancestor ``k`` appears ``n W_k`` times in expectation) with lower variance."""
    _check_logw(log_w)
    R, N = log_w.shape
    W = torch.softmax(log_w, -1)
    cdf = torch.cumsum(W, -1)
    cdf = cdf / cdf[:, -1:]
    u = (torch.rand(R, 1, dtype=W.dtype, device=W.device, generator=generator)
         + torch.arange(N, dtype=W.dtype, device=W.device)) / N
    return torch.searchsorted(cdf, u).clamp_max(N - 1)


RESAMPLERS = {"multinomial": resample_multinomial, "systematic": resample_systematic}


def ess(log_w):
    """Effective sample size ``1 / sum W_k^2`` per run of normalised weights ``W = softmax(log_w)``."""
    W = torch.softmax(log_w, -1)
    return 1.0 / (W ** 2).sum(-1)


# ---- Algorithm 1 and 2: replacement, with an optional Langevin corrector --------------------------------------
def replacement(problem, y0, schedule, *, runs, n, kernel="true", score=None, context="forward", init="exact",
                generator=None, progress=False):
    """Algorithm 1 of 001 (replacement): draw a context path, ``X_T ~ q_T(X_T | Y_T)`` (or ``N(0, I)``), then
    ``X_s ~ p(X_s | X_t, Y_t)`` for ``t = T, ..., 1`` (for the true kernel: the X-marginal of ``q(Z_s | Z_t)``,
    which does not look at ``Y_s``).  ``runs * n`` independent chains; returns ``X_0`` as ``(runs, n, dx)``."""
    return langevin_replacement(problem, y0, schedule, runs=runs, n=n, kernel=kernel, score=score,
                                context=context, init=init, langevin_steps=0, generator=generator,
                                progress=progress)


def langevin_replacement(problem, y0, schedule, *, runs, n, kernel="true", score=None, context="forward",
                         init="exact", langevin_steps=1, step=0.02, corrector="ula", log_prob=None,
                         langevin_stop=0, generator=None, progress=False):
    """Algorithm 2 of 001: the replacement method followed, at every ``s = t - eps`` (``s = 0`` included), by
    ``L = langevin_steps`` Langevin steps on ``X`` targeting ``p_s(X | Y_s)`` with the *joint* score:
    ``X <- X + step grad_X log p_s(X, Y_s) + sqrt(2 step) W``.

    ``corrector="ula"`` (unadjusted: a bias ``O(step)`` at any ``L``) or ``"mala"`` (Metropolis-adjusted with
    ``log_prob(z, lab)`` of the joint: exact invariant law).  The Langevin score is ``score`` (the exact mixture
    score by default).  ``langevin_stop``: the corrector runs only at steps ``s >= langevin_stop`` (a learned
    score has no value at ``t = 0``: ``langevin_stop=1`` stops it at the smallest noise level of the schedule,
    and the last replacement step is not corrected).  ``nfe`` counts ``T + L x`` (corrected levels).

    ``step``: one Langevin step for every level, or a sequence of ``T + 1`` steps indexed by the level ``s``
    (e.g. from :func:`mala_steps`, a step per level chosen for a target acceptance rate).  The returned
    ``accept`` is the MALA acceptance rate averaged over the corrected levels."""
    sch, runs, n = _check_common(problem, schedule, runs, n, kernel, score)
    langevin_steps = _check_int("langevin_steps", langevin_steps, lo=0)
    langevin_stop = _check_int("langevin_stop", langevin_stop, lo=0)
    if langevin_stop > sch.T:
        raise ValueError(f"langevin_stop must be <= T = {sch.T}, got {langevin_stop}")
    if corrector not in ("ula", "mala"):
        raise ValueError(f"corrector must be 'ula' or 'mala', got {corrector!r}")
    steps = _level_steps(step, sch.T) if langevin_steps else None
    if corrector == "mala" and langevin_steps and log_prob is None:
        raise ValueError("corrector='mala' needs log_prob(z, lab) of the joint")
    lscore = score if score is not None else problem.mix.score
    path = context_path(problem, y0, sch, runs, kind=context, generator=generator)
    x = _init_x(problem, path[:, sch.T], sch.lab(sch.T), n, init, generator)
    acc, n_acc = 0.0, 0
    for i in _steps(sch, 0, progress, "replacement"):
        _, (params, sampler) = _x_step(problem, kernel, score, sch, i, x, path[:, i], path[:, i - 1], False)
        x = sampler(params, generator)
        if langevin_steps and i - 1 >= langevin_stop:
            x, a = _langevin(problem, x, path[:, i - 1], sch.lab(i - 1), lscore, langevin_steps, steps[i - 1],
                             corrector, log_prob, generator)
            acc, n_acc = acc + a, n_acc + 1
        _check_finite(x, i, "replacement")
    nfe = sch.T + langevin_steps * (sch.T - langevin_stop)
    return CondSamples(x, nfe, accept=(acc / n_acc if corrector == "mala" and n_acc else None), context=path)


def _level_steps(step, T):
    """A Langevin step per level ``0..T`` (Python floats) from one positive step or a sequence of ``T + 1``."""
    if torch.is_tensor(step) or isinstance(step, (list, tuple)):
        v = torch.as_tensor(step, dtype=torch.float64).reshape(-1)
        if v.numel() != T + 1:
            raise ValueError(f"step must be a number or {T + 1} steps (one per level 0..T), got {v.numel()}")
    elif isinstance(step, numbers.Real) and not isinstance(step, bool):
        v = torch.full((T + 1,), float(step), dtype=torch.float64)
    else:
        raise ValueError(f"step must be a positive number or a sequence of them, got {step!r}")
    if not (torch.isfinite(v).all() and (v > 0).all()):
        raise ValueError(f"step must be finite and positive, got {v.tolist() if v.numel() < 8 else step}")
    return v.tolist()


def mala_steps(problem, y0, schedule, log_prob, *, target=0.6, levels=None, chains=2000, pilot_steps=10,
               iters=12, lo=1e-3, hi=4.0, generator=None):
    """A MALA step per noise level chosen by a rule fixed before any error is measured: the step whose acceptance
    rate is ``target`` (bisection on ``log step`` in ``[lo, hi]``, ``iters`` halvings) for ``pilot_steps`` MALA
    steps from exact draws of the corrector's target at that level, ``X_s ~ q_s(X | Y_s)`` with ``Y_s`` from the
    forward noising of ``y0`` (the law the chains of :func:`langevin_replacement` see there when the corrector has
    mixed).  ``levels``: the levels to tune (default all ``0..T``); the others get the step of the nearest tuned
    level.  Returns ``(steps (T + 1,), acceptance (T + 1,))`` (float64; the acceptance at the chosen step,
    measured on fresh pilot draws).  The rate is monotone in the step over this range for the unimodal and
    well-separated cases; bisection assumes it."""
    if not isinstance(problem, Inpainting):
        raise ValueError("problem must be an Inpainting")
    if not isinstance(schedule, VPSchedule):
        raise ValueError("schedule must be a VPSchedule")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    chains, pilot_steps, iters = (_check_int("chains", chains), _check_int("pilot_steps", pilot_steps),
                                  _check_int("iters", iters))
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    sch = schedule.to(problem.device)
    y0 = problem.y0_vector(y0)
    levels = list(range(sch.T + 1)) if levels is None else sorted({_check_int("levels", v, lo=0) for v in levels})
    if not levels or levels[-1] > sch.T:
        raise ValueError(f"levels must be a non-empty list of levels in [0, {sch.T}]")
    tuned_s, tuned_a = {}, {}
    for s in levels:
        lab = sch.lab(s)
        ys = torch.exp(0.5 * lab) * y0 + torch.sqrt(-torch.expm1(lab)) * _randn((chains, problem.dy), y0, generator)

        def accept(step):
            x = _init_x(problem, ys, lab, 1, "exact", generator)
            return _langevin(problem, x, ys, lab, problem.mix.score, pilot_steps, step, "mala", log_prob,
                             generator)[1]
        a, b = math.log(lo), math.log(hi)
        for _ in range(iters):
            m = 0.5 * (a + b)
            a, b = (m, b) if accept(math.exp(m)) > target else (a, m)
        tuned_s[s] = math.exp(0.5 * (a + b))
        tuned_a[s] = accept(tuned_s[s])
    near = [min(levels, key=lambda v: abs(v - s)) for s in range(sch.T + 1)]
    dt = dict(dtype=torch.float64, device=problem.device)
    return torch.tensor([tuned_s[v] for v in near], **dt), torch.tensor([tuned_a[v] for v in near], **dt)


def langevin_fixed(problem, x, y, lab, *, steps, step, corrector="ula", score=None, log_prob=None,
                   generator=None):
    """``steps`` Langevin steps on ``X`` at one fixed noise level ``lab`` and context ``Y = y``, targeting
    ``p_lab(X | y)`` with the joint score, from the particles ``x (runs, n, dx)`` (e.g. exact draws of the
    target, so that the only error left is the corrector's own bias).  ``corrector="ula"`` keeps the fixed-step
    bias of its invariant law (``O(step)``); ``"mala"`` (needs ``log_prob(z, lab)``) has none.  Returns
    :class:`CondSamples` with ``nfe = steps`` (score evaluations per particle) and the MALA acceptance rate."""
    if not isinstance(problem, Inpainting):
        raise ValueError("problem must be an Inpainting")
    if not torch.is_tensor(x) or x.ndim != 3 or x.shape[-1] != problem.dx:
        raise ValueError(f"x must be a (runs, n, {problem.dx}) tensor")
    steps = _check_int("steps", steps, lo=1)
    if not step > 0:
        raise ValueError(f"step must be positive, got {step}")
    if corrector not in ("ula", "mala"):
        raise ValueError(f"corrector must be 'ula' or 'mala', got {corrector!r}")
    if corrector == "mala" and log_prob is None:
        raise ValueError("corrector='mala' needs log_prob(z, lab) of the joint")
    y = problem.y0_vector(y).expand(x.shape[0], problem.dy)
    x, a = _langevin(problem, x, y, lab, score if score is not None else problem.mix.score, steps, step,
                     corrector, log_prob, generator)
    _check_finite(x, lab, "langevin_fixed")
    return CondSamples(x, steps, accept=a if corrector == "mala" else None)


def _langevin(problem, x, y, lab, score, L, step, corrector, log_prob, generator):
    R, N, dx = x.shape
    yy = y[:, None, :]

    def grad_and_lp(x):
        z = problem.join(x, yy).reshape(R * N, problem.d)
        g = score(z, lab)[:, problem.ix].reshape(R, N, dx)
        lp = log_prob(z, lab).reshape(R, N) if corrector == "mala" else None
        return g, lp

    g, lp = grad_and_lp(x)
    acc = 0.0
    for _ in range(L):
        prop = x + step * g + math.sqrt(2 * step) * _randn(x.shape, x, generator)
        if corrector == "ula":
            x = prop
            g, _ = grad_and_lp(x)
            continue
        g2, lp2 = grad_and_lp(prop)
        log_fwd = -((prop - x - step * g) ** 2).sum(-1) / (4 * step)
        log_bwd = -((x - prop - step * g2) ** 2).sum(-1) / (4 * step)
        log_a = lp2 - lp + log_bwd - log_fwd
        u = torch.rand(R, N, dtype=x.dtype, device=x.device, generator=generator)
        ok = torch.log(u) < log_a
        x = torch.where(ok[..., None], prop, x)
        g = torch.where(ok[..., None], g2, g)
        lp = torch.where(ok, lp2, lp)
        acc += float(ok.double().mean())
    return x, acc / max(L, 1)


# ---- Algorithm 3: SMCDiff (bootstrap particle filter) --------------------------------------------------------
def smcdiff(problem, y0, schedule, *, runs, n, kernel="true", score=None, context="forward", init="exact",
            resampling="systematic", ess_threshold=None, generator=None, progress=False, path=None):
    """Algorithm 3 of 001 (Trippe et al. 2023): for ``t = T, ..., 1``: weight ``w_k = p(Y_s | X_t^k, Y_t)``,
    normalise, resample, propagate ``X_s^k ~ p(X_s | X_t^k, Y_t[, Y_s])`` (with the true kernel, conditioned
    on ``Y_s``: the kernel is not separable).  Returns the ``n`` equally weighted particles of each run, the
    ESS before each resampling, and ``log_z = sum_t log mean_k w_k``, an estimate (unbiased for ``exp``) of
    ``p(Y_{0:T-1} | Y_T)`` under the model (see :func:`context_log_likelihood`; for ``kernel="em"`` the model is
    the discretised one, see :func:`em_conditional_grid`).

    ``path``: an optional given context path ``(T + 1, dy)`` (shared by all runs) or ``(runs, T + 1, dy)``
    (index = step); it replaces the path drawn from ``context`` (``path[..., 0, :]`` must be ``y0``).

    Resampling: ``resampling`` names the scheme (``"systematic"`` or ``"multinomial"``); ``ess_threshold=None``
    resamples every run at every step (Algorithm 3 as written), a number ``r`` in ``(0, 1]`` only the runs whose
    ESS is below ``r n`` (adaptive resampling; the others keep their weights, which the returned ``log_w`` then
    carries).  ``ess`` is the ESS of the accumulated weights before each resampling decision."""
    sch, runs, n = _check_common(problem, schedule, runs, n, kernel, score)
    if resampling not in RESAMPLERS:
        raise ValueError(f"resampling must be one of {tuple(RESAMPLERS)}, got {resampling!r}")
    y0 = problem.y0_vector(y0)
    if path is None:
        path = context_path(problem, y0, sch, runs, kind=context, generator=generator)
    else:
        path = _check_path(problem, path, sch)
        if path.shape[0] not in (1, runs):
            raise ValueError(f"path must have shape ({sch.T + 1}, {problem.dy}) or ({runs}, {sch.T + 1}, "
                             f"{problem.dy}), got {tuple(path.shape)}")
        if not torch.allclose(path[:, 0], y0.expand_as(path[:, 0]), rtol=0.0, atol=1e-12):
            raise ValueError(f"path must start at y0 = {y0.tolist()} (its row 0 is Y_0), got row 0 = "
                             f"{path[0, 0].tolist()}")
        path = path.expand(runs, sch.T + 1, problem.dy)
    thr = _check_threshold(ess_threshold)
    x = _init_x(problem, path[:, sch.T], sch.lab(sch.T), n, init, generator)
    log_z = x.new_zeros(runs)
    lw = x.new_full((runs, n), -math.log(n))              # normalised log weights carried between steps
    ess_t = []
    for i in _steps(sch, 0, progress, "SMCDiff"):
        log_w, (params, sampler) = _x_step(problem, kernel, score, sch, i, x, path[:, i], path[:, i - 1], True)
        idx, lw, lz, e = _resample_step(lw + log_w, resampling, thr, generator)
        log_z, ess_t = log_z + lz, ess_t + [e]
        x = sampler(_gather(params, idx), generator)
        _check_finite(x, i, "smcdiff")
    return CondSamples(x, sch.T, log_w=None if thr is None else lw, log_z=log_z, ess=torch.stack(ess_t, 1),
                       context=path)


def _check_threshold(ess_threshold):
    if ess_threshold is None:
        return None
    if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, numbers.Real) or \
            not 0.0 < float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold must be None (resample at every step) or a number in (0, 1], "
                         f"got {ess_threshold!r}")
    return float(ess_threshold)


def _resample_step(la, resampling, thr, generator):
    """One resampling decision on the unnormalised log weights ``la (runs, n)`` (the carried normalised weights
    plus the step's incremental ones).  Returns the ancestors ``idx``, the normalised log weights after it
    (uniform where a run resampled), the step's factor of ``log Zhat`` (``logsumexp la``) and the ESS before it.
    ``thr=None``: every run resamples; else a run resamples iff its ESS < ``thr n``."""
    runs, n = la.shape
    lz = torch.logsumexp(la, -1)
    lw = la - lz[:, None]
    e = ess(lw)
    idx = RESAMPLERS[resampling](lw, generator)
    if thr is None:
        return idx, torch.full_like(lw, -math.log(n)), lz, e
    keep = e >= thr * n
    idx = torch.where(keep[:, None], torch.arange(n, device=la.device).expand(runs, n), idx)
    lw = torch.where(keep[:, None], lw, torch.full_like(lw, -math.log(n)))
    return idx, lw, lz, e


# ---- beyond the document: TDS and reconstruction guidance ---------------------------------------------------------
def _twist(problem, z, lab, y, sigma_y, inflate):
    """Twisting function ``log p~_t(y | z) = log N(y; xhat0(z)_Y, (sigma_y^2 + inflate (1 - ab_t)) I)`` and its
    gradient in ``z``, with Tweedie's ``xhat0 = (z + (1 - ab) s) / sqrt(ab)`` and
    ``d xhat0 / dz = (I + (1 - ab) grad s) / sqrt(ab)`` (exact score and Jacobian rows of the mixture, one pass).
    Particles are columns, ``z (d, m)`` (as in :func:`tds`): returns ``(log p~ (m,), gradient (d, m))``."""
    lab = torch.as_tensor(lab, dtype=torch.float64)
    sab, omab = torch.exp(0.5 * lab), -torch.expm1(lab)
    iy = problem.iy
    s, H_y = problem.mix._score_and_jacobian_cols(z.T, lab, rows=iy)           # (d, m), (dy, d, m)
    xhat_y = (z[iy] + omab * s[iy]) / sab
    J_y = (torch.eye(problem.d, dtype=z.dtype, device=z.device)[iy][:, :, None] + omab * H_y) / sab
    var = sigma_y ** 2 + inflate * float(omab)
    r = y[:, None] - xhat_y
    return _gauss_logpdf(xhat_y.T, y, var), (J_y * r[:, None, :]).sum(0) / var


def _tds_check(problem, y, sigma_y, inflate):
    if not sigma_y > 0:
        raise ValueError(f"sigma_y must be positive, got {sigma_y}")
    if not inflate >= 0:
        raise ValueError(f"inflate must be >= 0, got {inflate}")
    return problem.y0_vector(y, "y")


def _twisted_step(problem, sch, i, z, twist_t, y, sigma_y, inflate, generator, weights, kernel="true", score=None):
    """One twisted move ``Z_s ~ sum_k w_k N(m_k + C_k g, C_k)`` from the exact kernel's components shifted by
    ``C_k g``, ``g = grad log p~_t(y | Z_t)``, where ``twist_t = (log p~_t(y | Z_t), g)`` (:func:`_twist` at step
    ``i``); with ``weights``, also the TDS incremental log-weight
    ``log [p(Z_s | Z_t) p~_s(y | Z_s) / (proposal(Z_s) p~_t(y | Z_t))]`` and the twist at ``(Z_s, s)``, which the
    next step reuses (each twist is evaluated once per particle and step).  With ``kernel="em"`` the base kernel is
    the corrected EM kernel ``N(m, 2 eps I)``, ``m = Z_t + eps (Z_t + 2 score(Z_t))``, and the proposal
    ``N(m + 2 eps g, 2 eps I)``.  Particles are columns, ``z (d, m)``; returns
    ``(Z_s, log-weight or None, twist at Z_s or None)``."""
    lp_t, g = twist_t
    if kernel == "em":
        e = _eps(sch, i)
        mean = _em_mean(z.T, score, sch.lab(i), e).T
        prop = mean + 2 * e * g
        z_new = prop + math.sqrt(2 * e) * _randn(z.T.shape, z, generator).T
        if not weights:
            return z_new, None, None
        twist_s = _twist(problem, z_new, sch.lab(i - 1), y, sigma_y, inflate)
        log_w = _gauss_logpdf(z_new.T, mean.T, 2 * e) - _gauss_logpdf(z_new.T, prop.T, 2 * e)
        return z_new, log_w + twist_s[0] - lp_t, twist_s
    w, means, covs = problem.mix._reverse_kernel_cols(z.T, sch.lab(i), sch.lab(i - 1))     # (K, m), (K, d, m)
    Cg = torch.matmul(covs, g)
    z_new = sample_mixture_cols(w, means + Cg, covs, generator=generator)
    if not weights:
        return z_new, None, None
    twist_s = _twist(problem, z_new, sch.lab(i - 1), y, sigma_y, inflate)
    base = _mix_terms_cols(z_new, torch.log(w), means, covs)
    # the proposal's components: N(z; m_k + C_k g, C_k) = N(z; m_k, C_k) exp(g.(z - m_k - C_k g / 2)), C_k symmetric
    prop = base + (g[None] * (z_new[None] - means - 0.5 * Cg)).sum(1)
    return z_new, torch.logsumexp(base, 0) + twist_s[0] - torch.logsumexp(prop, 0) - lp_t, twist_s


def tds(problem, y, schedule, *, runs, n, sigma_y=0.1, inflate=1.0, resampling="systematic", ess_threshold=None,
        generator=None, progress=False, kernel="true", score=None):
    """Twisted diffusion sampler (Wu et al. 2023) for ``y = Z_0[idx_y] + sigma_y W`` on the exact model (the
    mixture's true reverse kernel).  ``Z_T ~ q_T`` with weight ``p~_T(y | Z_T)``; each step resamples, moves with
    the twisted proposal and reweights (:func:`_twisted_step`).  At ``t = 0`` the twist is ``p(y | Z_0)``
    exactly, so the weighted particles target ``q(Z_0 | y)`` (see :func:`tds_exact`) and ``exp(log_z)`` is an
    unbiased estimate of ``p(y)``.  Returns ``X_0`` with its normalised weights; ``nfe`` counts 2 per step
    (score and its Jacobian; the kernel is exact).

    ``kernel="em"``: the base model is the discretised one (``Z_T ~ q_T``, then the corrected EM kernel with
    ``score``); TDS is then exact for *that* model's ``p_em(X_0 | y)``, not for ``q(X_0 | y)``.  The twist still uses
    the exact mixture score and Jacobian; ``nfe`` counts 3 per step (the kernel's score, the twist's score and
    Jacobian).  ``resampling`` and ``ess_threshold`` as in :func:`smcdiff`."""
    sch, runs, n = _check_common(problem, schedule, runs, n, kernel, score)
    y = _tds_check(problem, y, sigma_y, inflate)
    if resampling not in RESAMPLERS:
        raise ValueError(f"resampling must be one of {tuple(RESAMPLERS)}, got {resampling!r}")
    # particles as columns (d, runs n): elementwise work then runs along the particles (see targets.GaussianMixture._z)
    z = noised(problem.mix, sch.lab(sch.T)).sample(runs * n, generator=generator).T.contiguous()
    thr = _check_threshold(ess_threshold)
    lp, g = _twist(problem, z, sch.lab(sch.T), y, sigma_y, inflate)
    la = lp.reshape(runs, n) - math.log(n)                 # carried normalised log weight + incremental one
    log_z = z.new_zeros(runs)
    offset = n * torch.arange(runs, device=z.device)[:, None]
    ess_t = []
    for i in _steps(sch, 0, progress, "TDS"):
        idx, lw, lz, e = _resample_step(la, resampling, thr, generator)
        log_z, ess_t = log_z + lz, ess_t + [e]
        idx = (idx + offset).reshape(-1)
        z, inc, (lp, g) = _twisted_step(problem, sch, i, z[:, idx], (lp[idx], g[:, idx]), y, sigma_y, inflate,
                                        generator, True, kernel, score)
        la = lw + inc.reshape(runs, n)
        _check_finite(z, i, "tds")
    log_z = log_z + torch.logsumexp(la, -1)
    x = z[problem.ix].T.reshape(runs, n, problem.dx)
    return CondSamples(x, (3 if kernel == "em" else 2) * sch.T, log_w=torch.log_softmax(la, -1), log_z=log_z,
                       ess=torch.stack(ess_t, 1))


def reconstruction_guidance(problem, y, schedule, *, runs, n, sigma_y=0.1, inflate=1.0, generator=None,
                            progress=False):
    """Reconstruction guidance: TDS's twisted proposal with no weights and no resampling (``runs * n`` independent
    chains).  A heuristic: the score of ``p~_t(y | Z_t)`` is not that of ``q_t(y | Z_t)``, so its output law is
    not ``q(Z_0 | y)`` whatever ``n``."""
    sch, runs, n = _check_common(problem, schedule, runs, n, "true", None)
    y = _tds_check(problem, y, sigma_y, inflate)
    z = noised(problem.mix, sch.lab(sch.T)).sample(runs * n, generator=generator).T.contiguous()      # (d, m)
    for i in _steps(sch, 0, progress, "guidance"):
        twist = _twist(problem, z, sch.lab(i), y, sigma_y, inflate)
        z, _, _ = _twisted_step(problem, sch, i, z, twist, y, sigma_y, inflate, generator, False)
        _check_finite(z, i, "guidance")
    return CondSamples(z[problem.ix].T.reshape(runs, n, problem.dx), 2 * sch.T)


def tds_exact(problem, y, sigma_y):
    """Exact law of ``X_0`` given ``y = Y_0 + sigma_y W`` (a mixture in ``dx`` dimensions) and ``log p(y)``."""
    y = _tds_check(problem, y, sigma_y, 0.0)
    H = torch.eye(problem.d, dtype=torch.float64, device=problem.device)[problem.iy]
    post = problem.mix.linear_posterior(H, y, sigma_y)
    my = marginal(problem.mix, problem.iy)
    eye = torch.eye(problem.dy, dtype=torch.float64, device=problem.device)
    log_py = GaussianMixture(my.weights, my.means, my.covs + sigma_y ** 2 * eye).log_prob(y[None])[0]
    return marginal(post, problem.ix), log_py


# ---- estimators and distances ----------------------------------------------------------------------------------
def weighted_mean(samples, f=None):
    """Per-run estimator ``sum_k W_k f(X^k)`` (``f`` defaults to the identity): ``(runs, ...)``."""
    fx = samples.x if f is None else f(samples.x)
    if samples.log_w is None:
        return fx.mean(1)
    W = torch.exp(samples.log_w)
    return torch.einsum("rn,rn...->r...", W, fx)


def retain_one(samples, generator=None):
    """Step 4 of Algorithm 3: one particle per run, drawn with its weight (uniformly for equal weights): ``(runs,
    dx)``.  A fixed index is not a valid choice: systematic resampling orders particles by ancestor, so e.g.
    particle 0 is not distributed as the filter's marginal."""
    R, N, dx = samples.x.shape
    log_w = samples.log_w if samples.log_w is not None else samples.x.new_zeros(R, N)
    k = torch.multinomial(torch.softmax(log_w, -1), 1, generator=generator)[:, 0]
    return samples.x[torch.arange(R, device=k.device), k]


def _check_samples(x, cond):
    """Pooled samples ``x (..., d)`` of the law of ``cond`` (last axis = ``cond.d``), float64, finite, non-empty."""
    if not torch.is_tensor(x) or x.ndim < 1:
        raise ValueError("x must be a tensor of samples")
    if x.dtype != torch.float64:
        raise ValueError(f"x must be float64 (theory checks), got {x.dtype}")
    if (x.ndim < 2 and cond.d != 1) or (x.ndim >= 2 and x.shape[-1] != cond.d):
        raise ValueError(f"x must have last axis {cond.d} (the conditioned coordinates X, not Z = [X, Y]), got "
                         f"shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError("x must hold at least one sample")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite (it holds NaN or inf)")
    return x.reshape(-1, cond.d)


def mode_weights(x, cond):
    """Estimated mode weights: the mean responsibility under the exact conditional mixture ``cond`` of the pooled
    samples ``x (..., dx)``; exact value ``cond.weights``."""
    return cond.responsibilities(_check_samples(x, cond)).mean(0)


def w1_1d(x, cond, *, grid_size=4001):
    """Wasserstein-1 distance between the empirical law of the pooled 1-D samples ``x`` and the 1-D mixture
    ``cond``: ``int |F_n - F|`` on a fine grid covering both."""
    if cond.d != 1:
        raise ValueError("w1_1d needs a one-dimensional conditional")
    s = torch.sort(_check_samples(x, cond).reshape(-1))[0]
    sd = cond.covs[:, 0, 0].sqrt()
    lo = min(float(s[0]), float((cond.means[:, 0] - 8 * sd).min()))
    hi = max(float(s[-1]), float((cond.means[:, 0] + 8 * sd).max()))
    g = torch.linspace(lo, hi, grid_size, dtype=torch.float64, device=s.device)
    Fn = torch.searchsorted(s, g, right=True).double() / s.numel()
    F = (cond.weights * torch.special.ndtr((g[:, None] - cond.means[:, 0]) / sd)).sum(-1)
    return float(torch.trapezoid((Fn - F).abs(), g))
