"""Exact output laws of the samplers when the score is affine.

With ``s_t(x) = A_t x + b_t`` (the exact score of a Gaussian target, possibly plus an affine perturbation)
every sampler of :mod:`diffnotes.samplers` is, step by step, an affine map plus independent Gaussian noise::

    C <- C + q_pre I;   m <- M m + c;   C <- M C M^T;   C <- C + q_post I

so the law of its output is Gaussian and is propagated exactly (no Monte Carlo).  The maps below are derived
from the update formulas independently of the sampler code; the tests check both against each other.

Diagonal coefficients and a diagonal initial covariance are kept diagonal (``O(d)`` per step, any ``d``);
otherwise full ``(d, d)`` matrices are used (``O(d^3)`` per step, fine up to ``d`` of a few hundred).
The multistep scheme :func:`~diffnotes.samplers.multistep_ode` reads the previous iterate too; deterministic, it is
tracked as an affine map of ``Y_T`` (:func:`_multistep_law`).  This module is the one implementation of the exact
laws: chapter 02's rate measurements call it with a diagonal target in its eigenbasis.
"""
from __future__ import annotations

import torch

from . import samplers as S
from .targets import AffineScore, DiagonalGaussian, Gaussian

__all__ = ["law", "step_maps"]


def _full(A, d):
    return torch.diag(A) if A.ndim == 1 else A


def _mm(P, Q):
    if P.ndim == 1 and Q.ndim == 1:
        return P * Q
    d = P.shape[0]
    return _full(P, d) @ _full(Q, d)


def _mv(M, v):
    return M * v if M.ndim == 1 else M @ v


def _eye(A):
    return torch.ones_like(A) if A.ndim == 1 else torch.eye(A.shape[0], dtype=A.dtype, device=A.device)


def step_maps(sampler, score, schedule, t, **options):
    """``(M, c, q_pre, q_post)`` of one step ``t -> t - 1`` of ``sampler`` with affine ``score``."""
    sch = schedule
    la, lab, beta = sch.log_alpha, sch.log_alphabar, sch.beta
    rsa = torch.exp(-0.5 * la[t])
    A, b = score.coeffs(lab[t])
    I = _eye(A)
    zero = beta.new_zeros(())
    if sampler is S.ddpm:
        variance = options.get("variance", "beta")
        q = {"beta": beta[t], "beta_tilde": sch.beta_tilde[t], "beta_over_alpha": beta[t] / sch.alpha[t]}[variance]
        return rsa * (I + beta[t] * A), rsa * beta[t] * b, zero, q
    if sampler is S.ddim:
        eta = options.get("eta", 0.0)
        omab = sch.one_minus_alphabar
        c_eps = (omab[t - 1] * (1 - eta ** 2 * beta[t] / omab[t])).clamp_min(0).sqrt()
        g = rsa * omab[t] - c_eps * omab[t].sqrt()
        return rsa * I + g * A, g * b, zero, eta ** 2 * sch.beta_tilde[t]
    if sampler is S.flow_ode:
        return rsa * (I + 0.5 * beta[t] * A), rsa * 0.5 * beta[t] * b, zero, zero
    if sampler is S.accel_ode:
        A1, b1 = score.coeffs(lab[t + 1])
        if A1.ndim != A.ndim:
            A, A1, I = _full(A, 0), _full(A1, 0), torch.eye(b.numel(), dtype=b.dtype, device=b.device)
        sa1, bt1 = torch.exp(0.5 * la[t + 1]), beta[t + 1]
        k = beta[t] ** 2 / (4 * bt1)
        # y^- = sa1 ((I - bt1/2 A) x - bt1/2 b);  s' = A1 y^- + b1
        My, cy = sa1 * (I - 0.5 * bt1 * A), -sa1 * 0.5 * bt1 * b
        M = rsa * (I + (0.5 * beta[t] + k) * A - k * sa1 * _mm(A1, My))
        c = rsa * ((0.5 * beta[t] + k) * b - k * sa1 * (_mv(A1, cy) + b1))
        return M, c, zero, zero
    if sampler is S.accel_sde:
        return rsa * (I + beta[t] * A), rsa * beta[t] * b, 0.5 * beta[t], rsa ** 2 * 0.5 * beta[t]
    raise ValueError(f"sampler: no exact law for {getattr(sampler, '__name__', sampler)!r}")


def law(sampler, score, init, schedule, *, stop=0, **options):
    """Exact law of ``sampler(score, Y_T, schedule, stop=stop, **options).x`` for ``Y_T ~ init``.

    ``score`` must be an :class:`~diffnotes.targets.AffineScore`; ``init`` a :class:`Gaussian` or
    :class:`DiagonalGaussian`.  Returns a :class:`DiagonalGaussian` when everything stays diagonal, else a
    :class:`Gaussian`."""
    if not isinstance(score, AffineScore):
        raise ValueError("score must be an AffineScore (e.g. target.affine_score()) for an exact law")
    S.check_schedule_stop(schedule, stop)       # the samplers' own checks: the law accepts what the sampler does
    S.check_options(sampler, options)
    if isinstance(init, DiagonalGaussian):
        m, C = init.loc, init.var
    elif isinstance(init, Gaussian):
        m, C = init.loc, init.cov
    else:
        raise ValueError(f"init must be a Gaussian or DiagonalGaussian, got {type(init).__name__}")
    b = score.coeffs(schedule.lab(schedule.T))[1]
    if b.shape != m.shape:
        raise ValueError(f"init has dimension {m.numel()} but the score's offset b has shape {tuple(b.shape)}")
    sch = schedule.to(m.device) if schedule.device != m.device else schedule
    if sampler is S.multistep_ode:
        return _multistep_law(score, m, C, sch, stop, options.get("alpha_factor", True))
    for t in range(sch.T, stop, -1):
        M, c, q_pre, q_post = step_maps(sampler, score, sch, t, **options)
        if M.ndim == 2 and C.ndim == 1:
            C = torch.diag(C)
        if C.ndim == 1:
            C = C + q_pre
            m, C = M * m + c, M * M * C + q_post
        else:
            d = C.shape[0]
            M = _full(M, d)
            I = torch.eye(d, dtype=C.dtype, device=C.device)
            C = C + q_pre * I
            m, C = M @ m + c, M @ C @ M.T + q_post * I
            C = 0.5 * (C + C.T)
    return DiagonalGaussian(m, C) if C.ndim == 1 else Gaussian(m, C)


def _multistep_law(score, m, C, sch, stop, alpha_factor):
    """Exact law of :func:`~diffnotes.samplers.multistep_ode`: ``Y_t = P_t Y_T + c_t`` is tracked (with the previous
    ``P_{t+1}, c_{t+1}``, which the scheme reads), then ``N(P m + c, P C P^T)``.  Diagonal while everything is."""
    la, lab, beta = sch.log_alpha, sch.log_alphabar, sch.beta
    P = torch.ones_like(m) if C.ndim == 1 else torch.eye(m.numel(), dtype=m.dtype, device=m.device)
    c, prev = torch.zeros_like(m), None
    for t in range(sch.T, stop, -1):
        A, b = score.coeffs(lab[t])
        if A.ndim == 2 and P.ndim == 1:
            P, prev = torch.diag(P), None if prev is None else (torch.diag(prev[0]), prev[1])
        sP, sc = _mm(A, P), _mv(A, c) + b                       # s_t(Y_t) as an affine map of Y_T
        rsa = torch.exp(-0.5 * la[t])
        if prev is None:                                        # first step: the flow-ODE step
            nP, nc = rsa * (P + 0.5 * beta[t] * sP), rsa * (c + 0.5 * beta[t] * sc)
        else:
            A1, b1 = score.coeffs(lab[t + 1])
            f = torch.exp(0.5 * la[t + 1]) if alpha_factor else 1.0
            k = beta[t] ** 2 / (4 * beta[t + 1])
            s1P, s1c = _mm(A1, prev[0]), _mv(A1, prev[1]) + b1  # s_{t+1}(Y_{t+1})
            nP = rsa * (P + (0.5 * beta[t] + k) * sP - k * f * s1P)
            nc = rsa * (c + (0.5 * beta[t] + k) * sc - k * f * s1c)
        prev, P, c = (P, c), nP, nc
    if P.ndim == 1 and C.ndim == 1:
        return DiagonalGaussian(P * m + c, P * P * C)
    P = _full(P, 0)
    Cf = torch.diag(C) if C.ndim == 1 else C
    cov = P @ Cf @ P.T
    return Gaussian(P @ m + c, 0.5 * (cov + cov.T))
