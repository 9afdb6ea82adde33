"""Property-based tests of the public API's contract (issue 18), core modules: schedules, samplers, laws, metrics,
targets, params.

1. Invalid input (NaN, inf, wrong shapes, wrong dtypes, out-of-range values, bools where numbers are meant) raises a
   ``ValueError`` or ``TypeError`` whose message names the parameter: never a raw torch error, never a NaN output.
2. Valid input gives finite output of the documented shape (and the documented range: a probability in [0, 1], a
   divergence >= 0, ...).

The hypothesis profile ("ci": few, derandomized examples) is registered in tests/conftest.py; the contract of each
function is listed in book/contributing.md.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from diffnotes import laws, metrics, params, samplers as S, schedules, targets

F64 = torch.float64
SAMPLERS = [S.ddpm, S.ddim, S.flow_ode, S.accel_ode, S.accel_sde, S.multistep_ode]
LAW_SAMPLERS = [S.ddpm, S.ddim, S.flow_ode, S.accel_ode, S.accel_sde]

# values that are not numbers, or not finite: every numeric argument must reject each of them by name
NOT_A_NUMBER = [math.nan, math.inf, -math.inf, True, False, "1", None, [1.0, 2.0]]
NOT_AN_INT = [math.nan, math.inf, True, False, "10", None, 2.5, [3]]


def rejects(fn, name, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises a ValueError or TypeError naming ``name`` (nothing else: no raw torch error)."""
    try:
        out = fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        assert name in str(e), f"the error does not name {name!r}: {e}"
        return
    raise AssertionError(f"accepted {name}: returned {out!r}")


def finite(*ts):
    for t in ts:
        t = torch.as_tensor(t)
        assert bool(torch.isfinite(t).all()), t


# ---- generated inputs -------------------------------------------------------------------------------------------
def pd_matrix(d, lo=0.2, hi=3.0):
    """A positive-definite (d, d) matrix with eigenvalues in [lo, hi], from a random rotation."""
    return st.tuples(st.lists(st.floats(lo, hi), min_size=d, max_size=d), st.integers(0, 2 ** 16)).map(
        lambda a: _rotate(torch.tensor(a[0], dtype=F64), a[1]))


def _rotate(lam, seed):
    d = lam.numel()
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    C = (Q * lam) @ Q.T
    return 0.5 * (C + C.T)


@st.composite
def mixtures(draw, singular=False):
    K, d = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    w = torch.tensor(draw(st.lists(st.floats(0.1, 1.0), min_size=K, max_size=K)), dtype=F64)
    m = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=K * d, max_size=K * d)), dtype=F64).reshape(K, d)
    lo = 0.0 if singular else 0.2
    covs = []
    for _ in range(K):
        lam = draw(st.lists(st.sampled_from([lo, 0.5, 1.0, 2.0]) if singular else st.floats(lo, 3.0),
                            min_size=d, max_size=d))
        covs.append(torch.diag(torch.tensor(lam, dtype=F64)) if singular else
                    _rotate(torch.tensor(lam, dtype=F64), draw(st.integers(0, 2 ** 16))))
    return targets.GaussianMixture(w / w.sum(), m, torch.stack(covs))


def points(d, n_max=6):
    return st.integers(1, n_max).flatmap(lambda n: st.lists(
        st.floats(-5, 5), min_size=n * d, max_size=n * d).map(lambda v: torch.tensor(v, dtype=F64).reshape(n, d)))


labs = st.one_of(st.just(0.0), st.floats(-12.0, -1e-6))
sizes = st.integers(1, 4)


# ==== 1. invalid input is rejected by name =========================================================================
def _sch():
    return schedules.linear(60)


def _gauss(d=2):
    return targets.Gaussian(torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64))


SCALAR_CASES = [
    # (function, valid keyword arguments, parameter, extra bad values (out of range))
    (schedules.linear, dict(T=100), "T", [0, -3]),
    (schedules.linear, dict(T=100), "beta_start", [0.0, -1e-4, 1.5]),
    (schedules.linear, dict(T=100), "beta_end", [0.0, -0.02, 1.5]),
    (schedules.cosine, dict(T=100), "T", [0]),
    (schedules.cosine, dict(T=100), "s", [-0.5]),
    (schedules.cosine, dict(T=100), "max_beta", [0.0, 1.0, 1.5]),
    (schedules.theory, dict(T=100), "T", [1, 0]),
    (schedules.theory, dict(T=100), "c0", [0.0, -1.0]),
    (schedules.theory, dict(T=100), "c1", [0.0, -1.0]),
    (schedules.ou, dict(eps=0.01, t_end=5.0), "eps", [0.0, -0.1]),
    (schedules.ou, dict(eps=0.01, t_end=5.0), "t_end", [0.0, -1.0, 5.015]),
    (metrics.fit_slope, dict(x=[1.0, 2.0, 4.0], y=[1.0, 0.5, 0.3]), "level", [0.0, 1.0, -0.5]),
    (metrics.fit_slope, dict(x=[2.0, 3.0, 4.0], y=[1.0, 0.5, 0.3]), "log_power", []),
    (metrics.grid, dict(lo=-1.0, hi=1.0, n=5, d=2), "lo", [2.0]),
    (metrics.grid, dict(lo=-1.0, hi=1.0, n=5, d=2), "hi", [-2.0]),
    (metrics.grid, dict(lo=-1.0, hi=1.0, n=5, d=2), "n", [1, 0]),
    (metrics.grid, dict(lo=-1.0, hi=1.0, n=5, d=2), "d", [0]),
    (params.real, dict(name="v", value=1.0, lo=0.0), "v", [-1.0]),
    (params.generator, dict(seed=0), "seed", [-1, 2 ** 64]),
    (lambda **k: targets.noise_level(like=torch.zeros((), dtype=F64), **k), dict(lab=-1.0), "lab", [0.5]),
    (lambda **k: _gauss().sample(**k), dict(n=3), "n", [-1]),
    (lambda **k: targets.DiagonalGaussian(torch.zeros(2), torch.ones(2)).sample(**k), dict(n=3), "n", [-1]),
    (lambda **k: _gauss().log_prob(torch.zeros(2, 2, dtype=F64), **k), dict(lab=-1.0), "lab", [0.1]),
    (lambda **k: _gauss().score(torch.zeros(2, 2, dtype=F64), **k), dict(lab=-1.0), "lab", [0.1]),
    (lambda **k: _gauss().reverse_kernel(torch.zeros(2, 2, dtype=F64), lab_s=-0.5, **k), dict(lab_t=-1.0), "lab_t",
     [0.1]),
    (lambda **k: _gauss().reverse_kernel(torch.zeros(2, 2, dtype=F64), lab_t=-1.0, **k), dict(lab_s=-0.5), "lab_s",
     [-2.0, 0.1]),
    (lambda **k: _gauss().linear_posterior(torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64), **k),
     dict(sigma_y=0.5), "sigma_y", [-1.0]),
    (lambda **k: _sch().lab(**k), dict(t=3), "t", [-1, 62]),
    (lambda **k: S.ddim(_gauss().score, torch.zeros(2, 2, dtype=F64), _sch(), **k), dict(eta=0.5), "eta", [1.5, -0.1]),
    (lambda **k: S.ddpm(_gauss().score, torch.zeros(2, 2, dtype=F64), _sch(), **k), dict(stop=0), "stop", [60, -1]),
    (lambda **k: laws.law(S.ddim, _gauss().affine_score(), _gauss(), _sch(), **k), dict(eta=0.5), "eta", [1.5]),
    (lambda **k: laws.law(S.ddpm, _gauss().affine_score(), _gauss(), _sch(), **k), dict(stop=0), "stop", [60]),
    (lambda **k: metrics.knn_entropy(torch.randn(20, 2, dtype=F64, generator=torch.Generator().manual_seed(0)), **k),
     dict(k=1), "k", [0, 25]),
]
INT_PARAMS = {"T", "n", "d", "seed", "t", "stop", "k"}


def _case_id(case):
    fn, _, name, _ = case
    return f"{getattr(fn, '__name__', 'f')}-{name}"


@pytest.mark.parametrize("case", SCALAR_CASES, ids=[_case_id(c) for c in SCALAR_CASES])
def test_bad_scalars_rejected_by_name(case):
    """Exhaustive over the fixed list of non-numbers and each case's out-of-range values."""
    fn, kw, name, extra = case
    fn(**kw)                                                # the valid call works
    for bad in (NOT_AN_INT if name in INT_PARAMS else NOT_A_NUMBER) + extra:
        rejects(fn, name, **{**kw, name: bad})


@given(case=st.sampled_from([c for c in SCALAR_CASES if c[3]]), scale=st.floats(1.0, 1e6), data=st.data())
def test_out_of_range_scalars_rejected_by_name(case, scale, data):
    """Generated out-of-range values: each stated bad value pushed further out (scaled away from the valid one)."""
    fn, kw, name, extra = case
    bad = data.draw(st.sampled_from(extra))
    good = kw.get(name, 0)
    if isinstance(bad, int) and name in INT_PARAMS:
        far = good + int((bad - good) * scale) if bad != good else bad
    else:
        far = good + (bad - good) * scale
    if name in ("t_end",) or (name == "lab_s" and bad > good) or (name == "lab_t"):
        far = bad                                               # only the stated value is out of range here
    rejects(fn, name, **{**kw, name: far})


# ---- tensors: NaN / inf entries, wrong shapes, wrong dtypes ---------------------------------------------------------
def _x(n=3, d=2):
    return torch.zeros(n, d, dtype=F64)


TENSOR_CASES = [
    # (function of one tensor, parameter, a valid value)
    (lambda v: schedules.VPSchedule(v, max_alphabar_T=None), "log_alpha", -0.1 * torch.ones(5, dtype=F64)),
    (lambda v: schedules.from_betas(v, max_alphabar_T=None), "betas", 0.1 * torch.ones(5, dtype=F64)),
    (lambda v: schedules.from_alphabar(v, max_alphabar_T=None), "alphabar",
     torch.tensor([0.9, 0.5, 0.1], dtype=F64)),
    (lambda v: S.ddpm(lambda y, lab: -y, v, _sch(), generator=torch.Generator().manual_seed(0)), "x", _x()),
    (lambda v: S.ddim(lambda y, lab: -y, v, _sch()), "x", _x()),
    (lambda v: S.flow_ode(lambda y, lab: -y, v, _sch()), "x", _x()),
    (lambda v: S.accel_ode(lambda y, lab: -y, v, _sch()), "x", _x()),
    (lambda v: S.accel_sde(lambda y, lab: -y, v, _sch()), "x", _x()),
    (lambda v: S.multistep_ode(lambda y, lab: -y, v, _sch()), "x", _x()),
    (lambda v: targets.GaussianMixture(v, torch.zeros(2, 2, dtype=F64), torch.eye(2, dtype=F64).repeat(2, 1, 1)),
     "weights", torch.tensor([0.5, 0.5], dtype=F64)),
    (lambda v: targets.GaussianMixture([1.0], v, torch.eye(2, dtype=F64)[None]), "means", torch.zeros(1, 2, dtype=F64)),
    (lambda v: targets.GaussianMixture([1.0], torch.zeros(1, 2, dtype=F64), v), "covs",
     torch.eye(2, dtype=F64)[None]),
    (lambda v: targets.Gaussian(v, torch.eye(2, dtype=F64)), "mean", torch.zeros(2, dtype=F64)),
    (lambda v: targets.Gaussian(torch.zeros(2, dtype=F64), v), "cov", torch.eye(2, dtype=F64)),
    (lambda v: targets.DiagonalGaussian(v, torch.ones(2, dtype=F64)), "mean", torch.zeros(2, dtype=F64)),
    (lambda v: targets.DiagonalGaussian(torch.zeros(2, dtype=F64), v), "var", torch.ones(2, dtype=F64)),
    (lambda v: _gauss().log_prob(v), "x", _x()),
    (lambda v: _gauss().score(v), "x", _x()),
    (lambda v: _gauss().score_and_jacobian(v), "x", _x()),
    (lambda v: _gauss().posterior_x0(v, -1.0), "x", _x()),
    (lambda v: _gauss().reverse_kernel(v, -1.0, -0.5), "x", _x()),
    (lambda v: targets.DiagonalGaussian(torch.zeros(2), torch.ones(2)).log_prob(v), "x", _x()),
    (lambda v: targets.DiagonalGaussian(torch.zeros(2), torch.ones(2)).score(v), "x", _x()),
    (lambda v: targets.DiagonalGaussian(torch.zeros(2), torch.ones(2)).score_jacobian(v), "x", _x()),
    (lambda v: targets.DiagonalGaussian(torch.zeros(2), torch.ones(2)).posterior_x0(v, -1.0), "x", _x()),
    (lambda v: _gauss().condition([1], v.reshape(-1) if torch.is_tensor(v) and v.ndim > 1 else v), "y",
     torch.zeros(1, dtype=F64)),
    (lambda v: _gauss().linear_posterior(v, torch.zeros(2, dtype=F64), 0.5), "H", torch.eye(2, dtype=F64)),
    (lambda v: _gauss().linear_posterior(torch.eye(2, dtype=F64), v, 0.5), "y", torch.zeros(2, dtype=F64)),
    (lambda v: metrics.fit_slope(v.reshape(-1) if torch.is_tensor(v) and v.ndim > 1 else v, [1.0, 0.5, 0.3]), "x",
     torch.tensor([1.0, 2.0, 4.0], dtype=F64)),
    (lambda v: metrics.fit_slope([1.0, 2.0, 4.0], v.reshape(-1) if torch.is_tensor(v) and v.ndim > 1 else v), "y",
     torch.tensor([1.0, 0.5, 0.3], dtype=F64)),
    (lambda v: metrics.tv_grid(v, torch.zeros(4, dtype=F64), 0.25), "logp", torch.zeros(4, dtype=F64)),
    (lambda v: metrics.tv_grid(torch.zeros(4, dtype=F64), v, 0.25), "logq", torch.zeros(4, dtype=F64)),
    (lambda v: metrics.kl_grid(v, torch.zeros(4, dtype=F64), 0.25), "logp", torch.zeros(4, dtype=F64)),
    (lambda v: metrics.kl_grid(torch.zeros(4, dtype=F64), v, 0.25), "logq", torch.zeros(4, dtype=F64)),
    (lambda v: metrics.kl_mc(v, torch.zeros(4, dtype=F64)), "logp_x", torch.zeros(4, dtype=F64)),
    (lambda v: metrics.kl_mc(torch.zeros(4, dtype=F64), v), "logq_x", torch.zeros(4, dtype=F64)),
    (lambda v: metrics.frechet_distance(v, torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64),
                                        torch.eye(2, dtype=F64)), "mu1", torch.zeros(2, dtype=F64)),
    (lambda v: metrics.frechet_distance(torch.zeros(2, dtype=F64), v, torch.zeros(2, dtype=F64),
                                        torch.eye(2, dtype=F64)), "C1", torch.eye(2, dtype=F64)),
    (lambda v: metrics.knn_entropy(v), "x", torch.randn(30, 2, dtype=F64, generator=torch.Generator().manual_seed(1))),
    (lambda v: metrics.kde_logpdf(v, torch.zeros(3, 2, dtype=F64)), "data",
     torch.randn(30, 2, dtype=F64, generator=torch.Generator().manual_seed(1))),
    (lambda v: metrics.kde_logpdf(torch.randn(30, 2, dtype=F64, generator=torch.Generator().manual_seed(1)), v),
     "points", torch.zeros(3, 2, dtype=F64)),
    (lambda v: metrics.kl_kde(torch.zeros(3, 2, dtype=F64), v,
                              torch.randn(30, 2, dtype=F64, generator=torch.Generator().manual_seed(1))),
     "logp_y", torch.zeros(3, dtype=F64)),
]
# log-densities may be -inf (a zero density): probed with NaN and +inf only
MAY_BE_MINUS_INF = {"logp", "logq", "logp_x", "logq_x", "logp_y"}
# arrays converted to float64 (integers are numbers there) and, for these, of any shape (flattened by design)
CONVERTED = {"log_alpha", "betas", "alphabar", "weights", "means", "covs", "mean", "cov", "var", "y", "H"}


def _tid(case):
    return case[1]


@pytest.mark.parametrize("case", TENSOR_CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(TENSOR_CASES)])
@given(data=st.data())
def test_bad_tensors_rejected_by_name(case, data):
    fn, name, good = case
    fn(good)                                                             # the valid call works
    kinds = ["nan", "inf", "ndim", "dtype", "bool_dtype", "not_a_tensor"]
    if name == "y" or "fit_slope" in fn.__code__.co_names:
        kinds.remove("ndim")                                # flattened by design: any shape is accepted
    kind = data.draw(st.sampled_from(kinds))
    bad = good.clone()
    if kind in ("nan", "inf"):
        i = data.draw(st.integers(0, bad.numel() - 1))
        val = math.nan if kind == "nan" else data.draw(st.sampled_from([math.inf, -math.inf]))
        if name in MAY_BE_MINUS_INF and val == -math.inf:
            val = math.inf
        bad.view(-1)[i] = val
    elif kind == "ndim":
        bad = bad[None] if data.draw(st.booleans()) or bad.ndim == 0 else bad.reshape(-1)[:1].reshape(())
        if bad.ndim == good.ndim:
            bad = bad[None]
    elif kind == "dtype":     # integers are numbers where an array is converted to float64; complex never is
        converted = name in CONVERTED or "fit_slope" in fn.__code__.co_names
        bad = bad.to(torch.int64) if not converted and data.draw(st.booleans()) else bad.to(torch.complex128)
    elif kind == "bool_dtype":
        bad = bad != 0
    else:
        bad = "not a tensor"
    rejects(fn, name, bad)


# ---- objects of the wrong kind -------------------------------------------------------------------------------------
def test_wrong_objects_rejected_by_name():
    g, x, sch = _gauss(), _x(), _sch()
    for sampler in SAMPLERS:
        rejects(sampler, "schedule", g.score, x, "linear")
        rejects(sampler, "schedule", g.score, x, None)
    rejects(laws.law, "score", S.ddpm, g.score, g, sch)
    rejects(laws.law, "init", S.ddpm, g.affine_score(), "N(0, I)", sch)
    rejects(laws.law, "init", S.ddpm, g.affine_score(), _gauss(3), sch)         # dimension differs from the score
    rejects(laws.law, "sampler", "ddpm", g.affine_score(), g, sch)
    rejects(laws.step_maps, "sampler", S.multistep_ode, g.affine_score(), sch, 3)
    rejects(metrics.kl_gaussian, "p", "N(0, 1)", g)
    rejects(metrics.kl_gaussian, "q", g, 1.0)
    rejects(metrics.kl_gaussian, "dimension", g, _gauss(3))
    rejects(metrics.hellinger_gaussian, "dimension", g, _gauss(3))
    rejects(metrics.kl_gaussian_or_inf, "dimension", g, _gauss(3))
    rejects(metrics.kl_knn, "logp", torch.randn(100, 2, dtype=F64), "log p")
    rejects(metrics.kde_logpdf, "bandwidth", torch.randn(30, 2, dtype=F64), torch.zeros(2, 2, dtype=F64),
            bandwidth=True)
    rejects(targets.AffineScore, "coeffs", 3.0)
    rejects(schedules.VPSchedule, "device", -0.1 * torch.ones(3), device="gpu7", max_alphabar_T=None)
    rejects(sch.to, "device", "gpu7")
    rejects(sch.subsample, "steps", [0, 2.5, 5])
    rejects(sch.subsample, "steps", [0, 5, 3])
    rejects(g.condition, "idx_y", [2], [0.0])
    rejects(g.condition, "idx_y", [0, 1], [0.0, 0.0])
    rejects(g.condition, "idx_y", [0, 0], [0.0, 0.0])
    rejects(params.check, "p", True, int)
    rejects(params.check, "p", math.nan, float)
    rejects(params.resolve_device, "device", "gpu7")
    rejects(params.generator, "seed", 1.0)


# ==== 2. valid input gives finite output of the documented shape ==================================================
def _schedule_ok(sch):
    T = sch.T
    for v in (sch.beta, sch.alpha, sch.alphabar, sch.one_minus_alphabar, sch.sigma, sch.beta_tilde,
              sch.log_alphabar):
        assert v.shape == (T + 2,)
        finite(v)
    b = sch.beta[1:]
    assert bool(((b > 0) & (b < 1)).all())
    assert bool((sch.log_alphabar[1:] < sch.log_alphabar[:-1]).all())


@given(T=st.integers(21, 3000), b0=st.floats(1e-5, 1e-3), b1=st.floats(5e-3, 0.05), scale=st.booleans())
def test_linear_valid(T, b0, b1, scale):
    try:
        sch = schedules.linear(T, b0, b1, scale_with_T=scale)
    except ValueError as e:          # a legitimate refusal: it names why
        assert "noise" in str(e) or "too small" in str(e)
        return
    assert sch.T == T
    _schedule_ok(sch)


@given(T=st.integers(1, 3000), s=st.floats(0.0, 0.5), mb=st.floats(0.5, 0.9999))
def test_cosine_valid(T, s, mb):
    try:
        sch = schedules.cosine(T, s, mb)
    except ValueError as e:
        assert "noise" in str(e)
        return
    _schedule_ok(sch)


@given(T=st.integers(2, 5000), c0=st.floats(0.1, 4.0), c1=st.floats(0.1, 8.0))
def test_theory_valid(T, c0, c1):
    try:
        sch = schedules.theory(T, c0, c1, max_alphabar_T=None)
    except ValueError as e:
        assert "c1" in str(e)
        return
    _schedule_ok(sch)
    assert sch.beta[1] == pytest.approx(T ** -c0, rel=1e-12)


@given(eps=st.sampled_from([0.001, 0.01, 0.05, 0.1]), n=st.integers(1, 3000))
def test_ou_valid(eps, n):
    try:
        sch = schedules.ou(eps, n * eps)
    except ValueError as e:
        assert "noise" in str(e)
        return
    assert sch.T == n
    _schedule_ok(sch)


@given(T=st.integers(22, 400), k=st.integers(1, 20), data=st.data())
def test_subsample_valid(T, k, data):
    sch = schedules.linear(T)
    inner = sorted(data.draw(st.sets(st.integers(1, T), min_size=min(k, T), max_size=min(k, T))))
    sub = sch.subsample([0] + inner)
    assert sub.T == len(inner)
    _schedule_ok(sub)
    torch.testing.assert_close(sub.log_alphabar[1:sub.T + 1], sch.log_alphabar[inner])


@given(sampler=st.sampled_from(SAMPLERS), n=sizes, d=sizes, T=st.integers(25, 80), back=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_samplers_valid(sampler, n, d, T, back, seed):
    sch = schedules.linear(T)
    g = targets.DiagonalGaussian(torch.linspace(-1, 1, d, dtype=F64), torch.linspace(0.5, 2, d, dtype=F64))
    x = torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))
    stop = max(T - back, 0)
    out = sampler(g.score, x, sch, stop=stop, generator=torch.Generator().manual_seed(seed), trajectory=True)
    assert out.x.shape == (n, d) and out.x.dtype == F64
    finite(out.x)
    assert out.nfe == (2 if sampler is S.accel_ode else 1) * (T - stop)
    assert len(out.trajectory) == T - stop + 1


@given(sampler=st.sampled_from(LAW_SAMPLERS), d=sizes, diag=st.booleans(), back=st.integers(1, 8),
       eta=st.floats(0.0, 1.0), variance=st.sampled_from(S.DDPM_VARIANCES))
def test_law_valid(sampler, d, diag, back, eta, variance):
    sch = schedules.linear(40)
    g = targets.DiagonalGaussian(torch.linspace(-1, 1, d, dtype=F64), torch.linspace(0.5, 2, d, dtype=F64))
    target = g if diag else targets.Gaussian(g.loc, g.cov)
    init = targets.DiagonalGaussian(torch.zeros(d, dtype=F64), torch.ones(d, dtype=F64))
    opts = {S.ddim: dict(eta=eta), S.ddpm: dict(variance=variance)}.get(sampler, {})
    out = laws.law(sampler, target.affine_score(), init, sch, stop=40 - back, **opts)
    assert out.loc.shape == (d,)
    finite(out.loc, out.cov)
    assert bool((torch.linalg.eigvalsh(out.cov) > 0).all())


@given(mix=mixtures(), data=st.data(), lab=labs)
def test_mixture_valid(mix, data, lab):
    x = data.draw(points(mix.d))
    n = x.shape[0]
    lp, s = mix.log_prob(x, lab), mix.score(x, lab)
    assert lp.shape == (n,) and s.shape == (n, mix.d)
    r = mix.responsibilities(x, lab)
    assert r.shape == (n, mix.K)
    torch.testing.assert_close(r.sum(1), torch.ones(n, dtype=F64))
    s2, H = mix.score_and_jacobian(x, lab)
    torch.testing.assert_close(s2, s)
    assert H.shape == (n, mix.d, mix.d)
    mean, cov = mix.posterior_x0(x, lab)
    assert mean.shape == (n, mix.d) and cov.shape == (n, mix.d, mix.d)
    w, m, c = mix.reverse_kernel(x, lab, lab / 2)
    assert w.shape == (n, mix.K) and m.shape == (n, mix.K, mix.d) and c.shape == (mix.K, mix.d, mix.d)
    y = mix.sample(n, lab, generator=torch.Generator().manual_seed(0))
    assert y.shape == (n, mix.d)
    finite(lp, s, r, H, mean, cov, w, m, c, y, mix.component_log_prob(x, lab), mix.mean(), mix.covariance())


@given(mix=mixtures(singular=True), data=st.data(), lab=labs)
def test_singular_mixture_never_nan(mix, data, lab):
    """Zero variances: at lab < 0 everything is finite; at lab = 0 the limits (+-inf log-densities), never NaN, or
    a ValueError where the limit does not exist (a point off every component's support)."""
    x = data.draw(points(mix.d))
    x = torch.cat([x, mix.sample(2, generator=torch.Generator().manual_seed(1))])     # points on the supports too
    lp = mix.log_prob(x, lab)
    assert not bool(lp.isnan().any())
    if lab == 0:    # the limit: -inf off every support, +inf on a singular one, finite on a regular one only
        var = torch.diagonal(mix.covs, dim1=1, dim2=2)                                  # (K, d): diagonal here
        on = ((var[None] > 0) | (x[:, None] == mix.means[None])).all(-1)                # (n, K)
        singular = (var == 0).any(-1)                                                   # (K,)
        want = torch.where((on & singular).any(1), math.inf, torch.where(on.any(1), 0.0, -math.inf))
        assert torch.equal(torch.where(torch.isfinite(lp), 0.0, lp), want)
    if lab < 0:
        finite(lp, mix.score(x, lab))
        return
    try:
        s = mix.score(x, lab)
    except ValueError as e:
        assert "support" in str(e)
        return
    finite(s)


@given(d=sizes, data=st.data(), lab=labs)
def test_diagonal_gaussian_valid(d, data, lab):
    var = torch.tensor(data.draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 3.0)), min_size=d, max_size=d)),
                       dtype=F64)
    mean = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d)), dtype=F64)
    g = targets.DiagonalGaussian(mean, var)
    x = data.draw(points(d))
    lp, s = g.log_prob(x, lab), g.score(x, lab)
    assert lp.shape == (x.shape[0],) and s.shape == x.shape
    assert not bool(lp.isnan().any() or s.isnan().any())
    if lab < 0 or bool((var > 0).all()):
        finite(lp, s)
    m, v = g.posterior_x0(x, lab)
    assert m.shape == x.shape and v.shape == (d,)
    assert not bool(m.isnan().any() or v.isnan().any())


@given(d=sizes, diag=st.booleans(), data=st.data())
def test_gaussian_distances_valid(d, diag, data):
    if diag:
        p, q = (targets.DiagonalGaussian(torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d))),
                                         torch.tensor(data.draw(st.lists(st.floats(0.1, 3), min_size=d, max_size=d))))
                for _ in range(2))
    else:
        p, q = (targets.Gaussian(torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d))),
                                 data.draw(pd_matrix(d))) for _ in range(2))
    kl, h = metrics.kl_gaussian(p, q), metrics.hellinger_gaussian(p, q)
    finite(kl, h)
    assert kl >= -1e-10 and 0 <= h <= 1
    assert metrics.kl_gaussian_or_inf(p, q) == pytest.approx(float(kl))
    assert float(metrics.kl_gaussian(p, p)) == pytest.approx(0.0, abs=1e-10)
    fd = metrics.frechet_distance(p.loc, p.cov, q.loc, q.cov)
    finite(fd)
    assert fd >= -1e-8


@given(d=sizes, data=st.data())
def test_singular_gaussian_distances_never_nan(d, data):
    var_p = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=d, max_size=d)), dtype=F64)
    var_q = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=d, max_size=d)), dtype=F64)
    mp = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=d, max_size=d)), dtype=F64)
    p, q = targets.DiagonalGaussian(mp, var_p), targets.DiagonalGaussian(torch.zeros(d, dtype=F64), var_q)
    kl, h = metrics.kl_gaussian(p, q), metrics.hellinger_gaussian(p, q)
    assert not bool(kl.isnan() or h.isnan())
    assert kl >= -1e-12 and 0 <= h <= 1
    assert (float(kl) == math.inf) == (float(h) == 1.0)          # mutually singular: KL = inf and H = 1


@given(n=st.integers(3, 12), slope=st.floats(-3, 3), data=st.data(), level=st.floats(0.5, 0.999))
def test_fit_slope_valid(n, slope, data, level):
    x = torch.tensor(sorted(data.draw(st.sets(st.integers(2, 10 ** 6), min_size=n, max_size=n))), dtype=F64)
    noise = torch.tensor(data.draw(st.lists(st.floats(-0.1, 0.1), min_size=n, max_size=n)), dtype=F64)
    y = x ** slope * torch.exp(noise)
    fit = metrics.fit_slope(x, y, level=level)
    finite(fit.slope, fit.intercept, fit.ci[0], fit.ci[1], fit.stderr)
    assert fit.ci[0] <= fit.slope <= fit.ci[1]
    finite(fit.predict(x))


@given(d=st.integers(1, 3), n=st.integers(2, 8), lo=st.floats(-5, 0), width=st.floats(0.1, 10))
def test_grid_quadrature_valid(d, n, lo, width):
    pts, cell = metrics.grid(lo, lo + width, n, d)
    assert pts.shape == (n ** d, d) and cell > 0
    logp = _gauss(d).log_prob(pts)
    tv, mp, mq = metrics.tv_grid(logp, logp - 0.1, cell)
    finite(tv, mp, mq, metrics.kl_grid(logp, logp - 0.1, cell))
    assert tv >= 0


@given(n=st.integers(40, 120), d=st.integers(1, 3), seed=st.integers(0, 100), k=st.integers(1, 3))
def test_sample_estimators_valid(n, d, seed, k):
    g = _gauss(d)
    x = g.sample(n, generator=torch.Generator().manual_seed(seed))
    finite(metrics.knn_entropy(x, k=k))
    est, se, shift = metrics.kl_knn(x, g.log_prob, k=k, n_batches=2)
    finite(est, se, shift)
    lp = metrics.kde_logpdf(x, x[:5])
    assert lp.shape == (5,)
    finite(lp, *metrics.kl_kde(x[:5], g.log_prob(x[:5]), x), *metrics.kl_mc(g.log_prob(x), g.log_prob(x) - 0.5))


@given(value=st.one_of(st.integers(-10, 10), st.floats(-10, 10), st.booleans(), st.just(math.nan)),
       lo=st.one_of(st.none(), st.floats(-5, 5)))
def test_params_check_and_real(value, lo):
    """check(float) and real agree: a real number within bounds passes (as a float), anything else is refused."""
    ok = not isinstance(value, bool) and not (isinstance(value, float) and math.isnan(value)) and \
        (lo is None or value >= lo)
    for f in (lambda: params.check("p", value, float, lo=lo), lambda: params.real("p", value, lo=lo)):
        if ok:
            assert f() == float(value)
        else:
            rejects(f, "p")


@given(mix=mixtures(), lab=st.floats(-8.0, -0.01), seed=st.integers(0, 100))
def test_affine_score_and_laws_of_exact_targets(mix, lab, seed):
    """The mixture's one-component case: the AffineScore of a Gaussian equals its score."""
    g = targets.Gaussian(mix.means[0], mix.covs[0])
    x = g.sample(4, lab, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(g.affine_score()(x, lab), g.score(x, lab))
    torch.testing.assert_close(g.affine_score().jacobian(x, lab), g.score_jacobian(x, lab))


def test_numpy_scalars_are_numbers():
    """NumPy scalars count as numbers (not rejected), bools never do."""
    assert params.real("v", np.float64(0.5)) == 0.5
    schedules.cosine(100, s=np.float64(0.008))
    rejects(params.real, "v", np.bool_(True))
