"""Score-mismatched DDPM and zero-shot conditional samplers (document 000: Liang, Ju, Liang, Shroff, ICLR 2025).

The sampler of 000 is DDPM with mean ``(x + (1 - alpha_t) g_t(x)) / sqrt(alpha_t)`` and noise variance
``(1 - alpha_t) / alpha_t``, i.e. :func:`diffnotes.samplers.ddpm` with ``variance="beta_over_alpha"`` and the
score ``g``.  For ``y = H x0 + n``, ``n ~ N(0, sigma_y^2 I)``, a zero-shot sampler uses

    g_{t,y}(x) = (I - P) grad log q_t(x) + f_{t,y}(x),    P = H^+ H,   (I - P) f = 0,

with DDNM's ``f = (sqrt(ab_t) H^+ y - P x) / (1 - ab_t)`` and BO-DDNM's
``f* = Sigma_t^{-1} (sqrt(ab_t) H^+ y - P x)``, ``Sigma_t = ab_t sigma_y^2 H^+ H^+T + (1 - ab_t) I``.  Both are
affine in ``x`` (:class:`~diffnotes.targets.AffineScore`), so with a Gaussian prior the sampler's output law is
exactly Gaussian (:func:`exact_law`).

Mismatch (000, slide "General Mismatch"): ``Delta_t = sqrt(alpha_t)/(1 - alpha_t) (E_target - E_sampler)[X_{t-1}
| x_t] = grad log qtilde_t(x_t) - g_t(x_t)`` exactly (Tweedie for one step).  The chain rule of KL gives the
bias term ``W_bias(T) = sum_t (1 - alpha_t) / 2 E_{Qtilde_t} ||Delta_t||^2`` (:func:`bias_terms_gaussian`,
:func:`bias_terms_mc`): a weighted sum of Fisher divergences.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import laws, metrics, samplers as S
from .schedules import from_betas
from .targets import AffineScore, DiagonalGaussian, Gaussian, GaussianMixture, noise_level

__all__ = ["paper_schedule", "projectors", "ddnm_correction", "bo_correction", "null_projected", "row_projected",
           "zero_shot_score", "with_exact_part", "correction_ratio", "sample", "exact_law", "bias_terms_gaussian",
           "bias_split_gaussian", "mismatch_floor", "bias_terms_mc",
           "row_space_target", "last_kernel_logdensity", "kl_to_sampler_mc", "moment_kl", "random_mixture", "VARIANCE",
           "paper_mixture", "sample_last_kernel", "kl_last_kernel"]

VARIANCE = "beta_over_alpha"          # 000's reverse-process variance (1 - alpha_t) / alpha_t


# ---- schedule and set-up of the paper's experiments ------------------------------------------------------------
def paper_schedule(T, c1=4.0, beta1=1e-3):
    """The schedule of 000's experiments (their code): ``beta_1 = beta1`` and, for ``t >= 2`` (and ``T + 1``),
    ``beta_t = (c1 log T / T) min{beta1 (1 + c1 log T / T)^t, 1}``."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an integer >= 2, got {T!r}")
    if not (c1 > 0 and 0 < beta1 < 1):
        raise ValueError(f"c1 must be > 0 and beta1 in (0, 1), got c1={c1}, beta1={beta1}")
    h = c1 * math.log(T) / T
    if not h < 1:
        raise ValueError(f"T = {T} too small for c1 = {c1} (c1 log T / T = {h:.3g} >= 1)")
    t = torch.arange(1, T + 2, dtype=torch.float64)
    b = h * torch.exp((math.log(beta1) + t * math.log1p(h)).clamp(max=0.0))
    b[0] = beta1
    return from_betas(b[:T], beta_next=b[T], name=f"paper(T={T}, c1={c1}, beta1={beta1})")


def random_mixture(d, K, generator, *, shared_cov=True, ridge=0.0, device=None):
    """000's synthetic prior: means uniform in ``[-1, 1]^d``, covariance ``A A^T / d + ridge I`` with ``A``
    uniform in ``[0, 2]^{d x d}`` (one shared matrix, as in their code, where ``ridge = 0``), equal weights.
    ``A A^T / d`` can have an eigenvalue below the last step's noise variance ``beta_1 / alpha_1``; ``ridge``
    keeps the prior away from that regime.  The draws are made on the generator's device and the mixture is
    moved to ``device`` (default: the generator's), so the same CPU generator gives the same prior anywhere."""
    dev = generator.device if generator is not None else torch.device("cpu")
    means = 2 * torch.rand(K, d, dtype=torch.float64, generator=generator, device=dev) - 1
    nA = 1 if shared_cov else K
    A = 2 * torch.rand(nA, d, d, dtype=torch.float64, generator=generator, device=dev)
    covs = (A @ A.transpose(1, 2) / d + ridge * torch.eye(d, dtype=torch.float64, device=dev)).expand(K, d, d)
    mix = GaussianMixture(torch.full((K,), 1.0 / K, dtype=torch.float64, device=dev), means, covs)
    return mix if device is None else mix.to(device)


def paper_mixture():
    """The mixture prior of the reference code's simulations (jacksonliang35/zero-shot-cond-diff-models,
    ``simulations/*.py``): ``numpy.random.seed(100)``, ``mu = 2 (rand(4, 4) - 0.5)``, ``A = 2 rand(4, 4)``,
    one shared covariance ``A A^T / 4``, equal weights.  numpy's legacy generator (MT19937) is used only to
    reproduce their draw; its numbers do not depend on the numpy version."""
    import numpy as np

    rs = np.random.RandomState(100)
    mu = (rs.rand(4, 4) - 0.5) * 2
    A = rs.rand(4, 4) * 2
    C = torch.as_tensor(A @ A.T / 4, dtype=torch.float64)
    return GaussianMixture(torch.full((4,), 0.25, dtype=torch.float64), torch.as_tensor(mu, dtype=torch.float64),
                           C.expand(4, 4, 4))


# ---- checks of the inputs -----------------------------------------------------------------------------------------
def _finite_tensor(v, name):
    if isinstance(v, bool) or (torch.is_tensor(v) and v.dtype == torch.bool):
        raise ValueError(f"{name} must hold numbers, got a bool")
    try:
        t = torch.as_tensor(v, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a tensor of numbers, got {type(v).__name__}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return t


def _check_Hy(H, y, d=None):
    H = _finite_tensor(H, "H")
    if H.ndim != 2:
        raise ValueError(f"H must be a (p, d) matrix, got shape {tuple(H.shape)}")
    if d is not None and H.shape[1] != d:
        raise ValueError(f"H must have {d} columns (the prior's dimension d), got shape {tuple(H.shape)}")
    y = _finite_tensor(y, "y").to(H.device).reshape(-1)
    if y.numel() != H.shape[0]:
        raise ValueError(f"y must have {H.shape[0]} entries (rows of H), got {y.numel()}")
    return H, y


def _check_sigma_y(sigma_y):
    """A real number or a 0-d tensor, finite and >= 0 (bools are refused): returned as a float."""
    if isinstance(sigma_y, bool) or (torch.is_tensor(sigma_y) and (sigma_y.ndim != 0 or sigma_y.dtype == torch.bool)):
        raise ValueError(f"sigma_y must be a real number or a 0-d tensor, got {sigma_y!r}")
    if not isinstance(sigma_y, numbers.Real) and not torch.is_tensor(sigma_y):
        raise ValueError(f"sigma_y must be a real number or a 0-d tensor, got {sigma_y!r}")
    v = float(sigma_y)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"sigma_y must be finite and >= 0, got {sigma_y!r}")
    return v


def _check_int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _score_dim(score):
    """The dimension of an affine score (from its coefficients), of a target's bound ``score`` method or of a
    :class:`~diffnotes.nets.NetScore`, else None (then it is not checked)."""
    if isinstance(score, AffineScore):
        _, b = score.coeffs(torch.tensor(-1.0, dtype=torch.float64))
        return b.numel()
    owner = getattr(score, "__self__", None) or getattr(score, "net", None)    # a target's method, a NetScore
    d = getattr(owner, "d", None)
    return d if isinstance(d, int) and not isinstance(d, bool) else None


# ---- zero-shot corrections ---------------------------------------------------------------------------------------


def projectors(H):
    """``(H^+, P = H^+ H)``: the pseudo-inverse ``(d, p)`` and the orthogonal projector on the row space of H."""
    Hp = torch.linalg.pinv(H)
    P = Hp @ H
    return Hp, 0.5 * (P + P.T)


def ddnm_correction(H, y):
    """DDNM's range-space correction ``f(x) = (sqrt(ab) H^+ y - P x) / (1 - ab)`` as an :class:`AffineScore`.

    It is the score implied by DDNM's replacement ``x0_hat <- H^+ y + (I - P) x0_hat`` of the Tweedie estimate
    ``x0_hat = (x + (1 - ab) s) / sqrt(ab)``: ``g = (sqrt(ab) x0_hat - x) / (1 - ab) = (I - P) s + f``."""
    H, y = _check_Hy(H, y)
    Hp, P = projectors(H)
    Hy = Hp @ y

    def coeffs(lab):
        sab, omab = noise_level(lab, Hy)
        return -P / omab, sab * Hy / omab
    return AffineScore(coeffs)


def bo_correction(H, y, sigma_y):
    """BO-DDNM's ``f*(x) = Sigma_t^{-1} (sqrt(ab) H^+ y - P x)``, ``Sigma_t = ab sigma_y^2 H^+ H^+T + (1 - ab) I``
    (000, Theorem 3), as an :class:`AffineScore`.  Equals :func:`ddnm_correction` at ``sigma_y = 0``."""
    H, y = _check_Hy(H, y)
    sigma_y = _check_sigma_y(sigma_y)
    Hp, P = projectors(H)
    Hy, HHt = Hp @ y, Hp @ Hp.T
    eye = torch.eye(H.shape[1], dtype=torch.float64, device=H.device)

    def coeffs(lab):
        sab, omab = noise_level(lab, Hy)
        Si = torch.linalg.inv(sab ** 2 * sigma_y ** 2 * HHt + omab * eye)
        Si = 0.5 * (Si + Si.T)
        return -Si @ P, sab * (Si @ Hy)
    return AffineScore(coeffs)


def _projected(score, Q):
    if isinstance(score, AffineScore):
        def coeffs(lab):
            A, b = score.coeffs(lab)
            A = torch.diag(A) if A.ndim == 1 else A
            return Q @ A, Q @ b
        return AffineScore(coeffs)
    return lambda x, lab: score(x, lab) @ Q


def null_projected(score, H):
    """``(I - P) score``: an :class:`AffineScore` when ``score`` is one, else a callable."""
    _, P = projectors(_finite_tensor(H, "H"))
    return _projected(score, torch.eye(P.shape[0], dtype=P.dtype, device=P.device) - P)


def row_projected(score, H):
    """``P score`` (the row-space part): an :class:`AffineScore` when ``score`` is one, else a callable."""
    _, P = projectors(_finite_tensor(H, "H"))
    return _projected(score, P)


def with_exact_part(score, exact, H, part):
    """``score`` with its ``part`` (``"row"``: ``P``, ``"null"``: ``I - P``) replaced by that part of ``exact``:
    ``(I - P) score + P exact`` or ``P score + (I - P) exact``.  Both are affine when the inputs are.  Used to ask
    which part of a zero-shot score makes its error: the two parts of ``Delta = exact - score`` are orthogonal."""
    if part == "row":
        a, b = null_projected(score, H), row_projected(exact, H)
    elif part == "null":
        a, b = row_projected(score, H), null_projected(exact, H)
    else:
        raise ValueError(f"part must be 'row' or 'null', got {part!r}")
    if isinstance(a, AffineScore) and isinstance(b, AffineScore):
        return a + b
    return lambda x, lab: a(x, lab) + b(x, lab)


def correction_ratio(H, sigma_y, schedule):
    """``r_t = alphabar_t sigma_y^2 / ((1 - alphabar_t) s_min^2)``, ``t = 1..T`` (``s_min`` the smallest nonzero
    singular value of ``H``): along the corresponding right singular vector BO-DDNM's correction is DDNM's times
    ``1 / (1 + r_t)``, so the two differ by the relative amount ``r_t / (1 + r_t)`` there (less elsewhere)."""
    H = _finite_tensor(H, "H")
    sigma_y = _check_sigma_y(sigma_y)
    s = torch.linalg.svdvals(H)
    s = s[s > s.max() * max(H.shape) * torch.finfo(s.dtype).eps]
    if s.numel() == 0:
        raise ValueError("H must not be zero")
    ab, omab = schedule.alphabar[1:schedule.T + 1], schedule.one_minus_alphabar[1:schedule.T + 1]
    return ab * sigma_y ** 2 / (omab * float(s.min()) ** 2)


def zero_shot_score(prior_score, H, y, sigma_y=0.0, method="ddnm"):
    """``g_{t,y} = (I - P) prior_score + f`` with ``f`` of ``method`` ``"ddnm"`` or ``"bo"`` (BO-DDNM).

    ``sigma_y`` is checked for both methods (DDNM does not use it); ``H`` must have as many columns as the prior's
    dimension when that can be read off ``prior_score`` (an :class:`AffineScore` or a target's ``score`` method).
    An :class:`AffineScore` when ``prior_score`` is affine (exact laws then apply), else a plain callable."""
    sigma_y = _check_sigma_y(sigma_y)
    H, y = _check_Hy(H, y, _score_dim(prior_score))
    if method == "ddnm":
        f = ddnm_correction(H, y)
    elif method == "bo":
        f = bo_correction(H, y, sigma_y)
    else:
        raise ValueError(f"method must be 'ddnm' or 'bo', got {method!r}")
    null = null_projected(prior_score, H)
    if isinstance(null, AffineScore):
        return null + f
    return lambda x, lab: null(x, lab) + f(x, lab)


# ---- running the sampler and its exact law ------------------------------------------------------------------------
def _check_d(score, d):
    _check_int(d, "d", 1)
    sd = _score_dim(score)
    if sd is not None and sd != d:
        raise ValueError(f"d = {d} does not match the score's dimension {sd}")
    return d


def sample(score, n, d, schedule, *, generator=None, device=None, stop=0, progress=False):
    """``n`` runs of 000's sampler (DDPM, variance ``(1 - alpha)/alpha``) from ``N(0, I_d)``: a
    :class:`~diffnotes.samplers.Samples` (``.x``, ``.nfe``).  The runs live on ``device`` (default: the
    generator's device, else the CPU); the generator must be on that device (torch draws there)."""
    _check_int(n, "n", 1)
    _check_d(score, d)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    x = torch.randn(n, d, dtype=torch.float64, device=device, generator=generator)
    return S.ddpm(score, x, schedule, variance=VARIANCE, generator=generator, stop=stop, progress=progress)


def exact_law(score, d, schedule, *, final_noise=True, diagonal=False, stop=0):
    """Exact Gaussian law of the output ``x_stop`` (default ``x_0``) of 000's sampler with an affine ``score``,
    started at ``N(0, I_d)``.  ``final_noise=False`` drops the noise of the last step ``t = 1`` (the usual DDPM
    practice, Ho et al. 2020: output the mean at ``t = 1``); ``stop = 1`` is the law at the first step ``t = 1``."""
    _check_d(score, d)
    if isinstance(stop, bool) or not isinstance(stop, int) or not 0 <= stop < schedule.T:
        raise ValueError(f"stop must be an integer in [0, T) = [0, {schedule.T}), got {stop!r}")
    z = torch.zeros(d, dtype=torch.float64)
    init = DiagonalGaussian(z, torch.ones(d, dtype=torch.float64)) if diagonal else \
        Gaussian(z, torch.eye(d, dtype=torch.float64))
    if final_noise or stop > 0:
        return laws.law(S.ddpm, score, init, schedule, stop=stop, variance=VARIANCE)
    L = laws.law(S.ddpm, score, init, schedule, stop=1, variance=VARIANCE)
    M, c, _, _ = laws.step_maps(S.ddpm, score, schedule, 1, variance=VARIANCE)
    if isinstance(L, DiagonalGaussian) and M.ndim == 1:
        return DiagonalGaussian(M * L.loc + c, M * M * L.var)
    M = torch.diag(M) if M.ndim == 1 else M
    C = M @ L.cov @ M.T
    return Gaussian(M @ L.loc + c, 0.5 * (C + C.T))


# ---- the bias term of Theorem 1 ------------------------------------------------------------------------------------
def _marginal_moments(target, lab):
    m = target.marginal(lab)
    return (m.loc, m.var) if isinstance(m, DiagonalGaussian) else (m.loc, m.cov)


def _bias_terms(target, score, schedule, projs):
    if not isinstance(score, AffineScore):
        raise ValueError("score must be an AffineScore for the closed-form bias terms")
    ts, out = target.affine_score(), []
    full = (lambda A: torch.diag(A) if A.ndim == 1 else A)
    for t in range(1, schedule.T + 1):
        lab = schedule.log_alphabar[t]
        (A1, b1), (A2, b2) = ts.coeffs(lab), score.coeffs(lab)
        m, C = _marginal_moments(target, lab)
        vals = []
        for R in projs:
            if R is None and A1.ndim == 1 and A2.ndim == 1 and C.ndim == 1:
                D, e = A1 - A2, b1 - b2
                vals.append(((D * m + e) ** 2).sum() + (D * D * C).sum())
                continue
            D, e, Cf = full(A1) - full(A2), b1 - b2, full(C)
            if R is not None:
                D, e = R @ D, R @ e
            vals.append(((D @ m + e) ** 2).sum() + torch.trace(D @ Cf @ D.T))
        out.append(0.5 * schedule.beta[t] * torch.stack(vals))
    return torch.stack(out).T


def bias_terms_gaussian(target, score, schedule):
    """Per-step bias terms ``w_t = (1 - alpha_t)/2 E_{Qtilde_t} ||grad log qtilde_t - g_t||^2``, ``t = 1..T``,
    in closed form for a Gaussian ``target`` and an affine ``score`` ``g``:
    ``E ||D x + e||^2 = ||D m + e||^2 + tr(D C D^T)`` for ``x ~ N(m, C)``.  Returns a ``(T,)`` tensor."""
    return _bias_terms(target, score, schedule, [None])[0]


def bias_split_gaussian(target, score, schedule, H):
    """The per-step bias terms of :func:`bias_terms_gaussian` split exactly into their row-space and null-space
    parts, ``(1 - alpha_t)/2 E ||P Delta_t||^2`` and ``(1 - alpha_t)/2 E ||(I - P) Delta_t||^2`` with
    ``P = H^+ H`` (the parts are orthogonal, so they add up to the total).  Returns ``(row (T,), null (T,))``.
    A zero-shot score ``(I - P) s + f`` has ``(I - P) Delta = (I - P)(grad log q_{t|y} - s)`` whatever ``f``: no
    correction acting in the row space changes the null-space part."""
    H = _finite_tensor(H, "H")
    _, P = projectors(H)
    Q = torch.eye(P.shape[0], dtype=P.dtype, device=P.device) - P
    row, null = _bias_terms(target, score, schedule, [P, Q])
    return row, null


def mismatch_floor(target, training, schedule):
    """``KL(target || P_0)`` (exact) for 000's sampler run with the exact score of the Gaussian ``training`` law on
    a Gaussian ``target`` of any correlation.  The sampler's maps all commute with the training covariance, so its
    output law is diagonal in the training law's eigenbasis: it is propagated there in ``O(T d)`` and compared
    with the target rotated into that basis (one eigendecomposition and one Cholesky factorisation)."""
    if not (isinstance(target, Gaussian) and isinstance(training, Gaussian)) or target.d != training.d:
        raise ValueError("target and training must be Gaussians of the same dimension")
    diag, U = training.eigenbasis()
    law = exact_law(diag.affine_score(), target.d, schedule, diagonal=True)
    C = U.T @ target.cov @ U
    return metrics.kl_gaussian(Gaussian(U.T @ target.loc, 0.5 * (C + C.T)), law)


def bias_terms_mc(target, score, schedule, n, *, generator=None):
    """Per-step bias terms by Monte Carlo, ``n`` exact draws of ``Qtilde_t`` per step (independent across
    steps), for any target with ``sample`` and ``score`` (e.g. a mixture) and any ``score`` callable.
    Returns ``(terms (T,), variances (T,))``: the standard error of the sum is ``sqrt(variances.sum())``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    terms, var = [], []
    for t in range(1, schedule.T + 1):
        lab = schedule.log_alphabar[t]
        x = target.sample(n, lab, generator=generator)
        r = 0.5 * schedule.beta[t] * ((target.score(x, lab) - score(x, lab)) ** 2).sum(-1)
        terms.append(r.mean())
        var.append(r.var() / n)
    return torch.stack(terms), torch.stack(var)


# ---- Theorem 3: the model in which f* is the row-space score ------------------------------------------------------
def row_space_target(prior, H, y, sigma_y):
    """The law of ``x0 = (I - P) u + H^+ (y - n)`` with ``u ~ prior`` and ``n ~ N(0, sigma_y^2 I)`` independent:
    the row-space part of ``x0`` is read off the measurement alone ("flat" row-space prior).  A mixture with
    means ``(I - P) m_k + H^+ y`` and covariances ``(I - P) Sigma_k (I - P) + sigma_y^2 H^+ H^+T``.  At every
    noise level its score has row-space part exactly ``f*`` (000, Theorem 3 in the sense that holds)."""
    sigma_y = _check_sigma_y(sigma_y)
    H, y = _check_Hy(H, y, prior.d)
    H, y = H.to(prior.device), y.to(prior.device)
    Hp, P = projectors(H)
    Q = torch.eye(P.shape[0], dtype=P.dtype, device=P.device) - P
    means = prior.means @ Q + Hp @ y
    covs = Q @ prior.covs @ Q + sigma_y ** 2 * (Hp @ Hp.T)
    return GaussianMixture(prior.weights, means, 0.5 * (covs + covs.transpose(1, 2)))


# ---- KL(target || sampler) on a mixture: exact last kernel, Monte Carlo over x_1 ---------------------------------
def last_kernel_logdensity(x, mean1, var1):
    """``log (1/M) sum_j N(x; mean1_j, var1 I)``: an estimate of the sampler's density at ``x`` from ``M`` draws of
    ``x_1`` (``mean1_j`` = the sampler's last-step mean at ``x_1^j``; the last kernel is exactly Gaussian)."""
    from .metrics import logsumexp_gauss
    M, d = mean1.shape
    return logsumexp_gauss(x, mean1, float(var1)) - math.log(M) - 0.5 * d * math.log(2 * math.pi * var1)


def kl_to_sampler_mc(target, score, schedule, *, n_sampler, n_eval, generator=None):
    """``KL(target || P_0)`` at ``t = 0`` for 000's sampler with any ``score``: ``E_target[log target - log p_0]``
    with ``log p_0`` from :func:`last_kernel_logdensity` on ``n_sampler`` runs stopped at ``t = 1``.

    Returns ``(kl, standard error over target draws, shift)`` where ``shift`` is the estimate with half the runs
    minus the estimate with all of them: the log of a Monte Carlo mean is biased low (Jensen), so ``kl`` is
    biased high, by about ``shift`` (the bias of a ratio estimator halves when M doubles)."""
    x1 = sample(score, n_sampler, target.d, schedule, generator=generator, stop=1).x
    mean1, var1 = _last_step(score, x1, schedule)
    return kl_last_kernel(target, mean1, var1, n_eval, generator=generator)


def moment_kl(target, x, *, n_batches=20):
    """``KL(N(m, C) || N(m_hat, C_hat))`` with ``(m, C)`` the exact mean and covariance of ``target`` (a mixture)
    and ``(m_hat, C_hat)`` the sample moments of the runs ``x``: a discrepancy with an exact reference that
    needs no density of the sampler.  Returns ``(value, standard error)``, the error from ``n_batches``
    independent batches of runs (batch estimates carry an ``O(d^2 / n)`` upward bias, so the error bar is
    conservative for the pooled value)."""
    if x.shape[0] < 10 * n_batches:
        raise ValueError(f"x must hold at least {10 * n_batches} runs for {n_batches} batches, got {x.shape[0]}")
    ref = Gaussian(target.mean(), target.covariance())

    def kl(z):
        return metrics.kl_gaussian(ref, Gaussian(z.mean(0), torch.cov(z.T)))
    b = torch.stack([kl(z) for z in x.chunk(n_batches)])
    return kl(x), b.std() / math.sqrt(n_batches)


# ---- the sampler's output with its (exactly Gaussian) last kernel ------------------------------------------------
def _last_step(score, x1, schedule):
    """The last step's Gaussian kernel at ``x_1``: mean ``(x_1 + beta_1 g_1(x_1)) / sqrt(alpha_1)`` and variance
    ``beta_1 / alpha_1`` (one score evaluation)."""
    beta1, alpha1, lab1 = schedule.beta[1], schedule.alpha[1], schedule.log_alphabar[1]
    return (x1 + beta1 * score(x1, lab1)) / alpha1.sqrt(), float(beta1 / alpha1)


def sample_last_kernel(score, n, d, schedule, *, generator=None, device=None, progress=False):
    """``n`` runs of 000's sampler kept at ``t = 1``: returns ``(x0, mean1, var1, nfe)`` where ``mean1`` is the
    last step's mean ``(x_1 + beta_1 g_1(x_1)) / sqrt(alpha_1)``, ``var1 = beta_1 / alpha_1`` its noise
    variance and ``x0 = mean1 + sqrt(var1) z`` the output.  The output law is the Gaussian mixture
    ``(1/n) sum_j N(mean1_j, var1 I)`` in expectation: it has a density, so ``KL`` in either direction against
    a density is finite."""
    out = sample(score, n, d, schedule, generator=generator, device=device, stop=1, progress=progress)
    mean1, var1 = _last_step(score, out.x, schedule)
    x0 = mean1 + math.sqrt(var1) * torch.randn(mean1.shape, dtype=mean1.dtype, device=mean1.device,
                                                generator=generator)
    return x0, mean1, var1, out.nfe + 1


def kl_last_kernel(target, mean1, var1, n_eval, *, generator=None):
    """``KL(target || P_0)`` at ``t = 0`` by Monte Carlo over ``n_eval`` exact draws of ``target``, with the
    sampler's log-density ``log (1/M) sum_j N(x; mean1_j, var1 I)`` (:func:`last_kernel_logdensity`, exact
    last kernel, Monte Carlo over ``x_1``).  Returns ``(kl, standard error over target draws, shift)``;
    ``shift`` (half the runs minus all of them) estimates the upward Jensen bias, as in
    :func:`kl_to_sampler_mc`."""
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 2:
        raise ValueError(f"n_eval must be an integer >= 2, got {n_eval!r}")
    xe = target.sample(n_eval, generator=generator)
    lt = target.log_prob(xe)
    r_all = lt - last_kernel_logdensity(xe, mean1, var1)
    r_half = lt - last_kernel_logdensity(xe, mean1[: mean1.shape[0] // 2], var1)
    return r_all.mean(), r_all.std() / math.sqrt(n_eval), r_half.mean() - r_all.mean()
