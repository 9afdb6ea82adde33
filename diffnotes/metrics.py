"""Distances with their direction stated, and a log-log slope fit with its confidence interval.

* ``kl_gaussian(p, q)`` is ``KL(p || q)`` in closed form (``p``, ``q``: :class:`Gaussian` or
  :class:`DiagonalGaussian`); ``hellinger_gaussian`` likewise, with ``H^2 <= TV <= sqrt(2) H``
  (``H^2 = 1 - BC``; TV between Gaussians has no closed form in ``d > 1``).
* ``tv_grid`` / ``kl_grid``: quadrature of two log-densities on a tensor-product grid (low ``d``).
* ``kl_mc``: ``KL(p || q)`` by Monte Carlo over samples of ``p`` with exact log-densities, with its standard
  error.
* ``fit_slope``: least squares of ``log y`` on ``log x`` (optionally removing a known power of ``log x``),
  with a Student-t confidence interval for the exponent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .targets import DiagonalGaussian, Gaussian

__all__ = ["kl_gaussian", "hellinger_gaussian", "tv_grid", "kl_grid", "kl_mc", "fit_slope", "SlopeFit",
           "frechet_distance", "grid"]


def _moments(p):
    if isinstance(p, DiagonalGaussian):
        return p.loc, p.var
    if isinstance(p, Gaussian):
        return p.loc, p.cov
    raise ValueError(f"expected a Gaussian or DiagonalGaussian, got {type(p).__name__}")


def kl_gaussian(p, q):
    """``KL(p || q) = 1/2 [tr(Cq^{-1} Cp) + (mq - mp)^T Cq^{-1} (mq - mp) - d + log det Cq - log det Cp]``."""
    mp, Cp = _moments(p)
    mq, Cq = _moments(q)
    if mp.shape != mq.shape:
        raise ValueError(f"p and q must have the same dimension, got {mp.numel()} and {mq.numel()}")
    dm = mq - mp
    if Cp.ndim == 1 and Cq.ndim == 1:
        r = Cp / Cq
        # sum(r - 1 - log r) is computed stably for r close to 1
        return 0.5 * ((dm ** 2 / Cq).sum() + (r - 1 - torch.log(r)).sum())
    Cp = torch.diag(Cp) if Cp.ndim == 1 else Cp
    Cq = torch.diag(Cq) if Cq.ndim == 1 else Cq
    Lq = torch.linalg.cholesky(Cq)
    Lp = torch.linalg.cholesky(Cp)
    W = torch.linalg.solve_triangular(Lq, Lp, upper=False)     # Lq^{-1} Lp
    z = torch.linalg.solve_triangular(Lq, dm[:, None], upper=False)
    logdet = 2 * (torch.log(torch.diagonal(Lq)).sum() - torch.log(torch.diagonal(Lp)).sum())
    return 0.5 * ((W ** 2).sum() + (z ** 2).sum() - mp.numel() + logdet)


def hellinger_gaussian(p, q):
    """Hellinger distance ``H`` with ``H^2 = 1 - BC(p, q)`` (Bhattacharyya coefficient), so that
    ``H^2 <= TV(p, q) <= sqrt(2) H``."""
    mp, Cp = _moments(p)
    mq, Cq = _moments(q)
    dm = mp - mq
    if Cp.ndim == 1 and Cq.ndim == 1:
        Cm = 0.5 * (Cp + Cq)
        log_bc = (0.25 * torch.log(Cp).sum() + 0.25 * torch.log(Cq).sum() - 0.5 * torch.log(Cm).sum()
                  - 0.125 * (dm ** 2 / Cm).sum())
    else:
        Cp = torch.diag(Cp) if Cp.ndim == 1 else Cp
        Cq = torch.diag(Cq) if Cq.ndim == 1 else Cq
        Cm = 0.5 * (Cp + Cq)
        log_bc = (0.25 * torch.logdet(Cp) + 0.25 * torch.logdet(Cq) - 0.5 * torch.logdet(Cm)
                  - 0.125 * dm @ torch.linalg.solve(Cm, dm))
    return (-torch.expm1(log_bc)).clamp_min(0).sqrt()


def grid(lo, hi, n, d, *, device=None):
    """A tensor-product grid: points ``(n^d, d)`` and the cell volume."""
    ax = torch.linspace(lo, hi, n, dtype=torch.float64, device=device)
    pts = torch.stack(torch.meshgrid(*([ax] * d), indexing="ij"), -1).reshape(-1, d)
    return pts, float(ax[1] - ax[0]) ** d


def tv_grid(logp, logq, cell):
    """``TV(p, q) = 1/2 int |p - q|`` by quadrature from log-densities on grid points with cell volume ``cell``.

    The truncation error is bounded by the mass of ``p`` and ``q`` outside the grid; ``1 - sum p cell`` is
    returned with it as ``(tv, missing_mass_p, missing_mass_q)``."""
    p, q = torch.exp(logp), torch.exp(logq)
    return 0.5 * (p - q).abs().sum() * cell, 1 - p.sum() * cell, 1 - q.sum() * cell


def kl_grid(logp, logq, cell):
    """``KL(p || q) = int p log(p / q)`` by quadrature on a grid (``p`` must vanish where ``q`` does)."""
    p = torch.exp(logp)
    return (p * (logp - logq)).sum() * cell


def kl_mc(logp_x, logq_x):
    """``KL(p || q)`` from log-densities at samples ``x ~ p``: ``(estimate, standard error)``."""
    r = logp_x - logq_x
    return r.mean(), r.std() / math.sqrt(r.numel())


@dataclass
class SlopeFit:
    slope: float
    intercept: float
    ci: tuple[float, float]
    stderr: float
    level: float
    log_power: float = 0.0

    def __str__(self):
        return f"{self.slope:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}] ({int(100 * self.level)}% CI)"

    def predict(self, x):
        x = torch.as_tensor(x, dtype=torch.float64)
        return torch.exp(self.intercept + self.slope * torch.log(x)) * torch.log(x) ** self.log_power


def fit_slope(x, y, *, level=0.95, log_power=0.0):
    """Fit ``y = C x^slope (log x)^log_power`` by least squares on ``log y - log_power log log x`` against
    ``log x``.  The interval is the Student-t interval of the regression slope (``n - 2`` degrees of freedom)."""
    from scipy import stats

    x = torch.as_tensor(x, dtype=torch.float64).flatten().cpu()
    y = torch.as_tensor(y, dtype=torch.float64).flatten().cpu()
    if x.numel() != y.numel() or x.numel() < 3:
        raise ValueError(f"x and y must have the same length >= 3, got {x.numel()} and {y.numel()}")
    if (x <= 0).any() or (y <= 0).any() or not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x and y must be positive and finite for a log-log fit")
    if log_power and (x <= 1).any():
        raise ValueError("x must exceed 1 when a log factor is removed")
    lx = torch.log(x)
    ly = torch.log(y) - log_power * torch.log(lx) if log_power else torch.log(y)
    n = lx.numel()
    xm, ym = lx.mean(), ly.mean()
    sxx = ((lx - xm) ** 2).sum()
    slope = float(((lx - xm) * (ly - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    resid = ly - (intercept + slope * lx)
    s2 = float((resid ** 2).sum()) / (n - 2)
    se = math.sqrt(s2 / float(sxx))
    q = float(stats.t.ppf(0.5 + level / 2, n - 2))
    return SlopeFit(slope, intercept, (slope - q * se, slope + q * se), se, level, log_power)


def frechet_distance(mu1, C1, mu2, C2):
    """Squared Frechet (2-Wasserstein) distance between ``N(mu1, C1)`` and ``N(mu2, C2)``:
    ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^{1/2} C2 C1^{1/2})^{1/2})``."""
    lam, U = torch.linalg.eigh(C1)
    r1 = (U * lam.clamp_min(0).sqrt()) @ U.T
    mid = torch.linalg.eigvalsh(r1 @ C2 @ r1).clamp_min(0).sqrt().sum()
    return ((mu1 - mu2) ** 2).sum() + torch.trace(C1) + torch.trace(C2) - 2 * mid
