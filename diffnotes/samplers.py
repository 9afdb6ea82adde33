"""Unconditional samplers, one function each, in the spirit of k-diffusion's ``sampling.py``.

Shared signature::

    sampler(score, x, schedule, *, generator=None, stop=0, trajectory=False, progress=False, **options)
        -> Samples(x, nfe, trajectory)

* ``score(x, lab)`` is any callable returning ``grad log q_t(x)`` at noise level ``lab = log alphabar_t``
  (exact, from :mod:`diffnotes.targets`, or a network); samplers do not know the difference.
* ``x`` is ``Y_T``, a batch ``(n, d)``; the sampler runs ``t = T, ..., stop + 1`` and returns ``Y_stop``
  (document 002's theorems compare ``p_{X_1}`` with ``p_{Y_1}``: use ``stop=1`` there).
* ``nfe`` counts score evaluations per sample (one batched call is one evaluation).

The updates are written as in the documents, with 002's notation ``alpha_t = 1 - beta_t``, and computed as the same
linear combinations of ``x``, the scores and the noise, with their coefficients precomputed per schedule
(:func:`_table`, for the steps a call runs only) and each combination done in one or two passes
(``torch.add(a, b, alpha=c)``): equal to the documents' formulas to rounding (``tests/test_bench.py``).  The score's
first output is checked (shape, dtype and device those of ``x``); the options are checked by :func:`check_options`'s
checks, which :func:`diffnotes.laws.law` shares.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch

from .params import real
from .schedules import VPSchedule

__all__ = ["Samples", "CountingScore", "ddpm", "ddim", "flow_ode", "accel_ode", "accel_sde", "multistep_ode",
           "SAMPLERS", "DDPM_VARIANCES", "check_options"]

DDPM_VARIANCES = ("beta", "beta_tilde", "beta_over_alpha")


@dataclass
class Samples:
    x: torch.Tensor
    nfe: int
    trajectory: list | None = field(default=None, repr=False)


class CountingScore:
    """Wraps a score and counts its (batched) evaluations: an independent check of the samplers' ``nfe``."""

    def __init__(self, score):
        self.score, self.calls = score, 0

    def __call__(self, x, lab):
        self.calls += 1
        return self.score(x, lab)


def check_schedule_stop(schedule, stop):
    """The checks of ``schedule`` and ``stop`` that every sampler (and :func:`diffnotes.laws.law`) makes."""
    if not isinstance(schedule, VPSchedule):
        raise ValueError(f"schedule must be a VPSchedule, got {type(schedule).__name__}")
    if isinstance(stop, bool) or not isinstance(stop, int) or not 0 <= stop < schedule.T:
        raise ValueError(f"stop must be an integer in [0, T) = [0, {schedule.T}), got {stop!r}")


def _check_variance(variance):
    if not isinstance(variance, str) or variance not in DDPM_VARIANCES:
        raise ValueError(f"variance must be one of {DDPM_VARIANCES}, got {variance!r}")
    return variance


def _check_eta(eta):
    return real("eta", eta, lo=0.0, hi=1.0)


def _check_alpha_factor(alpha_factor):
    if not isinstance(alpha_factor, bool):
        raise ValueError(f"alpha_factor must be True or False, got {alpha_factor!r}")
    return alpha_factor


_OPTION_CHECKS = {"variance": _check_variance, "eta": _check_eta, "alpha_factor": _check_alpha_factor}
_COMMON = ("score", "x", "schedule", "generator", "stop", "trajectory", "progress")


def check_options(sampler, options):
    """Check a sampler's own options (``variance`` of :func:`ddpm`, ``eta`` of :func:`ddim`, ``alpha_factor`` of
    :func:`multistep_ode`) as the sampler itself does: an unknown or misspelled option, or a bad value, is a
    ``ValueError`` naming it.  :func:`diffnotes.laws.law` calls it, so that an exact law accepts exactly what the
    sampler accepts."""
    if sampler not in (*SAMPLERS.values(), multistep_ode):
        raise ValueError(f"sampler must be one of the samplers of diffnotes.samplers, got {sampler!r}")
    allowed = [k for k in inspect.signature(sampler).parameters if k not in _COMMON]
    for k, v in options.items():
        if k not in allowed:
            raise ValueError(f"{sampler.__name__} has no option {k!r} (its options: {allowed or 'none'})")
        _OPTION_CHECKS[k](v)


def _check_score(s, x, name):
    """The score's first output, checked once per run: a tensor like ``x`` (shape, dtype, device).  A score of shape
    ``(d,)``, ``(n, 1)``, ``(1, d)`` or ``()`` would otherwise be broadcast into an ``(n, d)`` result."""
    if not (torch.is_tensor(s) and s.shape == x.shape and s.dtype == x.dtype and s.device == x.device):
        got = (f"shape {tuple(s.shape)}, {s.dtype} on {s.device}" if torch.is_tensor(s) else type(s).__name__)
        raise ValueError(f"{name}: score must return a tensor of shape {tuple(x.shape)}, {x.dtype} on {x.device} "
                         f"(like x), got {got}")


def _setup(x, schedule, stop, generator=None):
    check_schedule_stop(schedule, stop)
    if not torch.is_tensor(x) or x.ndim != 2:
        raise ValueError(f"x must be a (n, d) tensor, got {tuple(x.shape) if torch.is_tensor(x) else type(x)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not math.isfinite(x.detach().sum()) and not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (no NaN or inf entries)")
    if generator is not None and torch.device(generator.device).type != x.device.type:
        raise ValueError(f"generator is on {generator.device} but x is on {x.device}")
    if schedule.device != x.device:
        schedule = schedule.to(x.device)
    return schedule


def _noise(x, generator):
    return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def _steps(schedule, stop, progress, desc):
    ts = range(schedule.T, stop, -1)
    if progress:
        from tqdm.auto import tqdm
        return tqdm(ts, desc=desc, leave=False)
    return ts


def _floats(v, lo):
    """Per-step coefficients ``v[lo:]`` as Python floats (exact copies of the float64 values): multiplying a tensor
    by a Python float gives the same numbers as by the 0-d tensor ``v[t]`` without one indexing op per coefficient
    per step (the per-step cost that dominates at small batch).  Entry ``i`` is step ``t = lo + i``."""
    return v[lo:].tolist()


def _labs(sch, lo):
    """The noise levels ``log alphabar_t``, ``t >= lo``, as 0-d tensors (views), entry ``i`` for ``t = lo + i``."""
    return sch.log_alphabar[lo:].unbind(0)


TABLE_BUDGET = 1 << 14      # table entries (steps) kept per schedule, all samplers' tables together


def _table(sch, key, lo, make):
    """A sampler's per-step coefficients on one schedule for the steps ``t >= lo`` that a call runs: ``make(lo)``
    computes the coefficient vectors on the whole schedule (float64 tensors, 8 bytes a step, freed after; computed
    whole so that every entry is the same number whatever ``lo``) and converts only the entries ``t >= lo`` into
    Python objects (about 0.75 KiB a step).  Tables are kept on the schedule (schedules are not modified after
    construction; ``to(device)`` and ``subsample`` make new ones) up to :data:`TABLE_BUDGET` entries in all, the
    oldest dropped first, so that a repeated short call skips the O(T) set-up (at batch 1e2 and 10 steps it was
    90-150 us of a 500 us call), while a long run's table, whose set-up is a small part of the run, is not kept."""
    tables = sch.__dict__.setdefault("_sampler_tables", {})
    key = (*key, lo)
    if key in tables:
        return tables[key][1]
    tab, n = make(lo), sch.T + 2 - lo
    if n <= TABLE_BUDGET:
        while tables and sum(m for m, _ in tables.values()) + n > TABLE_BUDGET:
            del tables[next(iter(tables))]
        tables[key] = (n, tab)
    return tab


def _check_finite(x, t, name):
    # One reduction: the sum is finite iff every entry is (NaN and +-inf propagate through it), unless finite entries
    # overflow it; the exact elementwise test then decides.  (isfinite(x).all() alone writes and rereads a boolean
    # tensor the size of x: 14-20 ms at 2e6 entries.)
    if not math.isfinite(x.detach().sum()) and not torch.isfinite(x).all():
        raise FloatingPointError(f"{name}: non-finite values at step t = {t}")


def ddpm(score, x, schedule, *, variance="beta", generator=None, stop=0, trajectory=False, progress=False):
    """Ancestral DDPM (Ho et al. 2020; 002's stochastic sampler):

    ``Y_{t-1} = (Y_t + beta_t s_t(Y_t)) / sqrt(alpha_t) + sigma_t Z``, with ``sigma_t^2`` one of
    ``"beta"`` (``beta_t``), ``"beta_tilde"`` (``beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)``) or
    ``"beta_over_alpha"`` (``(1 - alpha_t) / alpha_t``, as written in 002 and 000)."""
    sch = _setup(x, schedule, stop, generator)
    _check_variance(variance)

    def make(lo):
        var = {"beta": sch.beta, "beta_tilde": sch.beta_tilde, "beta_over_alpha": sch.beta / sch.alpha}[variance]
        return (*(_floats(v, lo) for v in (torch.exp(-0.5 * sch.log_alpha), sch.beta, var.sqrt())), _labs(sch, lo))
    lo = stop + 1
    rsa, beta, sd, lab = _table(sch, ("ddpm", variance), lo, make)
    traj = [x] if trajectory else None
    for t in _steps(sch, stop, progress, "DDPM"):
        i = t - lo
        s = score(x, lab[i])
        if t == sch.T:
            _check_score(s, x, "ddpm")
        y = torch.add(x, s, alpha=beta[i])
        x = y.mul_(rsa[i]).add_(_noise(x, generator), alpha=sd[i])
        _check_finite(x, t, "ddpm")
        if trajectory:
            traj.append(x)
    return Samples(x, sch.T - stop, traj)


def ddim(score, x, schedule, *, eta=0.0, generator=None, stop=0, trajectory=False, progress=False):
    """DDIM (Song, Meng, Ermon 2021) with stochasticity ``eta`` (0: deterministic; 1: DDPM with beta-tilde):

    ``x0 = (x + (1 - ab_t) s) / sqrt(ab_t)``, ``eps = -sqrt(1 - ab_t) s``,
    ``x_{t-1} = sqrt(ab_{t-1}) x0 + sqrt(1 - ab_{t-1} - sigma^2) eps + sigma Z``,
    ``sigma^2 = eta^2 beta_t (1 - ab_{t-1}) / (1 - ab_t)``.  Works on any (sub-sampled) schedule."""
    eta = _check_eta(eta)
    sch = _setup(x, schedule, stop, generator)

    def make(lo):
        lab, omab = sch.log_alphabar, sch.one_minus_alphabar
        # x_{t-1} = sqrt(ab_{t-1}) x0 + c_t eps = A_t x + B_t s, with x0 = (x + (1 - ab_t) s) / sqrt(ab_t),
        # eps = -sqrt(1 - ab_t) s, c_t = sqrt(1 - ab_{t-1} - sigma_t^2) = sqrt((1 - ab_{t-1}) (1 - eta^2 beta_t /
        # (1 - ab_t))): A_t = sqrt(ab_{t-1} / ab_t), B_t = A_t (1 - ab_t) - c_t sqrt(1 - ab_t)  (index 0 unused)
        c = (omab[:-1] * (1 - eta ** 2 * sch.beta[1:] / omab[1:])).clamp_min(0).sqrt()
        A = torch.exp(0.5 * (lab[:-1] - lab[1:]))
        B = A * omab[1:] - c * omab[1:].sqrt()
        pad = omab.new_zeros(1)
        return (*(_floats(torch.cat([pad, v]), lo) for v in (A, B)), _floats((eta ** 2 * sch.beta_tilde).sqrt(), lo),
                _labs(sch, lo))
    lo = stop + 1
    A, B, sd, labs = _table(sch, ("ddim", eta), lo, make)
    traj = [x] if trajectory else None
    for t in _steps(sch, stop, progress, "DDIM"):
        i = t - lo
        s = score(x, labs[i])
        if t == sch.T:
            _check_score(s, x, "ddim")
        x = torch.add(x * A[i], s, alpha=B[i])
        if eta > 0:
            x.add_(_noise(x, generator), alpha=sd[i])
        _check_finite(x, t, "ddim")
        if trajectory:
            traj.append(x)
    return Samples(x, sch.T - stop, traj)


def flow_ode(score, x, schedule, *, generator=None, stop=0, trajectory=False, progress=False):
    """The deterministic (probability-flow ODE) sampler of 002, Theorem 1, eq. (1):

    ``Y_{t-1} = (Y_t + (beta_t / 2) s_t(Y_t)) / sqrt(1 - beta_t)``."""
    sch = _setup(x, schedule, stop)
    lo = stop + 1
    rsa, half_beta, lab = _table(sch, ("flow_ode",), lo, lambda lo: (
        _floats(torch.exp(-0.5 * sch.log_alpha), lo), _floats(0.5 * sch.beta, lo), _labs(sch, lo)))
    traj = [x] if trajectory else None
    for t in _steps(sch, stop, progress, "flow ODE"):
        i = t - lo
        s = score(x, lab[i])
        if t == sch.T:
            _check_score(s, x, "flow_ode")
        x = torch.add(x, s, alpha=half_beta[i]).mul_(rsa[i])
        _check_finite(x, t, "flow_ode")
        if trajectory:
            traj.append(x)
    return Samples(x, sch.T - stop, traj)


def _accel_table(sch, lo):
    """Coefficients of the accelerated ODE samplers: ``sqrt(alpha_t)``, ``1 / sqrt(alpha_t)``, ``beta_t / 2``,
    ``k_t = beta_t^2 / (4 beta_{t+1})`` and the noise levels."""
    la, beta = sch.log_alpha, sch.beta
    k = torch.cat([beta[:-1] ** 2 / (4 * beta[1:]), beta.new_zeros(1)])
    return (*(_floats(v, lo) for v in (torch.exp(0.5 * la), torch.exp(-0.5 * la), 0.5 * beta, k)), _labs(sch, lo))


def accel_ode(score, x, schedule, *, generator=None, stop=0, trajectory=False, progress=False):
    """The accelerated deterministic sampler of 002, Theorem 2, eq. (2), exactly as written there:

    ``Y_t^- = sqrt(alpha_{t+1}) (Y_t - (1 - alpha_{t+1})/2 s_t(Y_t))`` (an estimate of ``Y_{t+1}``),
    ``Y_{t-1} = (Y_t + (1 - alpha_t)/2 s_t(Y_t)
    + (1 - alpha_t)^2 / (4 (1 - alpha_{t+1})) (s_t(Y_t) - sqrt(alpha_{t+1}) s_{t+1}(Y_t^-))) / sqrt(alpha_t)``.

    Two score evaluations per step; at ``t = T`` it reads ``alpha_{T+1}`` (the schedule's extra step)."""
    sch = _setup(x, schedule, stop)
    lo = stop + 1
    sa, rsa, half_beta, k, lab = _table(sch, ("accelerated",), lo, lambda lo: _accel_table(sch, lo))
    traj = [x] if trajectory else None
    for t in _steps(sch, stop, progress, "accelerated ODE"):
        i = t - lo
        s = score(x, lab[i])
        if t == sch.T:
            _check_score(s, x, "accel_ode")
        s_next = score(torch.add(x, s, alpha=-half_beta[i + 1]).mul_(sa[i + 1]), lab[i + 1])      # at Y_t^-
        # (Y_t + beta_t / 2 s + k_t (s - sqrt(alpha_{t+1}) s_next)) / sqrt(alpha_t)
        x = torch.add(x, s, alpha=half_beta[i] + k[i]).add_(s_next, alpha=-k[i] * sa[i + 1]).mul_(rsa[i])
        _check_finite(x, t, "accel_ode")
        if trajectory:
            traj.append(x)
    return Samples(x, 2 * (sch.T - stop), traj)


def accel_sde(score, x, schedule, *, generator=None, stop=0, trajectory=False, progress=False):
    """The accelerated stochastic sampler of 002, Theorem 3, eq. (3):

    ``Y_t^+ = Y_t + sqrt((1 - alpha_t)/2) Z_t``,
    ``Y_{t-1} = (Y_t^+ + (1 - alpha_t) s_t(Y_t^+) + sqrt((1 - alpha_t)/2) Z_t^+) / sqrt(alpha_t)``.

    One score evaluation per step."""
    sch = _setup(x, schedule, stop, generator)
    lo = stop + 1
    rsa, beta, half_sd, lab = _table(sch, ("accel_sde",), lo, lambda lo: (
        *(_floats(v, lo) for v in (torch.exp(-0.5 * sch.log_alpha), sch.beta, (0.5 * sch.beta).sqrt())),
        _labs(sch, lo)))
    traj = [x] if trajectory else None
    for t in _steps(sch, stop, progress, "accelerated SDE"):
        i = t - lo
        xp = torch.add(x, _noise(x, generator), alpha=half_sd[i])
        s = score(xp, lab[i])
        if t == sch.T:
            _check_score(s, x, "accel_sde")
        y = torch.add(xp, s, alpha=beta[i])
        x = y.add_(_noise(x, generator), alpha=half_sd[i]).mul_(rsa[i])
        _check_finite(x, t, "accel_sde")
        if trajectory:
            traj.append(x)
    return Samples(x, sch.T - stop, traj)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "flow_ode": flow_ode, "accel_ode": accel_ode, "accel_sde": accel_sde}


def multistep_ode(score, x, schedule, *, alpha_factor=True, generator=None, stop=0, trajectory=False,
                  progress=False):
    """A multistep form of 002's accelerated ODE (one score evaluation per step): the score at the
    previous iterate ``Y_{t+1}`` replaces the extra evaluation at the midpoint ``Y_t^-`` of Theorem 2's eq. (2),

    ``Y_{t-1} = (Y_t + (1 - alpha_t)/2 s_t(Y_t) + (1 - alpha_t)^2 / (4 (1 - alpha_{t+1})) (s_t(Y_t) - f s_{t+1}(Y_{t+1})))
    / sqrt(alpha_t)``,

    with ``f = sqrt(alpha_{t+1})`` (the "Ours" update of 002, ``alpha_factor=True``) or ``f = 1``
    (``alpha_factor=False``: an update that 002 never prints -- its "Scheme 2" line is the interpolation of the
    score along the path, not an update -- and which chapter 02 finds to be first order).  The first step (no ``Y_{t+1}`` yet) is the flow-ODE step."""
    _check_alpha_factor(alpha_factor)
    sch = _setup(x, schedule, stop)
    lo = stop + 1
    sa, rsa, half_beta, k, lab = _table(sch, ("accelerated",), lo, lambda lo: _accel_table(sch, lo))
    traj = [x] if trajectory else None
    s_prev = None
    for t in _steps(sch, stop, progress, "multistep ODE"):
        i = t - lo
        s = score(x, lab[i])
        if s_prev is None:
            _check_score(s, x, "multistep_ode")
            x = torch.add(x, s, alpha=half_beta[i]).mul_(rsa[i])
        else:   # (Y_t + beta_t / 2 s + k_t (s - f s_prev)) / sqrt(alpha_t)
            f = sa[i + 1] if alpha_factor else 1.0
            x = torch.add(x, s, alpha=half_beta[i] + k[i]).add_(s_prev, alpha=-k[i] * f).mul_(rsa[i])
        s_prev = s
        _check_finite(x, t, "multistep_ode")
        if trajectory:
            traj.append(x)
    return Samples(x, sch.T - stop, traj)

