"""Issue 18: the public API's contract.  Each test reproduces a silent wrong result (or a raw error) found by trying the
package as a new user would: it failed before the fix and passes after."""
import math
import tracemalloc

import pytest
import torch

import diffnotes as dn
from diffnotes import laws, metrics, samplers as S, schedules, targets

SAMPLERS = [S.ddpm, S.ddim, S.flow_ode, S.accel_ode, S.accel_sde, S.multistep_ode]


# ---- a score of the wrong shape or dtype is not broadcast -------------------------------------------------------
@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(3,), (5, 1), (1, 3), ()], ids=str)
def test_score_of_wrong_shape_is_rejected(sampler, shape):
    sch = schedules.linear(50)
    x = torch.zeros(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"score.*shape \(5, 3\)"):
        sampler(lambda y, lab: torch.zeros(shape, dtype=torch.float64), x, sch,
                generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_score_of_wrong_dtype_or_kind_is_rejected(sampler):
    sch = schedules.linear(50)
    x = torch.zeros(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"score.*float64"):
        sampler(lambda y, lab: -y.float(), x, sch, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"score.*tensor"):
        sampler(lambda y, lab: y.numpy(), x, sch, generator=torch.Generator().manual_seed(0))


def test_score_checked_once_not_every_step():
    """The check costs one comparison of shapes at the first call: a score whose output goes wrong later is the
    finite check's business, not a per-step shape test (the contract says "at its first call")."""
    sch = schedules.linear(50)
    calls = S.CountingScore(lambda y, lab: -y)
    out = S.ddpm(calls, torch.zeros(4, 2, dtype=torch.float64), sch, generator=torch.Generator().manual_seed(0))
    assert calls.calls == out.nfe == 50


# ---- singular covariances: the limit, not NaN ------------------------------------------------------------------
def _singular_mixture():
    return targets.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [2.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]],
                                                                           [[1.0, 0.0], [0.0, 0.0]]])


def test_singular_mixture_log_prob_and_score_off_its_support():
    """Off the singular component's line (y = 0), log q_0 is that of the regular component alone."""
    mix = _singular_mixture()
    reg = targets.Gaussian([0.0, 0.0], torch.eye(2))
    x = torch.tensor([[0.5, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    want = reg.log_prob(x) + math.log(0.5)
    torch.testing.assert_close(mix.log_prob(x), want)
    torch.testing.assert_close(mix.score(x), reg.score(x))
    torch.testing.assert_close(mix.responsibilities(x), torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    assert float(mix.log_prob(x[:1])) == pytest.approx(-3.1560, abs=1e-4)


def test_singular_mixture_on_its_support_is_the_limit():
    """On the line y = 0 the density is infinite (the limit of a vanishing variance) and the score is the limit
    of the regularised scores: the singular component's, with the pseudo-inverse of its covariance."""
    mix = _singular_mixture()
    x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    assert mix.log_prob(x).item() == math.inf
    torch.testing.assert_close(mix.score(x), torch.tensor([[1.5, 0.0]], dtype=torch.float64))
    # the limit, checked against a tiny regular variance
    eps = 1e-24                     # the regular component keeps a share ~ sqrt(eps)
    reg = targets.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [2.0, 0.0]], [torch.eye(2).tolist(),
                                                                          [[1.0, 0.0], [0.0, eps]]])
    torch.testing.assert_close(mix.score(x), reg.score(x))
    lp = mix.component_log_prob(x)
    assert lp[0, 1] == math.inf and torch.isfinite(lp[0, 0])
    # at any positive noise level the values are finite and agree with the regular computation
    assert torch.isfinite(mix.log_prob(x, -0.1)).all() and torch.isfinite(mix.score(x, -0.1)).all()


def test_singular_mixture_jacobian_at_lab_zero_is_a_clear_error():
    with pytest.raises(ValueError, match="singular"):
        _singular_mixture().score_jacobian(torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("bad", ["mean", "cov", "weight"])
def test_non_finite_targets_rejected_at_construction(bad):
    m, c, w = [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]], [1.0]
    if bad == "mean":
        m = [[math.nan, 0.0]]
    elif bad == "cov":
        c = [[[math.inf, 0.0], [0.0, 1.0]]]
    else:
        w = [math.nan]
    with pytest.raises(ValueError, match={"mean": "means", "cov": "covs", "weight": "weights"}[bad]):
        targets.GaussianMixture(w, m, c)
    with pytest.raises(ValueError, match="var"):
        targets.DiagonalGaussian([0.0, 0.0], [1.0, math.nan])
    with pytest.raises(ValueError, match="mean"):
        targets.DiagonalGaussian([math.inf, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="mean"):
        targets.Gaussian([math.nan, 0.0], torch.eye(2))


def test_kl_and_hellinger_with_singular_covariances():
    p = targets.DiagonalGaussian([0.0, 0.0], [1.0, 1.0])
    q = targets.DiagonalGaussian([0.0, 0.0], [1.0, 0.0])
    assert float(metrics.kl_gaussian(p, q)) == math.inf
    assert float(metrics.kl_gaussian(q, p)) == math.inf
    assert float(metrics.kl_gaussian(q, q)) == 0.0                    # the same point mass in coordinate 2
    q2 = targets.DiagonalGaussian([0.0, 1.0], [1.0, 0.0])
    assert float(metrics.kl_gaussian(q, q2)) == math.inf               # two different point masses
    assert float(metrics.hellinger_gaussian(q, q)) == 0.0
    assert float(metrics.hellinger_gaussian(q, q2)) == 1.0
    assert float(metrics.hellinger_gaussian(p, q)) == 1.0
    # full covariances: singular p (rank 1) against a regular q, both ways
    ps = targets.Gaussian([0.0, 0.0], [[1.0, 1.0], [1.0, 1.0]])
    pf = targets.Gaussian([0.0, 0.0], torch.eye(2))
    assert float(metrics.hellinger_gaussian(ps, pf)) == 1.0
    assert float(metrics.kl_gaussian(ps, pf)) == math.inf
    assert float(metrics.kl_gaussian(pf, ps)) == math.inf
    with pytest.raises(ValueError, match="singular"):
        metrics.kl_gaussian(ps, ps)
    with pytest.raises(ValueError, match="singular"):
        metrics.hellinger_gaussian(ps, ps)


# ---- laws.law validates its options with the samplers' own checks -----------------------------------------------
def test_law_validates_options_like_the_samplers():
    g = targets.Gaussian([0.0, 0.0], torch.eye(2))
    sch, init = schedules.linear(50), targets.DiagonalGaussian(torch.zeros(2), torch.ones(2))
    x = torch.zeros(3, 2, dtype=torch.float64)
    cases = [(S.ddim, dict(eta=1.5), "eta"), (S.ddpm, dict(varianc="beta"), "varianc"),
             (S.ddpm, dict(variance="bta"), "variance"), (S.flow_ode, dict(eta=0.5), "eta"),
             (S.ddim, dict(eta=True), "eta"), (S.ddim, dict(eta=math.nan), "eta")]
    for sampler, opts, name in cases:
        with pytest.raises(ValueError, match=name):
            laws.law(sampler, g.affine_score(), init, sch, **opts)
        with pytest.raises((ValueError, TypeError), match=name):
            sampler(g.score, x, sch, **opts)
    with pytest.raises(ValueError, match="schedule"):
        laws.law(S.ddpm, g.affine_score(), init, "linear")
    with pytest.raises(ValueError, match="sampler"):
        laws.law(print, g.affine_score(), init, sch)


# ---- fit_slope, cosine, dtypes ------------------------------------------------------------------------------------
def test_fit_slope_degenerate_x_and_bad_level():
    with pytest.raises(ValueError, match="distinct"):
        metrics.fit_slope([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    for level in (0.0, 1.0, 1.5, -0.1, math.nan, True):
        with pytest.raises(ValueError, match="level"):
            metrics.fit_slope([1.0, 2.0, 4.0], [1.0, 0.5, 0.25], level=level)


def test_cosine_bad_constants():
    for kw, name in [(dict(max_beta=1.0), "max_beta"), (dict(max_beta=0.0), "max_beta"),
                     (dict(max_beta=math.nan), "max_beta"), (dict(s=-1.0), "s"), (dict(s=math.inf), "s")]:
        with pytest.raises(ValueError, match=name):
            schedules.cosine(100, **kw)


def test_float32_points_into_a_float64_target():
    mix = _singular_mixture()
    x = torch.zeros(3, 2, dtype=torch.float32)
    for f in (mix.log_prob, mix.score, mix.responsibilities):
        with pytest.raises(ValueError, match="float64"):
            f(x)
    dg = targets.DiagonalGaussian([0.0, 0.0], [1.0, 1.0])
    for f in (dg.log_prob, dg.score):
        with pytest.raises(ValueError, match="float64"):
            f(x)


# ---- memory: a schedule keeps no O(T) table for a run of a few steps ----------------------------------------------
def test_one_step_of_a_long_schedule_costs_no_per_step_table():
    """At T = 1e6 one step (stop = T - 1) used to build and keep Python tables of all T steps (about 0.7 GB per
    sampler); here T = 2e5 and the peak traced allocation must stay far below one such table."""
    T = 200_000
    sch = schedules.linear(T)
    x = torch.zeros(2, 2, dtype=torch.float64)
    tracemalloc.start()
    for sampler in SAMPLERS:
        sampler(lambda y, lab: -y, x, sch, stop=T - 1, generator=torch.Generator().manual_seed(0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * T, peak          # < 8 bytes per step: at most a few float64 vectors, no lists of objects
    # what stays on the schedule: tables of the one step run (and the step after it), nothing of size T
    assert 0 < sum(n for n, _ in sch._sampler_tables.values()) <= 2 * len(SAMPLERS)


def test_table_cache_is_bounded():
    """Repeated short runs reuse their table; a run longer than the budget builds its table and does not keep it."""
    sch = schedules.linear(S.TABLE_BUDGET + 10)
    x = torch.zeros(1, 1, dtype=torch.float64)
    S.flow_ode(lambda y, lab: -y, x, sch, stop=sch.T - 3)
    first = dict(sch._sampler_tables)
    S.flow_ode(lambda y, lab: -y, x, sch, stop=sch.T - 3)
    assert sch._sampler_tables == first and len(first) == 1
    S.flow_ode(lambda y, lab: -y, x, sch, stop=0)
    assert sch._sampler_tables == first
    for stop in range(sch.T - 40, sch.T - 1):       # many short runs: the oldest tables go first
        S.flow_ode(lambda y, lab: -y, x, sch, stop=stop)
    assert sum(n for n, _ in sch._sampler_tables.values()) <= S.TABLE_BUDGET
