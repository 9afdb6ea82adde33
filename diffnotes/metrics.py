"""Distances with their direction stated, and a log-log slope fit with its confidence interval.

* ``kl_gaussian(p, q)`` is ``KL(p || q)`` in closed form (``p``, ``q``: :class:`Gaussian` or
  :class:`DiagonalGaussian`); ``hellinger_gaussian`` likewise, with ``H^2 <= TV <= sqrt(2) H``
  (``H^2 = 1 - BC``; TV between Gaussians has no closed form in ``d > 1``).
* ``tv_grid`` / ``kl_grid``: quadrature of two log-densities on a tensor-product grid (low ``d``).
* ``kl_mc``: ``KL(p || q)`` by Monte Carlo over samples of ``p`` with exact log-densities, with its standard
  error.
* ``knn_entropy`` / ``kl_knn``: the Kozachenko-Leonenko k-nearest-neighbour entropy of a sample and, with an exact
  log-density ``log p``, ``KL(q || p) = -H(q) - E_q[log p]`` from samples of ``q`` alone (batch-means error bar).
* ``kde_logpdf`` / ``kl_kde``: a Gaussian kernel density estimate with Scott's or Silverman's bandwidth (as
  ``scipy.stats.gaussian_kde``) and the plug-in ``KL(p || q_KDE)`` built on it.
* ``fit_slope``: least squares of ``log y`` on ``log x`` (optionally removing a known power of ``log x``),
  with a Student-t confidence interval for the exponent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .params import integer, real, tensor
from .targets import DiagonalGaussian, Gaussian

__all__ = ["kl_gaussian", "kl_gaussian_or_inf", "hellinger_gaussian", "tv_grid", "kl_grid", "kl_mc", "fit_slope", "SlopeFit",
           "frechet_distance", "grid", "knn_entropy", "kl_knn", "kde_logpdf", "kl_kde"]


def _moments(p, name="p"):
    if isinstance(p, DiagonalGaussian):
        return p.loc, p.var
    if isinstance(p, Gaussian):
        return p.loc, p.cov
    raise ValueError(f"{name} must be a Gaussian or DiagonalGaussian, got {type(p).__name__}")


def _pair(p, q):
    mp, Cp = _moments(p, "p")
    mq, Cq = _moments(q, "q")
    if mp.shape != mq.shape:
        raise ValueError(f"p and q must have the same dimension, got {mp.numel()} and {mq.numel()}")
    return mp, Cp, mq, Cq


def _diag_degenerate(Cp, Cq, dm):
    """Diagonal covariances with zero variances: ``(mutually singular, coordinates to keep)``.  A coordinate where
    exactly one variance is zero, or both are zero at different means, makes the laws mutually singular; one where
    both are zero at the same mean is the same point mass in both and drops out."""
    zp, zq = Cp == 0, Cq == 0
    both = zp & zq
    return bool((zp ^ zq).any() or (both & (dm != 0)).any()), ~both


def _singular_full(*Cs):
    """Cholesky factors of full covariances, and whether each is singular (not positive definite)."""
    out = [torch.linalg.cholesky_ex(C) for C in Cs]
    return [L for L, _ in out], [bool(info) for _, info in out]


def kl_gaussian(p, q):
    """``KL(p || q) = 1/2 [tr(Cq^{-1} Cp) + (mq - mp)^T Cq^{-1} (mq - mp) - d + log det Cq - log det Cp]``.

    With a singular covariance: ``inf`` when ``p`` is not absolutely continuous with respect to ``q`` (exactly one
    of them singular, or, for diagonal covariances, a coordinate where they are different point masses); a
    coordinate where both are the same point mass drops out; two singular full covariances are a ``ValueError``
    (the answer depends on their supports: use their common eigenbasis)."""
    mp, Cp, mq, Cq = _pair(p, q)
    dm = mq - mp
    if Cp.ndim == 1 and Cq.ndim == 1:
        if bool((Cp == 0).any() or (Cq == 0).any()):
            singular, keep = _diag_degenerate(Cp, Cq, dm)
            if singular:
                return dm.new_tensor(math.inf)
            dm, Cp, Cq = dm[keep], Cp[keep], Cq[keep]
        r = Cp / Cq
        # sum(r - 1 - log r) is computed stably for r close to 1
        return 0.5 * ((dm ** 2 / Cq).sum() + (r - 1 - torch.log(r)).sum())
    Cp = torch.diag(Cp) if Cp.ndim == 1 else Cp
    Cq = torch.diag(Cq) if Cq.ndim == 1 else Cq
    (Lq, Lp), (sq, sp) = _singular_full(Cq, Cp)
    if sq and sp:
        raise ValueError("p and q: both covariances are singular; KL(p || q) depends on their supports")
    if sq or sp:
        return dm.new_tensor(math.inf)
    W = torch.linalg.solve_triangular(Lq, Lp, upper=False)     # Lq^{-1} Lp
    z = torch.linalg.solve_triangular(Lq, dm[:, None], upper=False)
    logdet = 2 * (torch.log(torch.diagonal(Lq)).sum() - torch.log(torch.diagonal(Lp)).sum())
    return 0.5 * ((W ** 2).sum() + (z ** 2).sum() - mp.numel() + logdet)


def kl_gaussian_or_inf(p, q, rtol=1e-12):
    """``KL(p || q)`` of two Gaussians, ``inf`` when either covariance is singular (smallest eigenvalue below
    ``rtol`` times the largest variance): then one law has no density and is not absolutely continuous with
    respect to the other, unless both live on the same subspace, which this function does not try to detect."""
    _pair(p, q)
    for name, law in (("p", p), ("q", q)):
        _, C = _moments(law, name)
        C = torch.diag(C) if C.ndim == 1 else C
        if float(torch.linalg.eigvalsh(C).min()) < rtol * float(C.diagonal().max()):
            return math.inf
    return float(kl_gaussian(p, q))


def hellinger_gaussian(p, q):
    """Hellinger distance ``H`` with ``H^2 = 1 - BC(p, q)`` (Bhattacharyya coefficient), so that
    ``H^2 <= TV(p, q) <= sqrt(2) H``.  Singular covariances as in :func:`kl_gaussian`: 1 for mutually singular
    laws."""
    mp, Cp, mq, Cq = _pair(p, q)
    dm = mp - mq
    if Cp.ndim == 1 and Cq.ndim == 1:
        if bool((Cp == 0).any() or (Cq == 0).any()):    # zero variances: see kl_gaussian
            singular, keep = _diag_degenerate(Cp, Cq, dm)
            if singular:
                return dm.new_tensor(1.0)
            dm, Cp, Cq = dm[keep], Cp[keep], Cq[keep]
        Cm = 0.5 * (Cp + Cq)
        log_bc = (0.25 * torch.log(Cp).sum() + 0.25 * torch.log(Cq).sum() - 0.5 * torch.log(Cm).sum()
                  - 0.125 * (dm ** 2 / Cm).sum())
    else:
        Cp = torch.diag(Cp) if Cp.ndim == 1 else Cp
        Cq = torch.diag(Cq) if Cq.ndim == 1 else Cq
        Cm = 0.5 * (Cp + Cq)
        _, (sp, sq, sm) = _singular_full(Cp, Cq, Cm)
        if sm:
            raise ValueError("p and q: both covariances are singular along a common direction; H depends on "
                             "their supports")
        if sp or sq:                   # one law on a proper affine subspace, the other with a density
            return dm.new_tensor(1.0)
        log_bc = (0.25 * torch.logdet(Cp) + 0.25 * torch.logdet(Cq) - 0.5 * torch.logdet(Cm)
                  - 0.125 * dm @ torch.linalg.solve(Cm, dm))
    return (-torch.expm1(log_bc)).clamp_min(0).sqrt()


def grid(lo, hi, n, d, *, device=None):
    """A tensor-product grid: points ``(n^d, d)`` and the cell volume."""
    lo, hi = real("lo", lo), real("hi", hi)
    if not lo < hi:
        raise ValueError(f"lo must be < hi, got lo = {lo}, hi = {hi}")
    n, d = integer("n", n, lo=2), integer("d", d, lo=1)
    ax = torch.linspace(lo, hi, n, dtype=torch.float64, device=device)
    pts = torch.stack(torch.meshgrid(*([ax] * d), indexing="ij"), -1).reshape(-1, d)
    return pts, float(ax[1] - ax[0]) ** d


def _log_densities(cell, **named):
    """Log-densities on a grid or at samples: real tensors of one shape, no NaN and no ``+inf`` (``-inf`` is a zero
    density); ``cell`` (when given) a finite volume > 0."""
    if cell is not None:
        real("cell", cell, lo=0.0, lo_open=True)
    shape, first = None, None
    for name, v in named.items():
        if not torch.is_tensor(v) or not v.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating-point tensor of log-densities, got "
                             f"{v.dtype if torch.is_tensor(v) else type(v).__name__}")
        if bool((v.isnan() | (v == math.inf)).any()):
            raise ValueError(f"{name} must hold log-densities (no NaN, no +inf)")
        if shape is not None and v.shape != shape:
            raise ValueError(f"{first} and {name} must have the same shape, got {tuple(shape)} and {tuple(v.shape)}")
        shape, first = v.shape, name


def tv_grid(logp, logq, cell):
    """``TV(p, q) = 1/2 int |p - q|`` by quadrature from log-densities on grid points with cell volume ``cell``.

    The truncation error is bounded by the mass of ``p`` and ``q`` outside the grid; ``1 - sum p cell`` is
    returned with it as ``(tv, missing_mass_p, missing_mass_q)``."""
    _log_densities(cell, logp=logp, logq=logq)
    p, q = torch.exp(logp), torch.exp(logq)
    return 0.5 * (p - q).abs().sum() * cell, 1 - p.sum() * cell, 1 - q.sum() * cell


def kl_grid(logp, logq, cell):
    """``KL(p || q) = int p log(p / q)`` by quadrature on a grid (``p`` must vanish where ``q`` does: else ``inf``)."""
    _log_densities(cell, logp=logp, logq=logq)
    p = torch.exp(logp)
    if bool(((logq == -math.inf) & (logp > -math.inf)).any()):
        return logp.new_tensor(math.inf)
    return (torch.where(p > 0, p * (logp - logq), 0.0)).sum() * cell


def kl_mc(logp_x, logq_x):
    """``KL(p || q)`` from log-densities at samples ``x ~ p``: ``(estimate, standard error)``; ``(inf, inf)`` when
    ``q`` vanishes at a sample."""
    _log_densities(None, logp_x=logp_x, logq_x=logq_x)
    if logp_x.ndim != 1 or logp_x.numel() < 2:
        raise ValueError(f"logp_x must be a 1-D tensor of at least 2 samples, got shape {tuple(logp_x.shape)}")
    if not bool(torch.isfinite(logp_x).all()):
        raise ValueError("logp_x must be finite at samples of p")
    if bool((logq_x == -math.inf).any()):
        return logq_x.new_tensor(math.inf), logq_x.new_tensor(math.inf)
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

    real("level", level, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    real("log_power", log_power)
    x = tensor("x", x, finite=False).flatten().cpu()
    y = tensor("y", y, finite=False).flatten().cpu()
    if x.numel() != y.numel() or x.numel() < 3:
        raise ValueError(f"x and y must have the same length >= 3, got {x.numel()} and {y.numel()}")
    if (x <= 0).any() or (y <= 0).any() or not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x and y must be positive and finite for a log-log fit")
    if log_power and (x <= 1).any():
        raise ValueError("x must exceed 1 when a log factor is removed")
    if bool((x == x[0]).all()):
        raise ValueError("x must take at least two distinct values for a slope")
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
    for name, v, nd in (("mu1", mu1, 1), ("C1", C1, 2), ("mu2", mu2, 1), ("C2", C2, 2)):
        if not torch.is_tensor(v) or not v.dtype.is_floating_point or v.ndim != nd or \
                v.shape != (mu1.shape * nd if torch.is_tensor(mu1) else None):
            raise ValueError(f"{name} must be a floating-point tensor of shape (d{', d' * (nd - 1)}) like mu1, got "
                             f"{tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} must be finite")
    lam, U = torch.linalg.eigh(C1)
    r1 = (U * lam.clamp_min(0).sqrt()) @ U.T
    mid = torch.linalg.eigvalsh(r1 @ C2 @ r1).clamp_min(0).sqrt().sum()
    return ((mu1 - mu2) ** 2).sum() + torch.trace(C1) + torch.trace(C2) - 2 * mid


# ---- sample-based entropy and KL: k-nearest neighbours, kernel density estimates ---------------------------------
def _check_sample(x, name="x", min_n=2):
    if not torch.is_tensor(x) or x.ndim != 2:
        raise ValueError(f"{name} must be a (n, d) tensor, got {tuple(x.shape) if torch.is_tensor(x) else type(x)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} must hold at least {min_n} points, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _rows_per_chunk(n, budget=2 ** 22):
    return max(1, budget // max(n, 1))


def _whitening(x):
    """``(L, mean)`` with ``L L^T`` the sample covariance of ``x``: ``z = L^{-1} (x - mean)`` has identity sample
    covariance and ``H(x) = H(z) + log |det L|``."""
    m = x.mean(0)
    C = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    return torch.linalg.cholesky(0.5 * (C + C.T)), m


def _kth_neighbour_distance(x, k, method):
    """Distance from each row of ``x`` to its ``k``-th nearest other row: a k-d tree (``scipy.spatial.cKDTree``,
    ``O(n log n)`` for small ``d``; computed on the CPU) or brute force (``torch.cdist`` in chunks, ``O(n^2 d)``, on
    ``x``'s device)."""
    if method not in ("tree", "brute"):
        raise ValueError(f"method must be 'tree' or 'brute', got {method!r}")
    if method == "tree":
        from scipy.spatial import cKDTree

        z = x.detach().cpu().numpy()
        dist, _ = cKDTree(z).query(z, k=k + 1)     # the point itself comes first, at distance 0
        return torch.as_tensor(dist[:, k], dtype=x.dtype, device=x.device)
    c = _rows_per_chunk(x.shape[0])
    eps = []
    for i in range(0, x.shape[0], c):
        d2 = torch.cdist(x[i:i + c], x)
        r = torch.arange(d2.shape[0], device=x.device)
        d2[r, r + i] = float("inf")
        eps.append(d2.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(eps)


def knn_entropy(x, *, k=1, whiten=True, method="tree"):
    """Kozachenko-Leonenko estimate of the differential entropy ``H(q) = -E_q[log q]`` (nats) from ``x ~ q``:

    ``H = psi(n) - psi(k) + log V_d + (d / n) sum_i log eps_i``, ``eps_i`` the Euclidean distance from ``x_i``
    to its ``k``-th nearest neighbour among the other points, ``V_d = pi^{d/2} / Gamma(d/2 + 1)`` the volume
    of the unit ball.  Consistent for any density; the bias at finite ``n`` grows with the anisotropy of ``q``,
    so by default the sample is first whitened by its own sample covariance ``L L^T`` (``H(x) = H(L^{-1} x) +
    log |det L|``, exact for the estimator too).  Neighbours by a k-d tree (``method="tree"``, the default:
    ``O(n log n)``, 200k points in a second or so) or by brute force (``method="brute"``, ``O(n^2 d)`` in chunks on
    ``x``'s device; the reference the tree is tested against)."""
    from scipy.special import digamma

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    x = _check_sample(x)
    if x.shape[0] <= k:
        raise ValueError(f"k = {k} must be less than the number of points of x, {x.shape[0]}")
    n, d = x.shape
    logdet = x.new_zeros(())
    if whiten:
        L, m = _whitening(x)
        x = torch.linalg.solve_triangular(L, (x - m).T, upper=False).T
        logdet = torch.log(torch.diagonal(L)).sum()
    eps = _kth_neighbour_distance(x, k, method)
    if (eps <= 0).any():
        raise ValueError("x must not contain duplicate points (a zero nearest-neighbour distance)")
    log_vd = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    return float(digamma(n) - digamma(k)) + log_vd + d * torch.log(eps).mean() + logdet


def kl_knn(x, logp, *, k=1, n_batches=20, whiten=True, method="tree"):
    """``KL(q || p) = -H(q) - E_q[log p]`` from samples ``x ~ q`` and the exact log-density ``logp`` of ``p``
    (a callable), ``H(q)`` by :func:`knn_entropy`.

    Returns ``(estimate, standard error, batch_shift)``.  The error bar is by batch means: the estimator is
    recomputed on ``n_batches`` disjoint batches of ``x`` (independent estimates of size ``n / n_batches``) and
    the standard error of the pooled estimate is taken as ``std(batch estimates) / sqrt(n_batches)``.
    ``batch_shift = mean(batch estimates) - estimate`` shows how the estimator's finite-sample bias moves
    between ``n / n_batches`` and ``n`` points.  The bias at ``n`` itself is measured by applying the
    estimator to exact draws of ``p`` (true value 0)."""
    x = _check_sample(x, min_n=max(2 * n_batches * (k + 1), 10))
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 2:
        raise ValueError(f"n_batches must be an integer >= 2, got {n_batches!r}")
    if not callable(logp):
        raise ValueError("logp must be a callable returning log p at a batch of points")

    def est(z):
        return -knn_entropy(z, k=k, whiten=whiten, method=method) - logp(z).mean()
    full = est(x)
    b = torch.stack([est(z) for z in x.chunk(n_batches)])
    return full, b.std() / math.sqrt(n_batches), b.mean() - full


def logsumexp_gauss(x, centres, var=1.0, *, rows=128, cols=4096):
    """``log sum_j exp(-|x_i - c_j|^2 / (2 var))`` for every row ``x_i`` of ``x`` (``(m, d)``) over the rows ``c_j``
    of ``centres`` (``(n, d)``): the core of a Gaussian kernel sum, exact (every term), O(m n d).

    ``-|x - c|^2 / 2 = x.c - |c|^2 / 2 - |x|^2 / 2``: one matrix product per block of ``rows`` points and ``cols``
    centres (a block small enough to stay in cache), then the running largest term is taken out before exp (every
    term <= 1: no overflow; underflow only of terms below 1e-308 of the largest) and the block sums are combined as
    an online log-sum-exp.  Against ``torch.cdist`` followed by ``logsumexp`` over all centres at once: 8-10x
    faster at 200k centres, the same numbers to ~1e-13 (tests against scipy, also far in the tails)."""
    if not isinstance(var, (int, float)) or isinstance(var, bool) or not var > 0 or not math.isfinite(var):
        raise ValueError(f"var must be a finite number > 0, got {var!r}")
    z, c = x / math.sqrt(var), centres / math.sqrt(var)
    half_c = 0.5 * (c * c).sum(1)
    out = []
    for i in range(0, z.shape[0], rows):
        p = z[i:i + rows]
        top = torch.full((p.shape[0], 1), -math.inf, dtype=z.dtype, device=z.device)
        acc = torch.zeros(p.shape[0], 1, dtype=z.dtype, device=z.device)
        for j in range(0, c.shape[0], cols):
            s = torch.addmm(half_c[j:j + cols], p, c[j:j + cols].T, beta=-1.0)     # p.c - |c|^2 / 2
            m = torch.maximum(top, s.amax(1, keepdim=True))
            acc = acc * torch.exp(top - m) + s.sub_(m).exp_().sum(1, keepdim=True)
            top = m
        out.append(torch.log(acc[:, 0]) + top[:, 0] - 0.5 * (p * p).sum(1))
    return torch.cat(out)


def kde_logpdf(data, points, *, bandwidth="silverman"):
    """Log-density at ``points`` of the Gaussian kernel density estimate of ``data`` with kernel covariance
    ``h^2 Cov(data)``, ``h = (n (d + 2) / 4)^{-1/(d + 4)}`` (``"silverman"``) or ``n^{-1/(d + 4)}``
    (``"scott"``), or a number ``h``: the estimator of ``scipy.stats.gaussian_kde`` (unweighted)."""
    data = _check_sample(data, "data")
    points = _check_sample(points, "points", min_n=1)
    n, d = data.shape
    if points.shape[1] != d:
        raise ValueError(f"points must have {d} columns like data, got {points.shape[1]}")
    if bandwidth == "silverman":
        h = (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
    elif bandwidth == "scott":
        h = n ** (-1.0 / (d + 4))
    elif isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool) and bandwidth > 0:
        h = float(bandwidth)
    else:
        raise ValueError(f"bandwidth must be 'silverman', 'scott' or a number > 0, got {bandwidth!r}")
    L, _ = _whitening(data)
    L = h * L
    zd = torch.linalg.solve_triangular(L, data.T, upper=False).T
    zp = torch.linalg.solve_triangular(L, points.T, upper=False).T
    return logsumexp_gauss(zp, zd) - math.log(n) - 0.5 * d * math.log(2 * math.pi) - torch.log(torch.diagonal(L)).sum()


def kl_kde(y, logp_y, x, *, bandwidth="silverman"):
    """Plug-in ``KL(p || q) ~ mean(log p(y) - log q_KDE(y))`` with ``y ~ p`` (exact log-densities ``logp_y``) and
    ``q_KDE`` the kernel density estimate (:func:`kde_logpdf`) of the sample ``x ~ q``.  Returns
    ``(estimate, standard error over y)``; the error bar ignores the randomness of ``q_KDE`` and the
    estimator is biased (smoothing, and ``E log q_KDE < log E q_KDE``)."""
    y = _check_sample(y, "y", min_n=1)
    _log_densities(None, logp_y=logp_y)
    if logp_y.shape != (y.shape[0],):
        raise ValueError(f"logp_y must have shape ({y.shape[0]},) (one per row of y), got {tuple(logp_y.shape)}")
    if not bool(torch.isfinite(logp_y).all()):
        raise ValueError("logp_y must be finite at samples of p")
    r = logp_y - kde_logpdf(x, y, bandwidth=bandwidth)
    return r.mean(), r.std() / math.sqrt(r.numel())
