"""Analytic targets: Gaussians and Gaussian mixtures, exact at every noise level.

Every method takes the noise level ``lab = log alphabar_t`` (``lab = 0`` is the data, ``t = 0``).  The law of
``x_t = sqrt(alphabar) x_0 + sqrt(1 - alphabar) eps`` for ``x_0 ~ N(m, Sigma)`` is
``N(sqrt(alphabar) m, alphabar Sigma + (1 - alphabar) I)``.  Each component covariance is diagonalised once,
``Sigma_k = U_k diag(lambda_k) U_k^T``, so that at every noise level the covariance is
``U_k diag(v_k) U_k^T`` with ``v_k = alphabar lambda_k + (1 - alphabar)``: log-densities, scores, Jacobians and
posteriors then cost ``O(K d^2)`` per point and no matrix is inverted or factorised per step.

Shapes: points ``x`` are ``(n, d)``; weights ``(K,)``, means ``(K, d)``, covariances ``(K, d, d)``.
"""
from __future__ import annotations

import math
import numbers

import torch

from .params import integer, real, tensor

__all__ = ["GaussianMixture", "Gaussian", "DiagonalGaussian", "AffineScore", "noise_level"]

LOG2PI = math.log(2 * math.pi)


def noise_level(lab, like, *, name="lab"):
    """``(sqrt(alphabar), 1 - alphabar)`` for ``lab = log alphabar``, computed stably, as 0-d tensors like ``like``."""
    if isinstance(lab, bool) or not (isinstance(lab, numbers.Real) or torch.is_tensor(lab)):
        raise ValueError(f"{name} (log alphabar) must be a finite scalar <= 0, got {lab!r}")
    if torch.is_tensor(lab) and not lab.dtype.is_floating_point:
        raise ValueError(f"{name} (log alphabar) must be a finite scalar <= 0, got a {lab.dtype} tensor")
    lab = torch.as_tensor(lab, dtype=like.dtype, device=like.device)
    if lab.ndim != 0 or not torch.isfinite(lab) or lab > 0:
        raise ValueError(f"{name} (log alphabar) must be a finite scalar <= 0, got {lab}")
    return torch.exp(0.5 * lab), -torch.expm1(lab)


# ---- reductions over a short last axis (the K components or the d coordinates of a small mixture) -------------
# torch's CPU reductions over a last axis of a few entries cost 15-50 ns per row: a (128000, 3) sum takes ~2 ms and a
# softmax ~5.5 ms, where adding the columns as strided views takes ~0.2 ms.  These helpers take that path on CPU for
# a short last axis and a large tensor, and call torch otherwise; the results agree with torch's to rounding, and
# autograd goes through them (tests/test_targets.py).
def _short_last(x):
    return x.ndim >= 2 and x.shape[-1] <= 8 and x.numel() >= 4096 and x.device.type == "cpu"


def sum_last(x):
    """``x.sum(-1)``."""
    if not _short_last(x) or x.shape[-1] < 2:
        return x.sum(-1)
    out = x[..., 0] + x[..., 1]
    for j in range(2, x.shape[-1]):
        out += x[..., j]
    return out


def softmax_last(x):
    """``torch.softmax(x, -1)``."""
    if not _short_last(x):
        return torch.softmax(x, -1)
    e = torch.exp(x - x.detach().amax(-1, keepdim=True))
    return e / sum_last(e)[..., None]


def logsumexp_last(x):
    """``torch.logsumexp(x, -1)`` (a row of ``-inf`` gives ``-inf``, a ``+inf`` entry ``+inf``)."""
    if not _short_last(x):
        return torch.logsumexp(x, -1)
    m = x.detach().amax(-1, keepdim=True)
    m = m.masked_fill(~torch.isfinite(m), 0.0)
    return torch.log(sum_last(torch.exp(x - m))) + m[..., 0]


def categorical_rows(w, generator=None):
    """One index per row of non-negative weights ``w (n, K)`` (rows need not sum to 1): the draw of
    ``torch.multinomial(w, 1, generator=generator)[:, 0]``, same indices and same generator state after.

    torch draws it as ``argmax_k w_k / E_k`` with ``E_k ~ Exp(1)`` (an exponential race), and its CPU
    ``exponential_`` is ``-log1p(-U)`` of the ``uniform_`` stream, one element at a time (~27 ns each).  Here the
    same uniforms go through a vectorised ``log1p``: 3-5x faster on CPU in float64 (tests/test_targets.py checks the
    indices against torch.multinomial).  Other dtypes and devices call torch.multinomial."""
    if w.dtype != torch.float64 or w.device.type != "cpu" or w.ndim != 2 or w.numel() < 4096:
        return torch.multinomial(w, 1, generator=generator)[:, 0]
    lo, hi = torch.aminmax(w)
    if not (lo >= 0 and torch.isfinite(hi) and bool((w.amax(-1) > 0).all())):
        raise ValueError("w must be finite and non-negative with a positive entry in every row")
    q = torch.empty_like(w).uniform_(generator=generator)
    return (w / torch.log1p(q.neg_()).neg_()).argmax(-1)


def _check_points(x, d, like, name="x"):
    """``x`` must be an ``(n, d)`` tensor of the dtype and on the device of the target's tensor ``like``."""
    if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != d:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (n, {d}), got {shape}")
    if x.dtype != like.dtype or x.device != like.device:
        raise ValueError(f"{name} must be {like.dtype} on {like.device} like the target, got {x.dtype} on {x.device}")
    # one reduction (the sum is finite iff every entry is, unless finite entries overflow it: then the exact test)
    if not math.isfinite(x.detach().sum()) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf entries)")




class AffineScore:
    """A score that is affine in ``x`` at every noise level: ``s(x, lab) = A(lab) x + b(lab)``.

    ``coeffs(lab)`` returns ``(A, b)`` with ``A`` either a ``(d, d)`` matrix or a ``(d,)`` diagonal.  The exact
    laws of :mod:`diffnotes.laws` need this form; samplers just call it like any score."""

    def __init__(self, coeffs):
        if not callable(coeffs):
            raise ValueError(f"coeffs must be a callable lab -> (A, b), got {type(coeffs).__name__}")
        self.coeffs = coeffs

    def __call__(self, x, lab):
        A, b = self.coeffs(lab)
        return (x * A if A.ndim == 1 else x @ A.T) + b

    def jacobian(self, x, lab):
        A, _ = self.coeffs(lab)
        A = torch.diag(A) if A.ndim == 1 else A
        return A.expand(x.shape[0], *A.shape)

    def __add__(self, other):
        """Sum of two affine scores (e.g. an exact score plus a controlled perturbation)."""
        def coeffs(lab):
            (A1, b1), (A2, b2) = self.coeffs(lab), other.coeffs(lab)
            if A1.ndim == 1 and A2.ndim == 1:
                return A1 + A2, b1 + b2
            A1 = torch.diag(A1) if A1.ndim == 1 else A1
            A2 = torch.diag(A2) if A2.ndim == 1 else A2
            return A1 + A2, b1 + b2
        return AffineScore(coeffs)


class GaussianMixture:
    """``sum_k w_k N(m_k, Sigma_k)`` in ``R^d`` (float64), with everything exact at every noise level."""

    def __init__(self, weights, means, covs):
        means = tensor("means", means)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        weights = tensor("weights", weights, device=means.device)
        covs = tensor("covs", covs, device=means.device)
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},), got {tuple(weights.shape)}")
        if covs.shape != (K, d, d):
            raise ValueError(f"covs must have shape ({K}, {d}, {d}), got {tuple(covs.shape)}")
        if (weights < 0).any() or not torch.isclose(weights.sum(), weights.new_tensor(1.0), atol=1e-10):
            raise ValueError("weights must be non-negative and sum to 1")
        if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10, rtol=1e-8):
            raise ValueError("covs must be symmetric")
        self.weights, self.means, self.covs = weights, means, 0.5 * (covs + covs.transpose(1, 2))
        self.K, self.d = K, d
        lam, U = torch.linalg.eigh(self.covs)
        if (lam < -1e-10 * lam.abs().max().clamp_min(1)).any():
            raise ValueError("covs must be positive semi-definite")
        self.lam, self.U = lam.clamp_min(0.0), U
        # a zero eigenvalue: at lab = 0 that component has no density (see _singular_terms)
        self._singular = bool((self.lam == 0).any())
        self.log_weights = torch.log(weights)
        # (d, K d) stack of the eigenbases and the means in them: one matrix product per batch of points
        self._Ucat = U.permute(1, 0, 2).reshape(d, K * d)
        self._mU = torch.einsum("kd,kde->ke", means, U)

    # ---- construction helpers --------------------------------------------------------------------------------
    @property
    def device(self):
        return self.means.device

    def to(self, device):
        return type(self)._rebuild(self, self.weights.to(device), self.means.to(device), self.covs.to(device))

    @staticmethod
    def _rebuild(obj, w, m, c):
        return GaussianMixture(w, m, c)

    # ---- the law of x_t ----------------------------------------------------------------------------------------
    def _v(self, lab):
        """Eigenvalues ``v_k = alphabar lambda_k + 1 - alphabar`` of the component covariances of ``x_t``."""
        sab, omab = noise_level(lab, self.means)
        return sab, sab ** 2 * self.lam + omab

    def _z(self, x, lab):
        """Coordinates of ``x - sqrt(alphabar) m_k`` in the eigenbasis of component k, component-major:
        ``z (K, d, n)``, and the eigenvalues ``v (K, d)``.  The points run along the last (contiguous) axis, so
        that elementwise work and sums over components or coordinates are long vector loops; with the points
        first and a short last axis (K or d of a few), torch's CPU kernels run 5-20x slower per element."""
        _check_points(x, self.d, self.means)
        sab, v = self._v(lab)
        z = (self._Ucat.T @ x.T).view(self.K, self.d, x.shape[0]) - (sab * self._mU)[:, :, None]
        return z, v

    def _terms(self, z, zv, v):
        """``log w_k + log N(x; sqrt(ab) m_k, ab Sigma_k + (1 - ab) I)`` from :meth:`_z`, ``zv = z / v``: ``(K, n)``."""
        const = self.log_weights - 0.5 * (torch.log(v).sum(-1) + self.d * LOG2PI)
        return const[:, None] - 0.5 * (z * zv).sum(1)

    def _degenerate(self, v):
        """True when a component has a zero variance at this noise level (only at ``lab = 0``, only for a singular
        covariance): then :meth:`_singular_terms` replaces :meth:`_terms`."""
        return self._singular and not bool((v > 0).all())

    def _singular_terms(self, z, v):
        """The limits of the regularised terms as the zero variances ``v -> 0``: a component is "off" at ``x`` when
        ``x - m_k`` has a component along a null direction (term ``-inf``), else "on" with ``m_k`` null directions
        (term ``+inf`` when ``m_k > 0``).  At each point the components on with the most null directions dominate
        (their density grows like ``v^{-m_k / 2}``); the responsibilities are a softmax over those of the finite
        parts (over the positive variances).  Returns ``(zv, terms (K, n), comp (K, n), inf (n,))``: ``zv = z / v``
        with 0 along null directions (the pseudo-inverse), the dominant finite parts (``-inf`` elsewhere), each
        component's own limit, and the points where the density is infinite."""
        null = (v == 0)[:, :, None]
        zv = torch.where(null, 0.0, z / v[:, :, None])
        off = (null & (z != 0)).any(1)                                          # (K, n)
        const = self.log_weights - 0.5 * (torch.log(torch.where(v > 0, v, 1.0)).sum(-1) + self.d * LOG2PI)
        f = const[:, None] - 0.5 * (z * zv).sum(1)
        m = null.sum(1).expand_as(off)                                          # (K, n) null directions
        level = torch.where(off, -1, m)
        top = level.amax(0)
        terms = torch.where((level == top) & ~off, f, -math.inf)
        comp = torch.where(off, -math.inf, torch.where(m > 0, math.inf, f))
        return zv, terms, comp, top > 0

    def _parts(self, x, lab):
        """``(z, zv = z / v, v, responsibilities (K, n))`` at ``x``."""
        z, v = self._z(x, lab)
        if self._degenerate(v):
            zv, terms, _, _ = self._singular_terms(z, v)
            if bool((terms == -math.inf).all(0).any()):
                raise ValueError("x: a point lies off the support of every (singular) component, where q_0 has "
                                 "no density and its score is undefined")
            return z, zv, v, torch.softmax(terms, 0)
        zv = z / v[:, :, None]
        return z, zv, v, torch.softmax(self._terms(z, zv, v), 0)

    def component_log_prob(self, x, lab=0.0):
        """``log w_k + log N(x; sqrt(ab) m_k, ab Sigma_k + (1 - ab) I)``: ``(n, K)``.  At ``lab = 0`` a component
        with a singular covariance gives the limit: ``+inf`` on its support, ``-inf`` off it."""
        z, v = self._z(x, lab)
        if self._degenerate(v):
            return self._singular_terms(z, v)[2].T.contiguous()
        return self._terms(z, z / v[:, :, None], v).T.contiguous()

    def log_prob(self, x, lab=0.0):
        """``log q_t(x)``: ``(n,)``.  At ``lab = 0`` with a singular component covariance, the limit of vanishing
        variances: ``+inf`` on the support of a singular component, the other components' value off it."""
        z, v = self._z(x, lab)
        if self._degenerate(v):
            _, terms, _, inf = self._singular_terms(z, v)
            return torch.logsumexp(terms, 0).masked_fill(inf, math.inf)
        return torch.logsumexp(self._terms(z, z / v[:, :, None], v), 0)

    def responsibilities(self, x, lab=0.0):
        """Posterior component probabilities ``P(k | x_t = x)``: ``(n, K)``."""
        return self._parts(x, lab)[3].T.contiguous()

    def score(self, x, lab=0.0):
        """``grad_x log q_t(x) = -sum_k r_k(x) U_k diag(1 / v_k) U_k^T (x - mu_k)``: ``(n, d)``.  At ``lab = 0`` with
        a singular component covariance: the limit of vanishing variances (``1 / v`` read as the pseudo-inverse)."""
        _, zv, _, r = self._parts(x, lab)
        return -((r[:, None, :] * zv).view(self.K * self.d, x.shape[0]).T @ self._Ucat.T)

    def score_and_jacobian(self, x, lab=0.0):
        """The score ``s (n, d)`` and the Hessian of ``log q_t`` ``(n, d, d)`` (symmetric) in one pass:

        ``s = sum_k r_k g_k`` and ``H = sum_k r_k (-C_k^{-1}) + sum_k r_k g_k g_k^T - s s^T``, ``g_k = -C_k^{-1}
        (x - mu_k)`` the component scores and ``r_k`` the responsibilities."""
        s, H = self._score_and_jacobian_cols(x, lab)
        return s.T.contiguous(), H.permute(2, 0, 1).contiguous()

    def _score_and_jacobian_cols(self, x, lab, rows=None):
        """:meth:`score_and_jacobian` with the points last: ``s (d, n)`` and the Hessian rows ``rows`` (all by
        default) ``(len(rows), d, n)``."""
        _, zv, v, r = self._parts(x, lab)
        if self._degenerate(v):
            raise ValueError("lab: the Hessian of log q_0 is unbounded for a singular component covariance; "
                             "use lab < 0")
        g = -torch.bmm(self.U, zv)                                   # (K, d, n)
        rg = r[:, None, :] * g
        s = rg.sum(0)                                                # (d, n)
        rows = torch.arange(self.d, device=x.device) if rows is None else rows
        prec = torch.einsum("kde,ke,kfe->kdf", self.U, 1.0 / v, self.U)[:, rows]
        H = -(prec.reshape(self.K, -1).T @ r).view(len(rows), self.d, -1) - s[rows, None, :] * s[None, :, :]
        for k in range(self.K):                                      # + sum_k r_k g_k g_k^T (a loop over components)
            H += rg[k, rows, None, :] * g[k, None, :, :]
        return s, H

    def score_jacobian(self, x, lab=0.0):
        """Hessian of ``log q_t`` at ``x``: ``(n, d, d)`` (see :meth:`score_and_jacobian`)."""
        return self._score_and_jacobian_cols(x, lab)[1].permute(2, 0, 1).contiguous()

    def sample(self, n, lab=0.0, *, generator=None, return_components=False):
        """``n`` draws of ``x_t`` (of ``x_0`` for ``lab = 0``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        sab, v = self._v(lab)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.long, device=self.device)
        eps = torch.randn(n, self.d, dtype=torch.float64, device=self.device, generator=generator)
        x = sab * self.means[k] + torch.einsum("nde,ne->nd", self.U[k], v[k].sqrt() * eps) if n else eps
        return (x, k) if return_components else x

    # ---- posteriors and kernels ---------------------------------------------------------------------------------
    def reverse_kernel(self, x, lab_t, lab_s):
        """The true reverse kernel ``q(x_s | x_t = x)`` for ``lab_s >= lab_t`` (s earlier than t), a Gaussian
        mixture for each point: returns ``(weights (n, K), means (n, K, d), covs (K, d, d))``.

        Per component, with ``a = sqrt(ab_t / ab_s)``, ``r = 1 - ab_t / ab_s`` and eigenvalues
        ``v_s, v_t = a^2 v_s + r``: mean ``mu_s + U (a v_s / v_t) U^T (x - mu_t)``, covariance
        ``U diag(v_s r / v_t) U^T``.  ``lab_s = 0`` gives the posterior of ``x_0``."""
        w, means, covs = self._reverse_kernel_cols(x, lab_t, lab_s)
        return w.T.contiguous(), means.permute(2, 0, 1).contiguous(), covs

    def _reverse_kernel_cols(self, x, lab_t, lab_s):
        """:meth:`reverse_kernel` with the points last: ``(weights (K, n), means (K, d, n), covs (K, d, d))``."""
        noise_level(lab_t, self.means, name="lab_t")
        noise_level(lab_s, self.means, name="lab_s")
        lab_t = torch.as_tensor(lab_t, dtype=torch.float64)
        lab_s = torch.as_tensor(lab_s, dtype=torch.float64)
        if not lab_s >= lab_t:
            raise ValueError(f"lab_s = {float(lab_s)} must be >= lab_t = {float(lab_t)} (s earlier than t)")
        _, zv, v_t, w = self._parts(x, lab_t)
        sab_s, v_s = self._v(lab_s)
        a = torch.exp(0.5 * (lab_t - lab_s))
        r = -torch.expm1(lab_t - lab_s)
        means = torch.bmm(self.U, (a * v_s)[:, :, None] * zv) + (sab_s * self.means)[:, :, None]
        ratio = v_s * r / v_t
        if self._degenerate(v_t):                                    # lab_t = lab_s = 0: r = 0, no move
            ratio = torch.where(v_t > 0, ratio, 0.0)
        covs = torch.einsum("kde,ke,kfe->kdf", self.U, ratio, self.U)
        return w, means, covs

    def posterior_x0_mixture(self, x, lab):
        """The exact posterior ``q(x_0 | x_t = x)`` as a mixture per point (see :meth:`reverse_kernel`)."""
        return self.reverse_kernel(x, lab, 0.0)

    def posterior_x0(self, x, lab):
        """Mean ``(n, d)`` and covariance ``(n, d, d)`` of ``q(x_0 | x_t = x)`` (law of total covariance)."""
        return mixture_moments(*self.posterior_x0_mixture(x, lab))

    def sample_reverse_kernel(self, x, lab_t, lab_s, *, generator=None):
        """One draw of ``x_s ~ q(x_s | x_t = x)`` per row of ``x``."""
        return sample_mixture_rows(*self.reverse_kernel(x, lab_t, lab_s), generator=generator)

    def condition(self, idx_y, y):
        """For ``Z = [X, Y]`` with ``Y = Z[idx_y]`` observed equal to ``y`` (a ``(p,)`` vector): the exact law of
        ``X = Z[idx_x]`` given ``Y = y`` (a Gaussian mixture in the remaining coordinates, in their order)."""
        iy = tensor("idx_y", idx_y).reshape(-1)
        if iy.numel() < 1 or iy.numel() >= self.d or not bool((iy == iy.round()).all()) or \
                not bool(((iy >= 0) & (iy < self.d)).all()) or iy.unique().numel() != iy.numel():
            raise ValueError(f"idx_y must be distinct coordinates in [0, {self.d}), at least one and not all, "
                             f"got {idx_y!r}")
        idx_y = iy.long().to(self.device)
        mask = torch.ones(self.d, dtype=torch.bool, device=self.device)
        mask[idx_y] = False
        idx_x = torch.arange(self.d, device=self.device)[mask]
        y = tensor("y", y, device=self.device).reshape(-1)
        if y.numel() != idx_y.numel():
            raise ValueError(f"y must have {idx_y.numel()} entries (one per index in idx_y), got {y.numel()}")
        Sxx = self.covs[:, idx_x][:, :, idx_x]
        Sxy = self.covs[:, idx_x][:, :, idx_y]
        Syy = self.covs[:, idx_y][:, :, idx_y]
        return _gaussian_condition(self, Sxx, Sxy, Syy, self.means[:, idx_x], self.means[:, idx_y], y)

    def linear_posterior(self, H, y, sigma_y):
        """Exact law of ``x_0`` given ``y = H x_0 + n``, ``n ~ N(0, sigma_y^2 I_p)``: a Gaussian mixture.

        Per component: ``S_k = H Sigma_k H^T + sigma_y^2 I``, mean ``m_k + Sigma_k H^T S_k^{-1} (y - H m_k)``,
        covariance ``Sigma_k - Sigma_k H^T S_k^{-1} H Sigma_k``, weight ``~ w_k N(y; H m_k, S_k)``."""
        H = tensor("H", H, device=self.device)
        if H.ndim != 2 or H.shape[1] != self.d:
            raise ValueError(f"H must have shape (p, {self.d}), got {tuple(H.shape)}")
        y = tensor("y", y, device=self.device).reshape(-1)
        if y.numel() != H.shape[0]:
            raise ValueError(f"y must have {H.shape[0]} entries (rows of H), got {y.numel()}")
        real("sigma_y", sigma_y, lo=0.0)
        Sxy = self.covs @ H.T                                  # Cov(x0, y | k)
        Syy = H @ self.covs @ H.T + sigma_y ** 2 * torch.eye(H.shape[0], dtype=torch.float64, device=self.device)
        return _gaussian_condition(self, self.covs, Sxy, Syy, self.means, self.means @ H.T, y)

    def mean(self):
        return self.weights @ self.means

    def covariance(self):
        m = self.mean()
        dm = self.means - m
        return torch.einsum("k,kde->de", self.weights, self.covs) + torch.einsum("k,kd,ke->de", self.weights, dm, dm)

    def __repr__(self):
        return f"{type(self).__name__}(K={self.K}, d={self.d})"


def _gaussian_condition(mix, Sxx, Sxy, Syy, mx, my, y):
    """Condition each component's joint Gaussian of (X, Y) on Y = y; reweight components by N(y; my_k, Syy_k)."""
    L, info = torch.linalg.cholesky_ex(Syy)
    if bool(info.any()):
        raise ValueError("y: the observed coordinates have a singular covariance in some component (e.g. sigma_y = 0 "
                         "with H Sigma_k H^T singular); condition on an independent set or use sigma_y > 0")
    r = (y - my)[..., None]
    alpha = torch.cholesky_solve(r, L)                         # Syy^{-1} (y - my)
    means = mx + (Sxy @ alpha)[..., 0]
    covs = Sxx - Sxy @ torch.cholesky_solve(Sxy.transpose(1, 2), L)
    half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    loglik = -0.5 * (r * alpha).sum((-1, -2)) - half_logdet - 0.5 * y.numel() * LOG2PI
    w = torch.softmax(mix.log_weights + loglik, dim=0)
    return GaussianMixture(w, means, 0.5 * (covs + covs.transpose(1, 2)))


def mixture_moments(w, means, covs):
    """Mean ``(n, d)`` and covariance ``(n, d, d)`` of per-row mixtures ``(w (n,K), means (n,K,d), covs (K,d,d))``."""
    mean = torch.einsum("nk,nkd->nd", w, means)
    dm = means - mean[:, None, :]
    cov = torch.einsum("nk,kde->nde", w, covs) + torch.einsum("nk,nkd,nke->nde", w, dm, dm)
    return mean, cov


def sample_mixture_rows(w, means, covs, *, generator=None):
    """One draw per row from per-row mixtures ``(w (n,K), means (n,K,d), covs (K,d,d))``: ``(n, d)``."""
    n, K, d = means.shape
    k = categorical_rows(w, generator)
    eps = torch.randn(n, d, dtype=means.dtype, device=means.device, generator=generator)
    return means[torch.arange(n, device=means.device), k] + torch.einsum("nde,ne->nd", _root(covs)[k], eps)


def sample_mixture_cols(w, means, covs, *, generator=None):
    """:func:`sample_mixture_rows` with the points last, ``(w (K,n), means (K,d,n), covs)`` -> ``(d, n)``: the same
    draws (the same component indices and normal variates, used in the same order)."""
    K, d, n = means.shape
    k = categorical_rows(w.T.contiguous(), generator)
    eps = torch.randn(n, d, dtype=means.dtype, device=means.device, generator=generator)
    every = torch.matmul(_root(covs), eps.T).add_(means)                  # (K, d, n): each component's draw
    return torch.gather(every, 0, k[None, None, :].expand(1, d, n))[0]


def _root(covs):
    """``R_k = U_k diag(sqrt(lambda_k))`` with ``R_k R_k^T = covs_k`` (eigen-root, PSD-safe): ``(K, d, d)``."""
    lam, U = torch.linalg.eigh(covs)
    return U * lam.clamp_min(0).sqrt()[:, None, :]


class Gaussian(GaussianMixture):
    """``N(mean, cov)``: a one-component mixture with its exact score as an :class:`AffineScore`."""

    def __init__(self, mean, cov):
        mean = tensor("mean", mean)
        if mean.ndim != 1:
            raise ValueError(f"mean must be a (d,) vector, got shape {tuple(mean.shape)}")
        cov = tensor("cov", cov, device=mean.device)
        if cov.shape != (mean.numel(), mean.numel()):
            raise ValueError(f"cov must have shape ({mean.numel()}, {mean.numel()}), got {tuple(cov.shape)}")
        super().__init__(torch.ones(1, dtype=torch.float64, device=mean.device), mean[None], cov[None])

    @staticmethod
    def _rebuild(obj, w, m, c):
        return Gaussian(m[0], c[0])

    @property
    def loc(self):
        return self.means[0]

    @property
    def cov(self):
        return self.covs[0]

    def marginal(self, lab):
        """The law of ``x_t`` at noise level ``lab`` (a :class:`Gaussian`)."""
        sab, v = self._v(lab)
        return Gaussian(sab * self.loc, (self.U[0] * v[0]) @ self.U[0].T)

    def affine_score(self):
        """The exact score ``-C^{-1} (x - sqrt(ab) m)`` as an :class:`AffineScore` (full ``(d, d)`` matrices)."""
        def coeffs(lab):
            sab, v = self._v(lab)
            P = (self.U[0] / v[0]) @ self.U[0].T
            return -P, P @ (sab * self.loc)
        return AffineScore(coeffs)

    def eigenbasis(self):
        """``(DiagonalGaussian(U^T m, lambda), U)``: the same law in the eigenbasis of ``cov``.  Exact scores act
        coordinate-wise there, so laws and KLs can be computed in ``O(d)`` per step (KL is rotation invariant)."""
        return DiagonalGaussian(self.U[0].T @ self.loc, self.lam[0]), self.U[0]


class DiagonalGaussian:
    """``N(mean, diag(var))``: the fast path for large ``d`` (everything elementwise)."""

    def __init__(self, mean, var):
        mean = tensor("mean", mean)
        var = tensor("var", var, device=mean.device)
        if mean.ndim != 1 or var.shape != mean.shape:
            raise ValueError(f"mean and var must be (d,) vectors of equal shape, got {tuple(mean.shape)} and "
                             f"{tuple(var.shape)}")
        if (var < 0).any():
            raise ValueError("var must be non-negative")
        self.loc, self.var, self.d = mean, var, mean.numel()
        self._singular = bool((var == 0).any())

    @property
    def device(self):
        return self.loc.device

    def to(self, device):
        return DiagonalGaussian(self.loc.to(device), self.var.to(device))

    @property
    def cov(self):
        return torch.diag(self.var)

    def _v(self, lab):
        sab, omab = noise_level(lab, self.loc)
        return sab, sab ** 2 * self.var + omab

    def marginal(self, lab):
        sab, v = self._v(lab)
        return DiagonalGaussian(sab * self.loc, v)

    def log_prob(self, x, lab=0.0):
        """``log q_t(x)``; at ``lab = 0`` with zero variances, the limit: ``+inf`` on the support, ``-inf`` off it."""
        _check_points(x, self.d, self.loc)
        sab, v = self._v(lab)
        if self._singular and not bool((v > 0).all()):
            off = ((x != sab * self.loc) & (v == 0)).any(-1)
            return torch.where(off, -math.inf, math.inf).to(x.dtype)
        return -0.5 * (((x - sab * self.loc) ** 2 / v).sum(-1) + torch.log(v).sum() + self.d * LOG2PI)

    def score(self, x, lab=0.0):
        """``-(x - sqrt(ab) m) / v``; at ``lab = 0`` along a zero variance, the limit: 0 on the support, +-inf
        off it."""
        _check_points(x, self.d, self.loc)
        sab, v = self._v(lab)
        s = -(x - sab * self.loc) / v
        if self._singular and not bool((v > 0).all()):
            s = s.nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf)
        return s

    def score_jacobian(self, x, lab=0.0):
        _check_points(x, self.d, self.loc)
        _, v = self._v(lab)
        return torch.diag(-1.0 / v).expand(x.shape[0], self.d, self.d)

    def affine_score(self):
        def coeffs(lab):
            sab, v = self._v(lab)
            return -1.0 / v, sab * self.loc / v
        return AffineScore(coeffs)

    def posterior_x0(self, x, lab):
        """Mean ``(n, d)`` and (shared) diagonal variance ``(d,)`` of ``q(x_0 | x_t = x)``."""
        _check_points(x, self.d, self.loc)
        sab, v = self._v(lab)
        mean = self.loc + self.var * sab * (x - sab * self.loc) / v
        var = self.var * (1 - sab ** 2) / v
        if self._singular and not bool((v > 0).all()):     # lab = 0 along a zero variance: x_0 = m there
            mean, var = torch.where(v > 0, mean, self.loc), torch.where(v > 0, var, 0.0)
        return mean, var

    def sample(self, n, lab=0.0, *, generator=None):
        integer("n", n, lo=0)
        sab, v = self._v(lab)
        eps = torch.randn(n, self.d, dtype=torch.float64, device=self.device, generator=generator)
        return sab * self.loc + v.sqrt() * eps

    def __repr__(self):
        return f"DiagonalGaussian(d={self.d})"
