"""Exact, fast checks written for the mutation score (book/contributing.md): each kills mutants that the statistical
tests (Monte Carlo against the exact law, seconds each) let through or catch only slowly.

The law of every sampler under an affine score is checked against the sampler itself *to rounding*: the sampler's
output is ``Y = M x + c + sum_j G_j z_j`` (an affine map of the start ``x`` and of its normal draws ``z_j``); with the
package's noise source replaced by unit vectors, one batched run reads off ``c``, the columns of ``M`` and every
``G_j e_k``, hence the exact mean ``M m + c`` and covariance ``M C M^T + sum_j G_j G_j^T`` of the output for
``x ~ N(m, C)``, which :func:`diffnotes.laws.law` must reproduce.
"""
import math

import pytest
import torch

from diffnotes import laws, metrics, samplers as S, schedules, targets

F64 = torch.float64
CASES = [(S.ddpm, {"variance": "beta"}), (S.ddpm, {"variance": "beta_tilde"}),
         (S.ddpm, {"variance": "beta_over_alpha"}), (S.ddim, {"eta": 0.0}), (S.ddim, {"eta": 0.6}),
         (S.flow_ode, {}), (S.accel_ode, {}), (S.accel_sde, {})]


class UnitNoise:
    """Stands in for ``samplers._noise``: call ``j`` returns zeros except a 1 at ``(row, k)`` for each probe row
    assigned to ``(j, k)``."""

    def __init__(self, probes):
        self.probes, self.calls = probes, 0

    def __call__(self, x, generator):
        z = torch.zeros_like(x)
        for row, (j, k) in self.probes.items():
            if j == self.calls:
                z[row, k] = 1.0
        self.calls += 1
        return z


def affine_readout(monkeypatch, sampler, score, d, sch, stop, opts):
    """``(c, M, [G_j e_k])`` of the sampler's output as an affine function of its start and its draws."""
    count = UnitNoise({})
    monkeypatch.setattr(S, "_noise", count)
    sampler(score, torch.zeros(1, d, dtype=F64), sch, stop=stop, **opts)
    n_calls = count.calls
    probes = {1 + d + j * d + k: (j, k) for j in range(n_calls) for k in range(d)}
    x = torch.zeros(1 + d + n_calls * d, d, dtype=F64)
    x[1:1 + d] = torch.eye(d, dtype=F64)
    monkeypatch.setattr(S, "_noise", UnitNoise(probes))
    y = sampler(score, x, sch, stop=stop, **opts).x
    c = y[0]
    M = (y[1:1 + d] - c).T
    G = y[1 + d:] - c
    return c, M, G


@pytest.mark.parametrize("diag", [True, False], ids=["diagonal", "full"])
@pytest.mark.parametrize("sampler,opts", CASES, ids=[f"{f.__name__}{o}" for f, o in CASES])
def test_law_equals_the_samplers_affine_map(monkeypatch, sampler, opts, diag):
    d, stop = 2, 2
    sch = schedules.theory(14, 2.0, 4.0, max_alphabar_T=None)
    if diag:
        target = targets.DiagonalGaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([1.5, 0.3], dtype=F64))
        init = targets.DiagonalGaussian(torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([0.9, 1.2], dtype=F64))
    else:
        target = targets.Gaussian(torch.tensor([1.0, -0.5], dtype=F64),
                                  torch.tensor([[1.5, 0.4], [0.4, 0.6]], dtype=F64))
        init = targets.Gaussian(torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([[0.9, 0.2], [0.2, 1.2]],
                                                                                   dtype=F64))
    c, M, G = affine_readout(monkeypatch, sampler, target.score, d, sch, stop, opts)
    L = laws.law(sampler, target.affine_score(), init, sch, stop=stop, **opts)
    assert isinstance(L, targets.DiagonalGaussian) == diag
    C0 = init.cov
    torch.testing.assert_close(L.loc, M @ init.loc + c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(L.cov, M @ C0 @ M.T + G.T @ G, rtol=1e-10, atol=1e-12)


def test_step_maps_of_one_step(monkeypatch):
    """step_maps alone: one step t -> t - 1 of each sampler equals its (M, c, q_pre, q_post) at every t."""
    sch = schedules.linear(30)
    g = targets.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[1.2, -0.3], [-0.3, 0.8]], dtype=F64))
    # the last step alone (stop = T - 1) for every sampler: M, c and the noise variances
    for sampler, opts in CASES:
        t = sch.T
        c, M, G = affine_readout(monkeypatch, sampler, g.score, 2, sch, t - 1, opts)
        Mm, cc, q_pre, q_post = laws.step_maps(sampler, g.affine_score(), sch, t, **opts)
        torch.testing.assert_close(M, Mm, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c, cc, rtol=1e-10, atol=1e-12)
        Mm = Mm if Mm.ndim == 2 else torch.diag(Mm)
        want = q_pre * Mm @ Mm.T + q_post * torch.eye(2, dtype=F64)
        torch.testing.assert_close(G.T @ G, want, rtol=1e-10, atol=1e-14)


def test_law_rejects_what_the_samplers_reject():
    g = targets.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    sch = schedules.linear(40)
    for bad, name in [(dict(stop=40), "stop"), (dict(stop=-1), "stop"), (dict(stop=True), "stop"),
                      (dict(eta=-0.1), "eta"), (dict(varianc="beta"), "varianc")]:
        with pytest.raises(ValueError, match=name):
            laws.law(S.ddim if "eta" in bad else S.ddpm, g.affine_score(), g, sch, **bad)
    with pytest.raises(ValueError, match="AffineScore"):
        laws.law(S.ddpm, g.score, g, sch)
    with pytest.raises(ValueError, match="Gaussian or DiagonalGaussian"):
        laws.law(S.ddpm, g.affine_score(), targets.GaussianMixture([1.0], [[0.0, 0.0]], [torch.eye(2).tolist()]),
                 sch)
    # the multistep scheme has an exact law too (chapter 02); its option is checked by the sampler's own check
    assert torch.isfinite(laws.law(S.multistep_ode, g.affine_score(), g, sch).cov).all()
    with pytest.raises(ValueError, match="alpha_factor"):
        laws.law(S.multistep_ode, g.affine_score(), g, sch, alpha_factor="yes")
    L = laws.law(S.ddpm, g.affine_score(), g, sch, stop=39)          # stop = T - 1 is a valid single step
    assert isinstance(L, targets.Gaussian) and torch.isfinite(L.cov).all()


def test_law_mixed_diagonal_score_and_full_init():
    """A diagonal score with a full initial covariance (and the reverse) uses the full propagation and agrees
    with the all-full computation."""
    dg = targets.DiagonalGaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([1.5, 0.3], dtype=F64))
    fg = targets.Gaussian(dg.loc, dg.cov)
    init_full = targets.Gaussian(torch.tensor([0.1, 0.2], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.7]],
                                                                                    dtype=F64))
    init_diag = targets.DiagonalGaussian(torch.tensor([0.1, 0.2], dtype=F64), torch.tensor([1.0, 0.7], dtype=F64))
    sch = schedules.linear(30)
    for sampler, opts in CASES:
        a = laws.law(sampler, dg.affine_score(), init_full, sch, stop=1, **opts)
        b = laws.law(sampler, fg.affine_score(), init_full, sch, stop=1, **opts)
        torch.testing.assert_close(a.loc, b.loc)
        torch.testing.assert_close(a.cov, b.cov)
        a = laws.law(sampler, fg.affine_score(), init_diag, sch, stop=1, **opts)
        b = laws.law(sampler, dg.affine_score(), init_diag, sch, stop=1, **opts)
        assert isinstance(b, targets.DiagonalGaussian) and isinstance(a, targets.Gaussian)
        torch.testing.assert_close(a.loc, b.loc)
        torch.testing.assert_close(a.cov, b.cov)
        assert math.isfinite(float(a.cov.sum()))


# ---- survivors of the sampled mutation run (book/contributing.md): the tests that kill them ------------------------
def test_schedule_names_and_extra_step():
    assert schedules.ou(0.01, 5.0, name="ou5").name == "ou5"
    assert schedules.theory(100, name="th").name == "th"
    # without a flat phase (c1 < c0) beta_{T+1} follows the formula, not beta_T
    T, c0, c1 = 100, 4.0, 2.0
    sch = schedules.theory(T, c0, c1, max_alphabar_T=None)
    h = c1 * math.log(T) / T
    want = h * math.exp(min(-c0 * math.log(T) + (T + 1) * math.log1p(h), 0.0))
    assert float(sch.beta[T + 1]) == pytest.approx(want, rel=1e-12)
    assert float(sch.beta[T + 1]) != pytest.approx(float(sch.beta[T]), rel=1e-6)


def test_lab_accepts_numpy_and_tensor_integers():
    import numpy as np
    sch = schedules.linear(50)
    assert sch.lab(np.int64(0)) == 0 and sch.lab(torch.tensor(0)) == 0
    assert sch.lab(np.int64(51)) == sch.log_alphabar[51]


@pytest.mark.parametrize("sampler", [S.ddpm, S.ddim, S.flow_ode, S.accel_ode, S.accel_sde, S.multistep_ode],
                         ids=lambda f: f.__name__)
def test_errors_name_the_sampler(sampler):
    sch = schedules.linear(50)
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(FloatingPointError, match=rf"^{sampler.__name__}: non-finite values at step t = "):
        state = {"n": 0}

        def score(y, lab):
            state["n"] += 1
            return -y if state["n"] <= 2 else torch.full_like(y, math.nan)
        sampler(score, x, sch, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"^{sampler.__name__}: score must return"):
        sampler(lambda y, lab: y[:, :1], x, sch, generator=torch.Generator().manual_seed(0))


def test_progress_bars_are_labelled(capsys):
    sch = schedules.linear(50)
    x = torch.zeros(2, 2, dtype=F64)
    for sampler, desc in [(S.ddpm, "DDPM"), (S.ddim, "DDIM"), (S.flow_ode, "flow ODE"), (S.accel_ode, "accelerated ODE"),
                          (S.accel_sde, "accelerated SDE"), (S.multistep_ode, "multistep ODE")]:
        sampler(lambda y, lab: -y, x, sch, progress=True, generator=torch.Generator().manual_seed(0))
        assert desc in capsys.readouterr().err, desc


def test_multistep_ode_against_its_formula():
    """Scheme 2 step by step: the flow-ODE step first, then the multistep correction with f = sqrt(alpha_{t+1})
    (alpha_factor) or 1."""
    sch = schedules.linear(40)
    g = targets.Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[1.5, 0.4], [0.4, 0.6]], dtype=F64))
    x0 = torch.tensor([[0.3, -1.2], [2.0, 0.1]], dtype=F64)
    stop = 30
    for alpha_factor in (True, False):
        x, s_prev = x0.clone(), None
        beta, alpha = sch.beta, sch.alpha
        for t in range(sch.T, stop, -1):
            s = g.score(x, sch.lab(t))
            if s_prev is None:
                x = (x + 0.5 * beta[t] * s) / alpha[t].sqrt()
            else:
                f = alpha[t + 1].sqrt() if alpha_factor else 1.0
                k = beta[t] ** 2 / (4 * beta[t + 1])
                x = (x + 0.5 * beta[t] * s + k * (s - f * s_prev)) / alpha[t].sqrt()
            s_prev = s
        out = S.multistep_ode(g.score, x0, sch, stop=stop, alpha_factor=alpha_factor).x
        torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def test_law_when_the_score_changes_kind():
    """accel_ode reads the score at t and t + 1: a diagonal A at one level and a full one at the next."""
    g = targets.Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[1.5, 0.0], [0.0, 0.6]], dtype=F64))
    full = g.affine_score()
    sch = schedules.linear(30)
    cut = float(sch.lab(20))

    def coeffs(lab):
        A, b = full.coeffs(lab)
        return (torch.diagonal(A).clone(), b) if float(lab) > cut else (A, b)
    mixed = targets.AffineScore(coeffs)
    init = targets.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    a = laws.law(S.accel_ode, mixed, init, sch, stop=1)
    b = laws.law(S.accel_ode, full, init, sch, stop=1)
    torch.testing.assert_close(a.loc, b.loc)
    torch.testing.assert_close(a.cov, b.cov)


def test_fit_slope_keeps_its_level_and_log_factor_message():
    fit = metrics.fit_slope([2.0, 4.0, 8.0, 16.0], [1.0, 0.5, 0.26, 0.12], level=0.9, log_power=1.0)
    assert fit.level == 0.9 and fit.log_power == 1.0
    assert "90% CI" in str(fit)
    with pytest.raises(ValueError, match="exceed 1"):
        metrics.fit_slope([1.0, 4.0, 8.0], [1.0, 0.5, 0.26], log_power=1.0)


def test_kl_knn_defaults_and_its_minimum_sample():
    g = targets.Gaussian(torch.zeros(2, dtype=F64), torch.tensor([[4.0, 1.9], [1.9, 1.0]], dtype=F64))
    x = g.sample(400, generator=torch.Generator().manual_seed(0))
    a, b = metrics.kl_knn(x, g.log_prob), metrics.kl_knn(x, g.log_prob, whiten=True)
    assert torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="at least 80 points"):
        metrics.kl_knn(x[:50], g.log_prob)           # 2 n_batches (k + 1) = 80 with the defaults


def test_kl_mc_wants_one_dimensional_samples():
    with pytest.raises(ValueError, match="logp_x must be a 1-D"):
        metrics.kl_mc(torch.zeros(2, 2, dtype=F64), torch.zeros(2, 2, dtype=F64))


def test_kl_grid_where_p_vanishes():
    """Points where p = 0 (log p = -inf) add nothing, whatever q is there."""
    pts, cell = metrics.grid(-8.0, 8.0, 161, 1)
    g, h = targets.Gaussian(torch.zeros(1, dtype=F64), torch.eye(1, dtype=F64)), \
        targets.Gaussian(torch.full((1,), 0.5, dtype=F64), torch.eye(1, dtype=F64))
    logp, logq = g.log_prob(pts), h.log_prob(pts)
    cut = logp.clone()
    cut[:20] = -math.inf                         # p set to 0 on the left tail (mass ~1e-10 there)
    kl = metrics.kl_grid(cut, logq, cell)
    assert math.isfinite(float(kl))
    assert float(kl) == pytest.approx(float(metrics.kl_grid(logp, logq, cell)), abs=1e-8)
    assert float(kl) == pytest.approx(0.125, abs=1e-6)


def test_diagonal_posterior_equals_the_full_one():
    dg = targets.DiagonalGaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([1.5, 0.3], dtype=F64))
    fg = targets.Gaussian(dg.loc, dg.cov)
    x = torch.tensor([[0.3, -1.2], [2.0, 0.1]], dtype=F64)
    for lab in (-0.05, -0.7, -3.0):
        m, v = dg.posterior_x0(x, lab)
        M, C = fg.posterior_x0(x, lab)
        torch.testing.assert_close(m, M)
        torch.testing.assert_close(torch.diag(v), C[0])


def test_mixture_to_device_keeps_the_law():
    mix = targets.GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [[[1.0, 0.2], [0.2, 0.5]],
                                                                        [[0.7, 0.0], [0.0, 1.3]]])
    for m in (mix, targets.Gaussian([0.5, 0.0], [[1.0, 0.3], [0.3, 2.0]])):
        moved = m.to("cpu")
        assert type(moved) is type(m)
        for a, b in ((moved.weights, m.weights), (moved.means, m.means), (moved.covs, m.covs)):
            assert torch.equal(a, b)


def test_schedule_checks_name_their_argument():
    la = -0.1 * torch.ones(100, dtype=F64)
    with pytest.raises(ValueError, match="max_alphabar_T"):
        schedules.VPSchedule(la, max_alphabar_T=1.5)
    with pytest.raises(ValueError, match="log_alpha_next"):
        schedules.VPSchedule(la, log_alpha_next=0.1)
    with pytest.raises(ValueError, match="beta_next"):
        schedules.from_betas(0.1 * torch.ones(100, dtype=F64), beta_next=1.5)
    with pytest.raises(ValueError, match="too small"):
        schedules.linear(20)                     # beta_end * 1000 / T = 1 exactly
    assert schedules.linear(100).name == "linear(T=100)"
    assert schedules.linear(100, name="L").name == "L"


def test_kde_and_kl_kde_edges():
    data = torch.randn(40, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    assert metrics.kde_logpdf(data, data[:1]).shape == (1,)        # one point is enough
    lp = torch.zeros(3, dtype=F64)
    lp[1] = -math.inf
    with pytest.raises(ValueError, match="logp_y must be finite"):
        metrics.kl_kde(data[:3], lp, data)


def test_noise_level_refuses_integer_and_bool_tensors():
    like = torch.zeros((), dtype=F64)
    for bad in (torch.tensor(False), torch.tensor(0), torch.tensor(-1)):
        with pytest.raises(ValueError, match="lab"):
            targets.noise_level(bad, like)
    sab, omab = targets.noise_level(torch.tensor(-1.0, dtype=F64), like)
    assert float(omab) == pytest.approx(1 - math.exp(-1.0))


def test_mixture_symmetrises_its_covariances():
    c = torch.tensor([[[1.0, 0.2], [0.2 + 1e-11, 0.5]]], dtype=F64)     # asymmetric within the tolerance
    mix = targets.GaussianMixture([1.0], [[0.0, 0.0]], c)
    assert torch.equal(mix.covs, mix.covs.transpose(1, 2))
    assert float(mix.covs[0, 0, 1]) == pytest.approx(0.2 + 0.5e-11, abs=1e-15)


# ---- survivors of the second sample (seed 1818) --------------------------------------------------------------------
def test_schedule_constructors_refuse_by_name():
    assert schedules.theory(100).name == "theory(T=100, c0=2.0, c1=4.0)"
    sch = schedules.linear(100)
    with pytest.raises(ValueError, match="steps"):
        sch.subsample([0, 1, 105])                         # beyond T, though the second step is fine
    with pytest.raises(ValueError, match="^beta_start"):
        schedules.linear(100, beta_start=1.0)
    with pytest.raises(ValueError, match="^s must"):
        schedules.cosine(100, s=-0.5)
    with pytest.raises(ValueError, match="^betas"):
        schedules.from_betas([0.5, 1.0])
    with pytest.raises(ValueError, match="^alphabar"):
        schedules.from_alphabar([0.9, 0.9, 0.1])
    # a whole number of steps up to a relative 1e-9 (here 1.3e-8 absolute at t_end = 27150.3)
    assert schedules.ou(0.1, 27150.30000001264).T == 271503


def test_sampler_defaults_and_trajectories(capsys):
    sch = schedules.linear(50)
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for sampler in (S.ddpm, S.ddim, S.flow_ode, S.accel_ode, S.accel_sde, S.multistep_ode):
        out = sampler(lambda y, lab: -y, x, sch, stop=45, generator=torch.Generator().manual_seed(1))
        assert out.trajectory is None                      # no trajectory kept by default
        assert capsys.readouterr().err == ""               # no progress bar by default
        out = sampler(lambda y, lab: -y, x, sch, stop=45, generator=torch.Generator().manual_seed(1), trajectory=True)
        assert len(out.trajectory) == 6 and torch.equal(out.trajectory[0], x)
        assert all(torch.is_tensor(y) and y.shape == x.shape for y in out.trajectory)
        assert torch.equal(out.trajectory[-1], out.x)


def test_deterministic_ddim_draws_nothing():
    sch = schedules.linear(50)
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    S.ddim(lambda y, lab: -y, torch.ones(2, 2, dtype=F64), sch, eta=0.0, generator=g)
    assert torch.equal(g.get_state(), state)


def test_check_options_lists_the_options():
    with pytest.raises(ValueError, match=r"its options: \['variance'\]"):
        S.check_options(S.ddpm, {"eta": 0.5})
    with pytest.raises(ValueError, match="its options: none"):
        S.check_options(S.flow_ode, {"eta": 0.5})


def test_tables_of_several_samplers_are_kept_together():
    sch = schedules.linear(50)
    x = torch.zeros(1, 2, dtype=F64)
    S.flow_ode(lambda y, lab: -y, x, sch)
    S.ddim(lambda y, lab: -y, x, sch)
    assert len(sch._sampler_tables) == 2


def test_law_of_ddim_defaults_to_eta_zero():
    g = targets.Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[1.5, 0.4], [0.4, 0.6]], dtype=F64))
    init = targets.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    sch = schedules.linear(30)
    a, b = laws.law(S.ddim, g.affine_score(), init, sch), laws.law(S.ddim, g.affine_score(), init, sch, eta=0.0)
    assert torch.equal(a.loc, b.loc) and torch.equal(a.cov, b.cov)


def test_diagonal_hellinger_equals_the_full_one_and_the_1d_formula():
    p = targets.DiagonalGaussian(torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))
    q = targets.DiagonalGaussian(torch.tensor([-0.2, 0.4], dtype=F64), torch.tensor([1.5, 0.7], dtype=F64))
    h = metrics.hellinger_gaussian(p, q)
    torch.testing.assert_close(h, metrics.hellinger_gaussian(targets.Gaussian(p.loc, p.cov), targets.Gaussian(q.loc, q.cov)))
    bc = 1.0
    for m1, v1, m2, v2 in zip(p.loc.tolist(), p.var.tolist(), q.loc.tolist(), q.var.tolist()):
        bc *= math.sqrt(2 * math.sqrt(v1 * v2) / (v1 + v2)) * math.exp(-0.25 * (m1 - m2) ** 2 / (v1 + v2))
    assert float(h) == pytest.approx(math.sqrt(1 - bc), rel=1e-12)


def test_kl_mc_with_two_samples_and_kl_knn_batches():
    est, se = metrics.kl_mc(torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([-1.0, 0.0], dtype=F64))
    assert float(est) == 1.0 and float(se) == 0.0
    g = targets.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    x = g.sample(240, generator=torch.Generator().manual_seed(2))
    full, se, shift = metrics.kl_knn(x, g.log_prob, k=3, n_batches=4)
    b = torch.stack([-metrics.knn_entropy(z, k=3) - g.log_prob(z).mean() for z in x.chunk(4)])
    torch.testing.assert_close(se, b.std() / 2)
    torch.testing.assert_close(shift, b.mean() - full)


def test_sampling_draws_follow_their_formula():
    """The draws themselves (same generator, same order): x = sqrt(ab) m_k + U_k diag(sqrt(v_k)) eps."""
    mix = targets.GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [[[1.0, 0.2], [0.2, 0.5]],
                                                                        [[0.7, 0.0], [0.0, 1.3]]])
    lab = -0.4
    g = torch.Generator().manual_seed(5)
    x = mix.sample(6, lab, generator=g)
    g = torch.Generator().manual_seed(5)
    k = torch.multinomial(mix.weights, 6, replacement=True, generator=g)
    eps = torch.randn(6, 2, dtype=F64, generator=g)
    sab = math.exp(0.5 * lab)
    for i in range(6):
        C = sab ** 2 * mix.covs[k[i]] + (1 - sab ** 2) * torch.eye(2, dtype=F64)
        lam, U = torch.linalg.eigh(C)
        torch.testing.assert_close(x[i], sab * mix.means[k[i]] + U @ (lam.sqrt() * eps[i]))


def test_sample_mixture_cols_under_a_float32_default():
    w = torch.tensor([[0.3, 0.7]], dtype=F64).T.expand(2, 3).contiguous()
    means = torch.zeros(2, 2, 3, dtype=F64)
    covs = torch.eye(2, dtype=F64).expand(2, 2, 2).contiguous()
    old, out = torch.get_default_dtype(), []
    try:
        for default in (torch.float64, torch.float32):
            torch.set_default_dtype(default)
            out.append(targets.sample_mixture_cols(w, means, covs, generator=torch.Generator().manual_seed(0)))
    finally:
        torch.set_default_dtype(old)
    assert out[1].dtype == F64 and torch.equal(*out)


def test_affine_scores_add_in_every_kind():
    dg = targets.DiagonalGaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([1.5, 0.3], dtype=F64))
    fg = targets.Gaussian(torch.tensor([0.2, 0.1], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.7]], dtype=F64))
    x = torch.tensor([[0.3, -1.2], [2.0, 0.1]], dtype=F64)
    for a, b in ((dg, dg), (dg, fg), (fg, dg), (fg, fg)):
        s = a.affine_score() + b.affine_score()
        torch.testing.assert_close(s(x, -0.3), a.score(x, -0.3) + b.score(x, -0.3))


# ---- survivors of the third sample (seed 181818) -------------------------------------------------------------------
def test_schedule_construction_details():
    sch = schedules.linear(1000, scale_with_T=False)
    torch.testing.assert_close(sch.beta[1:1001], torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    with pytest.raises(ValueError, match="steps"):
        sch.subsample([1, 5, 10])                          # must start at 0
    assert schedules.VPSchedule(-0.1 * torch.ones(100, dtype=F64)).name == ""
    assert schedules.from_alphabar([0.5], max_alphabar_T=None).T == 1


def test_sampler_noise_keeps_x_dtype_under_a_float32_default():
    sch = schedules.linear(50)
    x = torch.zeros(2, 2, dtype=F64)
    old, out = torch.get_default_dtype(), []
    try:
        for default in (torch.float64, torch.float32):
            torch.set_default_dtype(default)
            out.append(S.ddpm(lambda y, lab: -y, x, sch, stop=40, generator=torch.Generator().manual_seed(0)).x)
    finally:
        torch.set_default_dtype(old)
    assert torch.equal(*out)


def test_slope_fit_predicts_its_data():
    x = torch.tensor([10.0, 20.0, 40.0, 80.0], dtype=F64)
    fit = metrics.fit_slope(x, 3.0 * x ** -1.5)
    torch.testing.assert_close(fit.predict(x), 3.0 * x ** -1.5)


def test_metric_arguments_named_exactly():
    with pytest.raises(ValueError, match="cell"):
        metrics.tv_grid(torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64), math.nan)
    with pytest.raises(ValueError, match="^C2 must"):
        metrics.frechet_distance(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64),
                                 torch.eye(3, dtype=F64))


def test_singular_mixture_away_from_lab_zero_and_off_every_support():
    mix = targets.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [2.0, 0.0]], [[[1.0, 0.0], [0.0, 0.0]],
                                                                        [[0.0, 0.0], [0.0, 1.0]]])
    x = torch.tensor([[0.5, 1.0]], dtype=F64)                  # off both supports (y = 0 and x = 2)
    assert mix.log_prob(x).item() == -math.inf
    with pytest.raises(ValueError, match="off the support of every"):
        mix.score(x)
    s, H = mix.score_and_jacobian(x, -0.5)                      # regular at lab < 0: the Hessian exists
    assert torch.isfinite(H).all() and torch.isfinite(s).all()


def test_short_axis_helpers_on_three_dimensional_input():
    x = torch.randn(2, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(targets.logsumexp_last(x), torch.logsumexp(x, -1))
    big = torch.randn(700, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))   # the strided path
    torch.testing.assert_close(targets.logsumexp_last(big), torch.logsumexp(big, -1))


def test_diagonal_score_jacobian_shape():
    dg = targets.DiagonalGaussian(torch.tensor([1.0, -0.5, 0.0], dtype=F64), torch.tensor([1.5, 0.3, 2.0], dtype=F64))
    J = dg.score_jacobian(torch.zeros(5, 3, dtype=F64), -0.2)
    assert J.shape == (5, 3, 3)
    torch.testing.assert_close(J[0], targets.Gaussian(dg.loc, dg.cov).score_jacobian(torch.zeros(1, 3, dtype=F64), -0.2)[0])
