"""Variance-preserving noise schedules.

A schedule is stored by its per-step ``log alpha_t = log(1 - beta_t)`` for ``t = 1..T`` (and one extra step
``T + 1``, which Theorem 2 of document 002 reads at ``t = T``).  Everything else is derived stably from it:

* ``beta_t = -expm1(log alpha_t)`` (never ``1 - (1 - beta)``),
* ``log alphabar_t = sum_{s <= t} log alpha_s``,
* ``1 - alphabar_t = -expm1(log alphabar_t)``.

Arrays are indexed by the step ``t`` itself: index 0 is ``t = 0`` (``alphabar_0 = 1``, ``beta_0 = 0``) and
index ``T`` is the last noising step.  The time argument of every score and target method in the package is
the *noise level* ``lab = log alphabar_t``.
"""
from __future__ import annotations

import math

import torch

from .params import integer, real, tensor

__all__ = ["VPSchedule", "linear", "cosine", "theory", "ou", "from_alphabar"]

DEFAULT_MAX_ALPHABAR_T = 1e-3


class VPSchedule:
    """A discrete variance-preserving schedule ``x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps``.

    Parameters
    ----------
    log_alpha:
        1-D tensor of ``log alpha_t`` for ``t = 1..T`` (all strictly negative, finite).
    log_alpha_next:
        ``log alpha_{T+1}``, the step after the last one (Theorem 2 of 002 uses it).  Defaults to
        ``log_alpha[-1]``.
    max_alphabar_T:
        ``alphabar_T`` must not exceed this, or the schedule "never reaches noise" and a ``ValueError``
        is raised.  Pass ``None`` to opt out explicitly (e.g. for sub-schedules of a noising process).
    name:
        a label for plots and tables.
    """

    def __init__(self, log_alpha, *, log_alpha_next=None, max_alphabar_T=DEFAULT_MAX_ALPHABAR_T, name="",
                 device=None):
        la = tensor("log_alpha", log_alpha, device=_device(device), finite=False)
        if la.ndim != 1 or la.numel() < 1:
            raise ValueError(f"log_alpha must be a non-empty 1-D tensor, got shape {tuple(la.shape)}")
        if not torch.isfinite(la).all() or (la >= 0).any():
            raise ValueError("log_alpha must be finite and strictly negative (0 < beta_t < 1) at every step")
        if log_alpha_next is None:
            log_alpha_next = la[-1]
        nxt = tensor("log_alpha_next", log_alpha_next, device=la.device, finite=False)
        if nxt.numel() != 1 or not torch.isfinite(nxt).all() or (nxt >= 0).any():
            raise ValueError("log_alpha_next must be finite and strictly negative")
        nxt = nxt.reshape(1)
        if max_alphabar_T is not None:
            real("max_alphabar_T", max_alphabar_T, lo=0.0, hi=1.0, lo_open=True)
        self.name = name
        self.T = la.numel()
        # index 0 is t = 0; index T + 1 is the extra step.
        self.log_alpha = torch.cat([la.new_zeros(1), la, nxt])
        self.log_alphabar = torch.cumsum(self.log_alpha, 0)
        if max_alphabar_T is not None:
            abT = float(self.alphabar[self.T])
            if not abT <= max_alphabar_T:
                raise ValueError(
                    f"schedule {name!r} never reaches noise: alphabar_T = {abT:.3g} > max_alphabar_T = "
                    f"{max_alphabar_T:g} (raise T, change the schedule's constants, or pass max_alphabar_T=None)")

    # ---- derived quantities, all indexed by t = 0 .. T + 1 -------------------------------------------------
    @property
    def device(self):
        return self.log_alpha.device

    @property
    def beta(self):
        return -torch.expm1(self.log_alpha)

    @property
    def alpha(self):
        return torch.exp(self.log_alpha)

    @property
    def alphabar(self):
        return torch.exp(self.log_alphabar)

    @property
    def one_minus_alphabar(self):
        return -torch.expm1(self.log_alphabar)

    @property
    def sigma(self):
        """``sqrt(1 - alphabar_t)``: the noise scale of ``x_t`` given ``x_0``."""
        return self.one_minus_alphabar.sqrt()

    @property
    def beta_tilde(self):
        """Posterior variance ``beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)`` of ``q(x_{t-1} | x_t, x_0)``.

        Index 0 is set to 0; index 1 is 0 too (``alphabar_0 = 1``)."""
        omab = self.one_minus_alphabar
        bt = torch.zeros_like(omab)
        bt[1:] = self.beta[1:] * omab[:-1] / omab[1:]
        return bt

    def lab(self, t):
        """Noise level ``log alphabar_t`` of step ``t = 0 .. T + 1`` (0-d tensor)."""
        if not (isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= self.T + 1):
            integer("t", t, lo=0, hi=self.T + 1)
        return self.log_alphabar[t]

    def subsample(self, steps, *, name=None):
        """The schedule seen by a sampler that visits only ``0 = steps[0] < steps[1] < ... < steps[-1] <= T``.

        Its step ``i`` jumps from ``steps[i]`` to ``steps[i-1]``: ``log alpha'_i`` is the sum of the skipped
        ``log alpha_t`` (exact; no subtraction of cumulative sums).
        """
        s = tensor("steps", steps).cpu()
        if not bool((s == s.round()).all()):
            raise ValueError(f"steps must be integers, got {s.tolist()}")
        s = s.long()
        if s.ndim != 1 or s.numel() < 2 or int(s[0]) != 0 or (s[1:] <= s[:-1]).any() or int(s[-1]) > self.T:
            raise ValueError(f"steps must increase strictly from 0 to at most T = {self.T}, got {s.tolist()}")
        la = torch.stack([self.log_alpha[a + 1:b + 1].sum() for a, b in zip(s[:-1].tolist(), s[1:].tolist())])
        return VPSchedule(la, max_alphabar_T=None, name=name or f"{self.name}[{len(s) - 1} steps]")

    def to(self, device):
        device = _device(device)
        out = object.__new__(VPSchedule)
        out.__dict__.update({k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()
                             if k != "_sampler_tables"})          # samplers' cached coefficients (device-bound)
        return out

    def __repr__(self):
        return (f"VPSchedule(name={self.name!r}, T={self.T}, beta_1={float(self.beta[1]):.3g}, "
                f"beta_T={float(self.beta[self.T]):.3g}, alphabar_T={float(self.alphabar[self.T]):.3g})")


def _device(device):
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: unknown device {device!r}") from e


def _check_T(T):
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer number of steps, got {T!r}")


def from_betas(betas, *, beta_next=None, **kw):
    """Schedule from ``beta_1..beta_T`` (and optionally ``beta_{T+1}``)."""
    b = tensor("betas", betas, finite=False)
    if b.ndim != 1 or b.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(b.shape)}")
    if not ((b > 0) & (b < 1)).all():
        raise ValueError("betas must lie in (0, 1)")
    nxt = None if beta_next is None else torch.log1p(-tensor("beta_next", beta_next, finite=False))
    if nxt is not None and not (nxt.numel() == 1 and bool(torch.isfinite(nxt).all()) and bool((nxt < 0).all())):
        raise ValueError(f"beta_next must be a number in (0, 1), got {beta_next!r}")
    return VPSchedule(torch.log1p(-b), log_alpha_next=nxt, **kw)


def from_alphabar(alphabar, **kw):
    """Schedule from ``alphabar_1..alphabar_T`` (strictly decreasing, in (0, 1))."""
    ab = tensor("alphabar", alphabar, finite=False)
    if ab.ndim != 1 or ab.numel() < 1 or not bool(((ab > 0) & (ab < 1)).all()) or \
            not bool((ab[1:] < ab[:-1]).all()):
        raise ValueError("alphabar must be a non-empty 1-D tensor decreasing strictly within (0, 1)")
    lab = torch.log(ab)
    la = torch.diff(lab, prepend=lab.new_zeros(1))
    return VPSchedule(la, **kw)


def linear(T, beta_start=1e-4, beta_end=0.02, *, scale_with_T=True, **kw):
    """DDPM's linear schedule.  With ``scale_with_T`` (default) the end points are multiplied by ``1000 / T``
    as in Improved DDPM, so that every ``T`` reaches about the same ``alphabar_T``."""
    _check_T(T)
    real("beta_start", beta_start, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    real("beta_end", beta_end, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if not isinstance(scale_with_T, bool):
        raise ValueError(f"scale_with_T must be True or False, got {scale_with_T!r}")
    s = 1000.0 / T if scale_with_T else 1.0
    lo, hi = beta_start * s, beta_end * s
    if not hi < 1:
        raise ValueError(f"T = {T} is too small for the scaled linear schedule (beta_end * 1000 / T = {hi:g} >= 1); "
                         "use a larger T or scale_with_T=False")
    b = torch.linspace(lo, hi, T, dtype=torch.float64)
    nxt = min(hi + (hi - lo) / max(T - 1, 1), 0.999)
    return from_betas(b, beta_next=nxt, name=kw.pop("name", f"linear(T={T})"), **kw)


def cosine(T, s=0.008, max_beta=0.999, **kw):
    """Nichol & Dhariwal's cosine schedule, ``alphabar(t) = f(t) / f(0)``, ``f(t) = cos^2((t/T + s)/(1 + s) pi/2)``;
    betas are clipped at ``max_beta``."""
    _check_T(T)
    real("s", s, lo=0.0)
    real("max_beta", max_beta, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    t = torch.arange(T + 1, dtype=torch.float64)
    logf = 2 * torch.log(torch.cos((t / T + s) / (1 + s) * math.pi / 2).clamp_min(1e-300))
    la = (logf[1:] - logf[:-1]).clamp(min=math.log1p(-max_beta))
    # beyond t = T the cosine schedule is undefined; its clipped value max_beta serves as beta_{T+1}
    return VPSchedule(la, log_alpha_next=math.log1p(-max_beta), name=kw.pop("name", f"cosine(T={T})"), **kw)


def theory(T, c0=2.0, c1=4.0, **kw):
    """The schedule of document 002: ``beta_1 = T^{-c0}``,
    ``beta_t = (c1 log T / T) min{beta_1 (1 + c1 log T / T)^t, 1}`` for ``t >= 2`` (and ``t = T + 1``).

    The document's formula at ``t = 1`` gives ``(c1 log T / T) beta_1 (1 + c1 log T / T)``, which contradicts
    ``beta_1 = T^{-c0}``; we keep ``beta_1 = T^{-c0}`` and use the formula for ``t >= 2`` (errata page).
    ``beta_1 (1 + c1 log T/T)^t`` reaches 1 at ``t ~ T c0 / c1``: the flat phase exists only for ``c1 > c0``,
    and then ``alphabar_T ~ T^{-(c1 - c0)}``.
    """
    _check_T(T)
    if T < 2:
        raise ValueError("T must be at least 2 for the theory schedule")
    real("c0", c0, lo=0.0, lo_open=True)
    real("c1", c1, lo=0.0, lo_open=True)
    h = c1 * math.log(T) / T
    t = torch.arange(1, T + 2, dtype=torch.float64)
    log_growth = -c0 * math.log(T) + t * math.log1p(h)          # log(beta_1 (1 + h)^t)
    b = h * torch.exp(log_growth.clamp(max=0.0))
    b[0] = float(T) ** (-c0)
    if not (b < 1).all():
        raise ValueError(f"c1 log T / T = {h:.3g} must be < 1 (T too small for c1 = {c1})")
    return from_betas(b[:T], beta_next=b[T], name=kw.pop("name", f"theory(T={T}, c0={c0}, c1={c1})"), **kw)


def ou(eps, t_end, **kw):
    """The Ornstein-Uhlenbeck discretisation of document 001: ``Z_t = e^{-eps} Z_{t-eps} + sqrt(1 - e^{-2 eps}) W``
    on ``[0, t_end]`` with step ``eps``: ``log alpha = -2 eps`` per step, ``alphabar(t) = e^{-2t}``."""
    real("eps", eps, lo=0.0, lo_open=True)
    real("t_end", t_end, lo=0.0, lo_open=True)
    n = round(t_end / eps)
    if n < 1 or abs(n * eps - t_end) > 1e-9 * t_end:
        raise ValueError(f"t_end = {t_end} must be a whole number of steps eps = {eps}")
    la = torch.full((n,), -2.0 * eps, dtype=torch.float64)
    return VPSchedule(la, name=kw.pop("name", f"ou(eps={eps}, t_end={t_end})"), **kw)
