"""Document 002 (convergence of DDPM / the probability-flow ODE, accelerated samplers): chapter algorithms.

* :func:`law_errors`: exact TV / KL of every sampler of :data:`LAW_SAMPLERS` (those of :mod:`diffnotes.samplers`
  and the multistep schemes) on a Gaussian target in its eigenbasis, through the one implementation of the exact
  laws, :func:`diffnotes.laws.law` (diagonal, ``O(d)`` per step).
* :func:`pushforward` : a deterministic sampler run on points together with the log-determinant of its Jacobian
  (change of variables), so that ``log p_{Y_1}`` is exact at the output points.
* :func:`tv_quadrature_source`: ``TV(p_Y, p_X)`` for a deterministic ``Y = F(Z)`` by quadrature over the source
  variable ``Z`` (no inversion of ``F`` needed), and :func:`tv_mc`, :func:`kl_mc_stable`: Monte Carlo estimators
  with standard errors.
* :class:`OscillatingScore`: a score perturbation whose L2 error and Jacobian error are set independently
  (a constant shift for the L2 part, a fast oscillation ``(a/omega) sin(omega x)`` for the Jacobian part), the
  building block of the stability measurement and of the counterexample.
* :func:`stochastic_grid_law`: the density of 1-D DDPM and the accelerated SDE (Theorem 3) with nothing neglected
  (Fourier-exact convolutions, quadrature, exact change of variables in the tiny-``beta`` steps), and
  :func:`stochastic_mixture_errors` (TV to ``p_{X_1}`` on the grid).
* :func:`dense_perturbation`, :func:`coupled_errors`: a dense affine score perturbation, exact full-matrix laws and
  exact ``eps_score``, ``eps_Jacobi``.
* :func:`coupled_mixture`, :func:`mixture_errors_mc`: a non-product mixture in ``R^d`` and the deterministic
  samplers' TV on it by Monte Carlo over the source (exact change of variables), for the ``d``-dependence.
"""
from __future__ import annotations

import math

import torch

from . import samplers as S
from .schedules import VPSchedule

__all__ = ["LAW_SAMPLERS", "DIAG_SAMPLERS", "pushforward", "tv_quadrature_source", "tv_mc", "kl_mc_stable",
           "OscillatingScore", "score_errors", "tv_gaussian_1d"]

DIAG_SAMPLERS = ("ddpm", "ddim", "flow_ode", "accel_ode", "accel_sde", "multistep_ode", "scheme2_ode")


# ---------------------------------------------------------------------------------------------------------------
# exact laws on product targets (eigenbasis): diffnotes.laws
# ---------------------------------------------------------------------------------------------------------------
#: the samplers with an exact Gaussian law (:func:`diffnotes.laws.law`), with their options
LAW_SAMPLERS = {**{k: (f, {}) for k, f in S.SAMPLERS.items()}, "multistep_ode": (S.multistep_ode, {}),
                "multistep_nofactor": (S.multistep_ode, {"alpha_factor": False})}
DIAG_SAMPLERS = tuple(LAW_SAMPLERS)


def tv_gaussian_1d(m1, v1, m2, v2):
    """Exact ``TV(N(m1, v1), N(m2, v2))`` in one dimension (batched), from the crossing points of the densities."""
    from scipy import stats  # noqa: F401  (import check only)
    m1, v1, m2, v2 = (torch.as_tensor(u, dtype=torch.float64) for u in (m1, v1, m2, v2))
    s1, s2 = v1.sqrt(), v2.sqrt()
    Phi = lambda z: 0.5 * torch.erfc(-z / math.sqrt(2))  # noqa: E731
    # log N1 - log N2 = 0 is a quadratic a x^2 + b x + c = 0
    a = 0.5 / v2 - 0.5 / v1
    bq = m1 / v1 - m2 / v2
    cq = 0.5 * m2 ** 2 / v2 - 0.5 * m1 ** 2 / v1 + 0.5 * torch.log(v2 / v1)
    small = a.abs() < 1e-14 * (1 / v1 + 1 / v2)
    disc = (bq ** 2 - 4 * a * cq).clamp_min(0).sqrt()
    a_safe = torch.where(small, torch.ones_like(a), a)
    r1 = torch.where(small, -cq / torch.where(bq == 0, torch.ones_like(bq), bq), (-bq - disc) / (2 * a_safe))
    r2 = torch.where(small, torch.full_like(a, math.inf), (-bq + disc) / (2 * a_safe))
    lo, hi = torch.minimum(r1, r2), torch.maximum(r1, r2)
    # TV = |P1(I) - P2(I)| with I the interval between the roots (or a half-line when the variances are equal)
    p1 = Phi((hi - m1) / s1) - Phi((lo - m1) / s1)
    p2 = Phi((hi - m2) / s2) - Phi((lo - m2) / s2)
    return (p1 - p2).abs()


# ---------------------------------------------------------------------------------------------------------------
# deterministic samplers with their Jacobian determinant (change of variables)
# ---------------------------------------------------------------------------------------------------------------
def _jac(score, x, lab):
    if hasattr(score, "jacobian"):
        return score.jacobian(x, lab)
    if hasattr(score, "score_jacobian"):
        return score.score_jacobian(x, lab)
    raise ValueError("score must provide .jacobian(x, lab) (or be a target with .score_jacobian)")


def _call(score, x, lab):
    return score.score(x, lab) if hasattr(score, "score_jacobian") and not callable(score) else score(x, lab)


def pushforward(name, score, z, schedule, *, stop=1):
    """Run the deterministic sampler ``name`` (``flow_ode``, ``ddim``, ``accel_ode``) from ``Y_T = z`` and return
    ``(Y_stop, logdet, nfe)`` with ``logdet = log |det dY_stop / dY_T|`` accumulated step by step from the exact
    Jacobian of each step.  ``score`` is a callable with a ``.jacobian(x, lab)`` method (or a target)."""
    if name not in ("flow_ode", "ddim", "accel_ode"):
        raise ValueError(f"name must be 'flow_ode', 'ddim' or 'accel_ode', got {name!r}")
    sc = (lambda x, lab: score.score(x, lab)) if not callable(score) else score
    la, lab, beta, omab = schedule.log_alpha, schedule.log_alphabar, schedule.beta, schedule.one_minus_alphabar
    n, d = z.shape
    I = torch.eye(d, dtype=z.dtype, device=z.device)
    x, logdet, nfe = z, z.new_zeros(n), 0
    for t in range(schedule.T, stop, -1):
        rsa = torch.exp(-0.5 * la[t])
        s, J = sc(x, lab[t]), _jac(score, x, lab[t])
        nfe += 1
        if name == "flow_ode":
            xn, D = rsa * (x + 0.5 * beta[t] * s), rsa * (I + 0.5 * beta[t] * J)
        elif name == "ddim":
            g = rsa * omab[t] - (omab[t - 1] * omab[t]).sqrt()
            xn, D = rsa * x + g * s, rsa * I + g * J
        else:
            f, k = torch.exp(0.5 * la[t + 1]), beta[t] ** 2 / (4 * beta[t + 1])
            y = f * (x - 0.5 * beta[t + 1] * s)
            Dy = f * (I - 0.5 * beta[t + 1] * J)
            s1, J1 = sc(y, lab[t + 1]), _jac(score, y, lab[t + 1])
            nfe += 1
            xn = rsa * (x + (0.5 * beta[t] + k) * s - k * f * s1)
            D = rsa * (I + (0.5 * beta[t] + k) * J - k * f * (J1 @ Dy))
        sign, ld = torch.linalg.slogdet(D)
        if (sign <= 0).any():
            raise FloatingPointError(f"{name}: step t = {t} is not orientation preserving (det <= 0)")
        x, logdet = xn, logdet + ld
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{name}: non-finite values at step t = {t}")
    return x, logdet, nfe


def tv_quadrature_source(log_source, logp_target_at_out, logdet, cell, *, normalise=True):
    """``TV(p_Y, p_X) = 1/2 int |p_Z(z) - p_X(F(z)) |det DF(z)|| dz`` for ``Y = F(Z)`` (``F`` a bijection): a
    quadrature over grid points ``z`` of the *source* variable; ``logdet = log |det DF(z)|``.
    Also returns ``KL(p_Y || p_X) = int p_Z(z) [log p_Z(z) - logdet - log p_X(F(z))] dz``.

    ``normalise=True`` (default): the quadrature weights of ``p_Z`` and of the pull-back of ``p_X`` are each
    normalised to sum to one, so that TV and KL are those of two probability vectors on the grid: Pinsker's
    inequality ``KL >= 2 TV^2`` then holds exactly, and KL is summed in the termwise non-negative form
    ``sum_i P_i (r_i - 1 - log r_i)``, ``r_i = Q_i / P_i`` (no cancellation when KL is small).  Without it, a
    quadrature error of ``1e-5`` in the mass of the pull-back gave a KL below ``2 TV^2`` (even negative) where
    ``TV ~ 1e-3``.  ``normalise=False``: the raw sums, ``TV = 1 - sum min(p_Z, pull-back) cell``, which stays
    meaningful when ``F`` contracts most of the source onto spikes that the grid cannot resolve (each unresolved
    spike changes the sum by at most ``p_Z * cell``); KL is then not returned (``nan``)."""
    lc = math.log(cell)
    lp, lq = log_source + lc, logp_target_at_out + logdet + lc
    if not normalise:
        tv = 1 - torch.minimum(torch.exp(lp), torch.exp(lq)).sum()
        return tv, torch.full_like(tv, math.nan)
    lp, lq = lp - torch.logsumexp(lp, 0), lq - torch.logsumexp(lq, 0)
    P, Q, u = torch.exp(lp), torch.exp(lq), lq - lp
    tv = 1 - torch.minimum(P, Q).sum()
    kl = torch.where(u.abs() < 1, P * (torch.expm1(u) - u), Q - P - P * u).sum()
    return tv, kl


def tv_mc(log_ratio):
    """``TV(p, q) = E_p[(1 - q/p)_+]`` from ``log(q/p)`` at samples of ``p``: ``(estimate, standard error)``.
    Its relative error does not grow as ``TV -> 0`` (the integrand is of the size of ``TV``)."""
    r = (-torch.expm1(log_ratio)).clamp_min(0)
    return r.mean(), r.std() / math.sqrt(r.numel())


def kl_mc_stable(log_ratio):
    """``KL(p || q) = E_p[q/p - 1 - log(q/p)]`` from ``log(q/p)`` at samples of ``p`` (uses ``E_p[q/p] = 1``):
    a non-negative integrand of size ``KL``, so the relative error stays bounded as ``KL -> 0``."""
    r = torch.expm1(log_ratio) - log_ratio
    return r.mean(), r.std() / math.sqrt(r.numel())


# ---------------------------------------------------------------------------------------------------------------
# controlled perturbations: L2 error and Jacobian error set independently
# ---------------------------------------------------------------------------------------------------------------
class OscillatingScore:
    """``s_t(x) = s*_t(x) + eps_score u + (eps_jac / omega) sin(omega x)`` (coordinate-wise), with ``|u| = 1``.

    * the shift contributes ``eps_score`` to the L2 error and nothing to the Jacobian error;
    * the oscillation has Jacobian ``eps_jac diag(cos(omega x))`` (operator norm ``eps_jac max|cos|``, of order
      ``eps_jac`` for any ``omega``) and L2 size ``<= eps_jac sqrt(d) / omega``: large ``omega`` makes it a pure
      Jacobian error.  :func:`score_errors` measures both exactly as the document defines them."""

    def __init__(self, exact, d, *, eps_score=0.0, eps_jac=0.0, omega=50.0, direction=None):
        if eps_score < 0 or eps_jac < 0 or omega <= 0:
            raise ValueError(f"eps_score, eps_jac must be >= 0 and omega > 0, got {eps_score}, {eps_jac}, {omega}")
        self.exact, self.d = exact, d
        u = torch.ones(d, dtype=torch.float64) if direction is None else torch.as_tensor(direction, dtype=torch.float64)
        self.u = u / u.norm()
        self.eps_score, self.eps_jac, self.omega = eps_score, eps_jac, omega

    def perturbation(self, x, lab):
        return self.eps_score * self.u.to(x.device) + self.eps_jac / self.omega * torch.sin(self.omega * x)

    def __call__(self, x, lab):
        return self.exact.score(x, lab) + self.perturbation(x, lab)

    def jacobian(self, x, lab):
        return self.exact.score_jacobian(x, lab) + torch.diag_embed(self.eps_jac * torch.cos(self.omega * x))


def score_errors(score, target, schedule, n, *, generator=None, steps=None):
    """The document's error measures by Monte Carlo over ``X_t ~ p_{X_t}`` (``n`` points per step):
    ``eps_score = sqrt(mean_t E|s_t - s*_t|^2)`` and ``eps_Jacobi = mean_t E||ds_t - ds*_t||_op``."""
    ts = range(1, schedule.T + 1) if steps is None else steps
    l2, jac = [], []
    for t in ts:
        lab = schedule.lab(t)
        x = target.sample(n, lab, generator=generator)
        l2.append(((score(x, lab) - target.score(x, lab)) ** 2).sum(-1).mean())
        dJ = score.jacobian(x, lab) - target.score_jacobian(x, lab)
        jac.append(torch.linalg.matrix_norm(dJ, ord=2).mean())
    return float(torch.stack(l2).mean().sqrt()), float(torch.stack(jac).mean())


def _interp(xq, xp, fp):
    """Piecewise-linear interpolation of ``fp`` given at increasing ``xp`` onto ``xq`` (0 outside)."""
    i = torch.searchsorted(xp, xq).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((xq - x0) / (x1 - x0)).clamp(0, 1)
    out = f0 + w * (f1 - f0)
    return torch.where((xq < xp[0]) | (xq > xp[-1]), torch.zeros_like(out), out)


def law_errors(name, mean, var, schedule, *, stop=1, **opts):
    """Exact errors of sampler ``name`` (a key of :data:`LAW_SAMPLERS`) on the product target
    ``N(mean, diag(var))`` (``(d,)``), started from ``Y_T ~ N(0, I)``, by :func:`diffnotes.laws.law`:
    ``(tv, kl, nfe)`` with, per coordinate, ``tv = TV(p_{X_stop}, p_{Y_stop})`` (1-D, exact) and
    ``kl = KL(p_{X_stop} || p_{Y_stop})`` (additive over coordinates)."""
    from . import laws
    from .targets import DiagonalGaussian
    if name not in LAW_SAMPLERS:
        raise ValueError(f"sampler must be one of {DIAG_SAMPLERS}, got {name!r}")
    fn, base = LAW_SAMPLERS[name]
    tgt = DiagonalGaussian(mean, var)
    init = DiagonalGaussian(torch.zeros_like(mean), torch.ones_like(var))
    out = laws.law(fn, tgt.affine_score(), init, schedule, stop=stop, **base, **opts)
    m, v = out.loc, out.var
    lab = schedule.lab(stop)
    mx, vx = torch.exp(0.5 * lab) * mean, torch.exp(lab) * var - torch.expm1(lab)
    r = vx / v
    kl = 0.5 * ((m - mx) ** 2 / v + r - 1 - torch.log(r))
    nfe = (2 if name == "accel_ode" else 1) * (schedule.T - stop)
    return tv_gaussian_1d(mx, vx, m, v), kl, nfe


def mixture_errors(name, mixture, schedule, z, cell, *, stop=1):
    """``(TV(p_{Y_stop}, p_{X_stop}), KL(p_{Y_stop} || p_{X_stop}), nfe)`` of a deterministic sampler on a
    low-dimensional mixture by quadrature over the source grid ``z`` (``Y_T = z ~ N(0, I)``)."""
    d = z.shape[1]
    log_source = -0.5 * (z ** 2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
    y, ld, nfe = pushforward(name, mixture, z, schedule, stop=stop)
    tv, kl = tv_quadrature_source(log_source, mixture.log_prob(y, schedule.lab(stop)), ld, cell)
    return tv, kl, nfe


__all__ += ["law_errors", "mixture_errors"]


def tv_between_pushforwards_1d(z, cell, y0, ld0, y1, ld1):
    """``TV(p_{F_0(Z)}, p_{F_1(Z)})`` for two increasing 1-D maps of the same source ``Z ~ N(0, 1)`` given on the
    grid ``z`` (``(m, 1)``) with their log-derivatives ``ld``: the density of ``F_0(Z)`` is known at ``y0``
    (``phi(z) / F_0'(z)``) and interpolated at ``y1``; then the source quadrature of
    :func:`tv_quadrature_source`."""
    logz = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    if (torch.diff(y0[:, 0]) <= 0).any():
        raise ValueError("y0 must be increasing (F_0 monotone on the grid)")
    q0 = _interp(y1[:, 0], y0[:, 0], torch.exp(logz - ld0))
    return 1 - torch.minimum(torch.exp(logz), q0 * torch.exp(ld1)).sum() * cell


__all__ += ["tv_between_pushforwards_1d"]


# ---------------------------------------------------------------------------------------------------------------
# 1-D stochastic samplers (DDPM, accelerated SDE) on a grid, any differentiable score
# ---------------------------------------------------------------------------------------------------------------
def _spectral(p, dx):
    """Zero-padded FFT of a density on a uniform grid and its angular wavenumbers."""
    m = p.numel()
    k = 2 * math.pi * torch.fft.rfftfreq(2 * m, d=dx, device=p.device).to(p.dtype)
    return torch.fft.rfft(p, n=2 * m), k


def _gauss_conv(p, q, dx):
    """Convolution with ``N(0, q)`` done exactly in Fourier space (zero-padded, no wrap-around)."""
    P, k = _spectral(p, dx)
    return torch.fft.irfft(P * torch.exp(-0.5 * q * k ** 2), n=2 * p.numel())[:p.numel()]


def _fourier_interp(p, xs, xq):
    """Trigonometric (band-limited) interpolation of ``p`` (on the uniform grid ``xs``, zero-padded to twice its
    length) at arbitrary points ``xq``: spectrally accurate for a smooth density."""
    dx, m = float(xs[1] - xs[0]), p.numel()
    P, k = _spectral(p, dx)
    c = torch.full_like(k, 2.0)
    c[0] = 1.0
    c[-1] = 1.0
    phase = torch.exp(1j * k[None, :] * (xq - xs[0])[:, None])
    return (phase * (c * P)[None, :]).real.sum(-1) / (2 * m)


def _mean_map(score, rsa, beta, lab):
    """``x -> (mu(x), mu'(x))`` for the 1-D step mean ``mu(x) = rsa (x + beta s(x))`` (``mu'`` by autograd)."""
    def f(x):
        xg = x.detach().clone().requires_grad_(True)
        s = _call(score, xg[:, None], lab)[:, 0]
        g, = torch.autograd.grad(s.sum(), xg)
        return rsa * (x + beta * s.detach()), rsa * (1 + beta * g)
    return f


_QUAD_SD = 1.0   # quadrature once the kernel is this many grid steps wide (trapezoid error ~ exp(-2 pi^2 r^2))


def _noisy_map_step(p, xs, mu_fn, q):
    """Density on ``xs`` of ``mu(X) + sqrt(q) N`` for ``X ~ p`` (``mu_fn=None``: the identity).

    * identity map: exact Gaussian convolution in Fourier space;
    * ``sqrt(q) >= dx``: quadrature of ``int p(x) N(y; mu(x), q) dx`` (trapezoid on a Gaussian integrand:
      spectrally accurate from one grid step on);
    * narrower (``beta_t`` tiny): the exact change of variables ``p(mu^{-1}(y)) / mu'(mu^{-1}(y))`` (Newton
      inverse, band-limited interpolation :func:`_fourier_interp`), then the exact Gaussian convolution."""
    dx = float(xs[1] - xs[0])
    if mu_fn is None:
        return _gauss_conv(p, q, dx)
    if q >= (_QUAD_SD * dx) ** 2:
        mu, sd = mu_fn(xs)[0], math.sqrt(q)
        K = torch.exp(-0.5 * ((xs[None, :] - mu[:, None]) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
        return (p[:, None] * K).sum(0) * dx
    x = xs.clone()                                  # Newton for mu(x) = y at every grid point y
    for _ in range(3):                              # mu is close to the identity here: quadratic convergence
        m_, dm = mu_fn(x)
        x = x - (m_ - xs) / dm
    dm = mu_fn(x)[1]
    if (dm <= 0).any():
        raise FloatingPointError("stochastic step: mean map not monotone on the grid")
    pulled = _fourier_interp(p, xs, x) / dm
    pulled = torch.where((x < xs[0]) | (x > xs[-1]), torch.zeros_like(pulled), pulled)
    return _gauss_conv(pulled, q, dx)


def stochastic_grid_law(name, score, schedule, xs, *, stop=1, variance="beta_over_alpha"):
    """Density of the output ``Y_stop`` of the 1-D stochastic sampler ``name`` on the uniform grid ``xs``
    (``(m,)``), from ``Y_T ~ N(0, 1)``, for any differentiable score (exact up to quadrature).

    * ``"ddpm"``: ``Y_{t-1} = mu_t(Y_t) + sigma_t Z`` with ``mu_t(x) = (x + beta_t s_t(x)) / sqrt(alpha_t)`` and
      ``sigma_t^2`` as in :func:`diffnotes.samplers.ddpm` (``variance``);
    * ``"accel_sde"`` (002, Theorem 3): a Gaussian convolution ``Y^+ = Y_t + sqrt(beta_t / 2) Z`` (the midpoint
      noise), then ``Y_{t-1} = mu_t(Y^+) + sqrt(beta_t / (2 alpha_t)) Z^+``.

    Each step is :func:`_noisy_map_step`.  No noise variance is neglected."""
    if name not in ("ddpm", "accel_sde"):
        raise ValueError(f"name must be 'ddpm' or 'accel_sde', got {name!r}")
    if variance not in ("beta", "beta_tilde", "beta_over_alpha"):
        raise ValueError(f"variance must be 'beta', 'beta_tilde' or 'beta_over_alpha', got {variance!r}")
    if isinstance(stop, bool) or not isinstance(stop, int) or not 0 <= stop < schedule.T:
        raise ValueError(f"stop must be an integer in [0, T), got {stop!r}")
    if xs.ndim != 1 or xs.numel() < 8:
        raise ValueError("xs must be a uniform 1-D grid of at least 8 points")
    sch = schedule
    p = torch.exp(-0.5 * xs ** 2) / math.sqrt(2 * math.pi)
    rsa, beta = torch.exp(-0.5 * sch.log_alpha).tolist(), sch.beta.tolist()
    var = {"beta": sch.beta, "beta_tilde": sch.beta_tilde, "beta_over_alpha": sch.beta / sch.alpha}[variance].tolist()
    for t in range(sch.T, stop, -1):
        mu = _mean_map(score, rsa[t], beta[t], sch.log_alphabar[t])
        if name == "accel_sde":
            p = _noisy_map_step(p, xs, None, 0.5 * beta[t])
            p = _noisy_map_step(p, xs, mu, 0.5 * beta[t] * rsa[t] ** 2)
        else:
            p = _noisy_map_step(p, xs, mu, var[t])
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"stochastic_grid_law: non-finite density at step t = {t}")
    return p


def stochastic_mixture_errors(name, mixture, schedule, xs, *, stop=1, **opts):
    """``(TV(p_{X_stop}, p_{Y_stop}), nfe)`` of a 1-D stochastic sampler on a 1-D mixture, the output density from
    :func:`stochastic_grid_law` and the TV by quadrature on ``xs``."""
    p = stochastic_grid_law(name, mixture, schedule, xs, stop=stop, **opts)
    q = torch.exp(mixture.log_prob(xs[:, None], schedule.lab(stop)))
    return 0.5 * (p - q).abs().sum() * float(xs[1] - xs[0]), schedule.T - stop


# ---------------------------------------------------------------------------------------------------------------
# d-dependence on a non-product problem: a dense affine score perturbation, exact laws
# ---------------------------------------------------------------------------------------------------------------
def dense_perturbation(d, *, generator=None, device=None):
    """A dense, non-symmetric Gaussian matrix ``W`` (``(d, d)``, entries ``N(0, 1/d)``): ``||W||_op -> 2`` and
    ``||W||_F^2 ~ d``, so ``delta W x`` is a score error of fixed size per coordinate that couples all
    coordinates (the sampler's output is not a product in any basis fixed by the target)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    return (torch.randn(d, d, generator=generator, dtype=torch.float64) / math.sqrt(d)).to(device)


def coupled_errors(name, target, dA, schedule, *, stop=1, **opts):
    """Exact Gaussian output laws of sampler ``name`` on the Gaussian ``target`` (a
    :class:`~diffnotes.targets.DiagonalGaussian`, i.e. the target in its eigenbasis) with the exact score
    ``s*_t`` and with ``s*_t(x) + dA x``, from ``Y_T ~ N(0, I)``, by :func:`diffnotes.laws.law` (full ``(d, d)``
    matrices for the perturbed run).

    Returns a dict: ``kl_target = KL(p_{X_stop} || p^dA_{Y_stop})``, ``kl_exact = KL(p_{X_stop} || p^0_{Y_stop})``
    (the discretisation error alone), ``kl_pert = KL(p^0_{Y_stop} || p^dA_{Y_stop})`` (the part that the
    ``eps``-terms of the bound control, by the triangle inequality), and the document's error measures,
    computed exactly: ``eps_score^2 = mean_{t=1..T} E|dA X_t|^2 = mean_t [tr(dA Sigma_t dA^T) + |dA m_t|^2]``,
    ``eps_jacobi = ||dA||_op`` (the Jacobian error is constant in ``x`` and ``t``)."""
    from . import laws
    from .metrics import kl_gaussian
    from .targets import AffineScore, DiagonalGaussian
    if name not in S.SAMPLERS:
        raise ValueError(f"name must be one of {tuple(S.SAMPLERS)}, got {name!r}")
    d = target.loc.numel()
    if dA.shape != (d, d):
        raise ValueError(f"dA must be ({d}, {d}), got {tuple(dA.shape)}")
    zero = torch.zeros(d, dtype=dA.dtype, device=dA.device)
    init = DiagonalGaussian(zero, torch.ones_like(zero))
    exact = target.affine_score()
    out0 = laws.law(S.SAMPLERS[name], exact, init, schedule, stop=stop, **opts)
    out = laws.law(S.SAMPLERS[name], exact + AffineScore(lambda lab: (dA, zero)), init, schedule, stop=stop, **opts)
    px = target.marginal(schedule.lab(stop))
    ab = schedule.alphabar[1:schedule.T + 1].mean()
    e2 = ab * ((dA ** 2 * target.var).sum() + ((dA @ target.loc) ** 2).sum()) + (1 - ab) * (dA ** 2).sum()
    return {"kl_target": float(kl_gaussian(px, out)), "kl_exact": float(kl_gaussian(px, out0)),
            "kl_pert": float(kl_gaussian(out0, out)), "eps_score": float(e2.sqrt()),
            "eps_jacobi": float(torch.linalg.matrix_norm(dA, ord=2))}


__all__ += ["stochastic_grid_law", "stochastic_mixture_errors", "dense_perturbation", "coupled_errors"]


# ---------------------------------------------------------------------------------------------------------------
# d-dependence of the discretisation error on a non-product target (Monte Carlo over the source)
# ---------------------------------------------------------------------------------------------------------------
def coupled_mixture(d, *, generator=None, sep=1.5, lam=(0.1, 1.0)):
    """A two-component Gaussian mixture in ``R^d`` that is not a product in any basis: weights ``(0.5, 0.5)``,
    means ``+-sep u`` (``u`` a random unit vector) and covariances ``R_k diag(lambda) R_k^T`` with the spectrum
    ``lambda`` log-spaced in ``lam`` and two independent random rotations ``R_k`` (the components share no
    eigenbasis, so the score couples every coordinate and no rotation splits the law into factors)."""
    from .targets import GaussianMixture
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    u = torch.randn(d, generator=generator, dtype=torch.float64)
    u = u / u.norm()
    spec = torch.logspace(math.log10(lam[0]), math.log10(lam[1]), d, dtype=torch.float64)
    covs = []
    for _ in range(2):
        R, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
        covs.append((R * spec) @ R.T)
    return GaussianMixture(torch.tensor([0.5, 0.5]), torch.stack([sep * u, -sep * u]), torch.stack(covs))


def mixture_errors_mc(name, mixture, schedule, n, *, generator=None, stop=1):
    """``TV(p_{Y_stop}, p_{X_stop})`` of a deterministic sampler on a mixture in any dimension, by Monte Carlo over
    the source ``Z ~ N(0, I)`` with the exact change of variables (:func:`pushforward`):
    ``TV = E_{p_Y}[(1 - p_X(Y) / p_Y(Y))_+]`` with ``p_Y(F(z)) = phi(z) / |det DF(z)|``.  Returns
    ``(tv, standard error, nfe)`` (:func:`tv_mc`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    d = mixture.means.shape[1]
    z = torch.randn(n, d, generator=generator, dtype=torch.float64).to(mixture.means.device)
    y, ld, nfe = pushforward(name, mixture, z, schedule, stop=stop)
    log_pz = -0.5 * (z ** 2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
    tv, se = tv_mc(mixture.log_prob(y, schedule.lab(stop)) + ld - log_pz)
    return tv, se, nfe


__all__ += ["coupled_mixture", "mixture_errors_mc"]
