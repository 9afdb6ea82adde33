"""Skip-step DDPM and DDIM with an estimated posterior covariance (document 003, "Applications in acceleration").

From ``x_t`` the sampler jumps to an earlier level ``s`` (any sub-sequence ``0 = t_0 < t_1 < ... < t_K`` of a
schedule) through the Gaussian approximation ``p(x_0 | x_t) = N(mu_0, Sigma_0)`` of any estimator in
:mod:`diffnotes.covariance`, pushed through the bridge ``q_eta(x_s | x_t, x_0) = N(c_0 x_0 + c_t x_t, lam2 I)``:

    ``p(x_s | x_t) = int q_eta(x_s | x_t, x_0) N(x_0; mu_0, Sigma_0) dx_0 = N(c_0 mu_0 + c_t x_t, lam2 I + c_0^2 Sigma_0)``.

``eta = 1`` is skip-step DDPM (``q(x_s | x_t, x_0)``, the DDPM posterior of the jump), ``eta = 0`` skip-step DDIM.
Document 003 writes the DDPM kernel as ``int q(x_s | x_0) p(x_0 | x_t) dx_0``: that kernel forgets ``x_t``
(``x_s`` would be drawn afresh around ``alpha_s mu_0`` with variance ``sigma_s^2 + alpha_s^2 Sigma_0``), and it is
not what DDPM does; see the errata of chapter 03.  The last jump (to ``t_0 = 0``) draws ``x_0 ~ N(mu_0, Sigma_0)``
(``c_0 = 1``, ``c_t = lam2 = 0``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .covariance import CountedScore, bridge_coefficients, estimate
from .schedules import VPSchedule

__all__ = ["SkipSamples", "even_steps", "gaussian_kernel", "sample_gaussian", "skip_step", "smoothed_kl",
           "least_steps"]


@dataclass
class SkipSamples:
    x: torch.Tensor
    nfe: int                           # forward passes of the score network per sample
    passes: dict = field(default_factory=dict)   # forward, vjp, head (totals over the run)
    clipped: int = 0                   # rows x steps whose covariance estimate needed the PSD clip


def even_steps(T, K):
    """``K`` jumps on ``0 < ... < T``: ``round(linspace(0, T, K + 1))`` (strictly increasing)."""
    if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= T:
        raise ValueError(f"K (number of steps) must be an integer in [1, T = {T}], got {K!r}")
    return torch.linspace(0, T, K + 1, dtype=torch.float64).round().long().tolist()


def gaussian_kernel(post, x, lab_t, lab_s, eta=1.0):
    """Mean ``(n, d)`` and covariance (kind of ``post``) of ``p(x_s | x_t = x)`` for ``x_0 ~ N(post.mean, post.cov)``."""
    c0, ct, lam2, _, _ = bridge_coefficients(lab_t, lab_s, eta)
    c0, ct, lam2 = c0.to(x), ct.to(x), lam2.to(x)
    mean = c0 * post.mean + ct * x
    if post.kind == "full":
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return mean, lam2 * eye + c0 ** 2 * post.cov
    return mean, lam2 + c0 ** 2 * post.cov


def sample_gaussian(mean, cov, kind, generator=None):
    """One draw per row of ``N(mean, cov)`` for an iso ``(n,)``, diag ``(n, d)`` or full ``(n, d, d)`` PSD ``cov``."""
    z = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    if kind == "iso":
        return mean + cov.clamp_min(0).sqrt()[:, None] * z
    if kind == "diag":
        return mean + cov.clamp_min(0).sqrt() * z
    lam, U = torch.linalg.eigh(cov)
    return mean + torch.einsum("nde,ne->nd", U, lam.clamp_min(0).sqrt() * torch.einsum("nde,nd->ne", U, z))


def skip_step(method, score, x, schedule, steps, *, eta=1.0, heads=None, table=None, M=1, generator=None):
    """Run the skip-step sampler over the visited steps ``steps`` (``[0, ..., t_K]`` with ``t_K <= T``), from
    ``x = x_{t_K}``.  ``method`` is any :data:`diffnotes.covariance.METHODS` entry.  Returns :class:`SkipSamples`
    (``nfe`` = score forward passes per sample; ``passes`` also counts VJPs and head passes)."""
    if not isinstance(schedule, VPSchedule):
        raise ValueError("schedule must be a VPSchedule")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    st = list(steps)
    if len(st) < 2 or st[0] != 0 or any(b <= a for a, b in zip(st[:-1], st[1:])) or st[-1] > schedule.T:
        raise ValueError(f"steps must increase strictly from 0 to at most T = {schedule.T}, got {st}")
    cs = score if isinstance(score, CountedScore) else CountedScore(score)
    f0, v0 = cs.forward, cs.vjp_calls
    lab = schedule.log_alphabar.to(x.device)
    heads_used, clipped = 0, 0
    for t, s in zip(st[:0:-1], st[-2::-1]):
        post = estimate(method, cs, x, lab[t], heads=heads, table=table, M=M, lab_prev=lab[s], generator=generator)
        heads_used += post.passes["head"]
        clipped += post.clipped
        mean, cov = gaussian_kernel(post, x, lab[t], lab[s], eta)
        x = sample_gaussian(mean, cov, post.kind, generator)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"skip_step({method!r}): non-finite values at step t = {t}")
    passes = {"forward": cs.forward - f0, "vjp": cs.vjp_calls - v0, "head": heads_used}
    return SkipSamples(x, passes["forward"], passes, clipped)


def smoothed_kl(target, x, h, n_eval=2000, generator=None):
    """``KL(q_h || p_h)`` with ``q_h = q * N(0, h^2 I)`` (exact, a Gaussian mixture) and ``p_h`` the sampler's law
    smoothed by the same kernel, i.e. the kernel density estimate of the samples ``x`` with bandwidth ``h``.

    Monte Carlo over ``y ~ q_h``: returns ``(estimate, standard error)``.  Both densities are positive everywhere, so
    the value is finite even for a deterministic sampler; it is 0 iff ``p = q`` (the Gaussian kernel is
    characteristic), and with exact samples it measures the KDE's own bias (report it as the floor)."""
    import math
    from .metrics import kl_mc, logsumexp_gauss
    from .targets import GaussianMixture
    if not h > 0:
        raise ValueError(f"h (bandwidth) must be positive, got {h}")
    eye = torch.eye(target.d, dtype=torch.float64, device=target.device)
    qh = GaussianMixture(target.weights, target.means, target.covs + h ** 2 * eye)
    y = qh.sample(n_eval, generator=generator)
    x = x.to(torch.float64)
    logp = (logsumexp_gauss(y, x, float(h) ** 2) - math.log(x.shape[0])
            - 0.5 * target.d * math.log(2 * math.pi * h ** 2))
    est, se = kl_mc(qh.log_prob(y), logp)
    return float(est), float(se)


def least_steps(quality, grid, threshold):
    """The first ``K`` in the increasing ``grid`` with ``quality(K) <= threshold``: ``(K or None, {K: quality})``
    (the scan stops at the first success)."""
    seen = {}
    for K in sorted(grid):
        seen[K] = quality(K)
        if seen[K] <= threshold:
            return K, seen
    return None, seen
