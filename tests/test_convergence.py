"""Chapter 002 algorithms against independent references (laws.law, Monte Carlo, autograd, closed forms)."""
import math

import pytest
import torch

from diffnotes import convergence as C, laws, metrics, samplers as S, schedules as sc
from diffnotes.targets import DiagonalGaussian, Gaussian, GaussianMixture

torch.set_default_dtype(torch.float64)
TGT = DiagonalGaussian(torch.tensor([1.5, -0.4]), torch.tensor([0.1, 2.0]))
INIT = DiagonalGaussian(torch.zeros(2), torch.ones(2))
MIX = GaussianMixture(torch.tensor([0.6, 0.4]), torch.tensor([[-1.0], [1.5]]), torch.tensor([[[0.15]], [[0.05]]]))


@pytest.mark.parametrize("name", list(C.LAW_SAMPLERS))
def test_law_errors_diagonal_path_matches_full_matrix_path(name):
    """laws.law on the target in its eigenbasis (diagonal, O(d)) against the same target rotated (full matrices):
    KL is rotation invariant, so the two must agree."""
    sch = sc.theory(70, 1, 6)
    opts = {"variance": "beta_over_alpha"} if name == "ddpm" else {}
    _, kl, _ = C.law_errors(name, TGT.loc, TGT.var, sch, **opts)
    Q, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0], [-0.5, 1.0]]))
    rot = Gaussian(Q @ TGT.loc, (Q * TGT.var) @ Q.T)
    fn, base = C.LAW_SAMPLERS[name]
    out = laws.law(fn, rot.affine_score(), Gaussian(torch.zeros(2), torch.eye(2)), sch, stop=1, **base, **opts)
    assert abs(float(kl.sum()) - float(metrics.kl_gaussian(rot.marginal(sch.lab(1)), out))) < 1e-10


@pytest.mark.parametrize("name", list(C.LAW_SAMPLERS))
def test_exact_laws_match_monte_carlo(name):
    """The exact law of every sampler (laws.law, through law_errors' path) against the sampler itself (100k runs):
    means within 5 and variances within 6 standard errors; a law with the variance 5% off fails."""
    sch = sc.theory(60, 1, 6)
    fn, base = C.LAW_SAMPLERS[name]
    opts = {"variance": "beta_over_alpha"} if name == "ddpm" else {}
    L = laws.law(fn, TGT.affine_score(), INIT, sch, stop=1, **base, **opts)
    g = torch.Generator().manual_seed(1)
    n = 100_000
    x = fn(TGT.score, torch.randn(n, 2, generator=g), sch, stop=1, generator=g, **base, **opts).x
    m, v = L.loc, L.var
    assert ((x.mean(0) - m).abs() < 5 * (v / n).sqrt()).all()
    assert ((x.var(0) - v).abs() < 6 * v * math.sqrt(2 / n)).all()
    assert not ((x.var(0) - 1.05 * v).abs() < 6 * v * math.sqrt(2 / n)).all()


def test_multistep_reduces_to_flow_ode_when_correction_vanishes():
    sch = sc.linear(30)
    c = torch.tensor([0.3, -0.2])
    score = lambda y, lab: c.expand_as(y)  # noqa: E731  constant: s_t - s_{t+1} = 0
    x = torch.randn(5, 2)
    a = S.multistep_ode(score, x, sch, alpha_factor=False).x
    assert torch.allclose(a, S.flow_ode(score, x, sch).x, atol=1e-12)
    # with the sqrt(alpha) factor the correction does not vanish for a constant score: it must differ
    assert not torch.allclose(S.multistep_ode(score, x, sch).x, a, atol=1e-8)
    cs = S.CountingScore(score)
    assert S.multistep_ode(cs, x, sch, stop=2).nfe == cs.calls == 28


def test_accel_sde_reduces_to_ddpm_mean_without_midpoint_noise():
    """accel_sde and DDPM share the mean map: their exact output means coincide (the noise only enters variances)."""
    sch = sc.theory(40, 1, 6)
    m1 = laws.law(S.accel_sde, TGT.affine_score(), INIT, sch, stop=1).loc
    m2 = laws.law(S.ddpm, TGT.affine_score(), INIT, sch, stop=1).loc
    assert torch.allclose(m1, m2, atol=1e-13)


def test_tv_gaussian_1d_against_quadrature():
    xs = torch.linspace(-20, 20, 400_001)
    for (m1, v1, m2, v2) in [(0., 1., 0.3, 2.), (0., 1., 1., 1.), (0.5, 0.1, 0.4, 0.12)]:
        p = torch.exp(-0.5 * (xs - m1) ** 2 / v1) / math.sqrt(2 * math.pi * v1)
        q = torch.exp(-0.5 * (xs - m2) ** 2 / v2) / math.sqrt(2 * math.pi * v2)
        ref = 0.5 * (p - q).abs().sum() * (xs[1] - xs[0])
        assert abs(float(C.tv_gaussian_1d(torch.tensor(m1), torch.tensor(v1), torch.tensor(m2), torch.tensor(v2)))
                   - float(ref)) < 1e-6


def test_pushforward_logdet_against_autograd_and_exact_law():
    sch = sc.theory(30, 1, 6)
    z = torch.randn(7, 1, generator=torch.Generator().manual_seed(0))
    for name in ["flow_ode", "ddim", "accel_ode"]:
        y, ld, nfe = C.pushforward(name, MIX, z, sch)
        f = lambda u: S.SAMPLERS[name](MIX.score, u, sch, stop=1).x  # noqa: E731
        assert torch.allclose(y, f(z), atol=1e-12)
        J = torch.stack([torch.autograd.functional.jacobian(f, z[i:i + 1])[0, :, 0, :] for i in range(7)])
        assert torch.allclose(ld, torch.logdet(J), atol=1e-9)
        assert nfe == (2 if name == "accel_ode" else 1) * 29


def test_tv_quadrature_source_matches_exact_gaussian_tv():
    """TV from the change of variables equals the closed-form TV of the exact output law."""
    tgt = DiagonalGaussian(torch.tensor([1.0]), torch.tensor([0.2]))
    sch = sc.theory(40, 1, 6)
    z, cell = metrics.grid(-9, 9, 4001, 1)
    logz = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    y, ld, _ = C.pushforward("flow_ode", tgt, z, sch)
    tv, kl = C.tv_quadrature_source(logz, tgt.log_prob(y, sch.lab(1)), ld, cell)
    out = laws.law(S.flow_ode, tgt.affine_score(), DiagonalGaussian(torch.zeros(1), torch.ones(1)), sch, stop=1)
    m, v = out.loc, out.var
    lab = sch.lab(1)
    ref = C.tv_gaussian_1d(m, v, torch.exp(0.5 * lab) * tgt.loc, torch.exp(lab) * tgt.var - torch.expm1(lab))
    assert abs(float(tv) - float(ref[0])) < 1e-4 * float(ref[0]) + 1e-8
    klref = metrics.kl_gaussian(DiagonalGaussian(m, v), tgt.marginal(lab))
    assert abs(float(kl) - float(klref)) < 1e-6


def test_mc_estimators_are_unbiased_with_their_error_bars():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200_000, generator=g)
    # p = N(0,1), q = N(0.3, 1): log(q/p) = 0.3 x - 0.045
    lr = 0.3 * x - 0.045
    tv, se = C.tv_mc(lr)
    exact = 2 * 0.5 * math.erf(0.15 / math.sqrt(2))
    assert abs(float(tv) - exact) < 4 * float(se)
    kl, se = C.kl_mc_stable(lr)
    assert abs(float(kl) - 0.045) < 4 * float(se)


def test_oscillating_score_errors_are_set_independently():
    sch = sc.theory(20, 1, 6)
    g = torch.Generator().manual_seed(0)
    a = C.OscillatingScore(TGT, 2, eps_score=0.3)
    l2, jac = C.score_errors(a, TGT, sch, 2000, generator=g)
    assert abs(l2 - 0.3) < 1e-12 and jac < 1e-12
    b = C.OscillatingScore(TGT, 2, eps_jac=1.0, omega=400.0)
    l2, jac = C.score_errors(b, TGT, sch, 2000, generator=g)
    assert l2 < 0.01 and 0.5 < jac <= 1.0
    # Jacobian against autograd
    x = torch.randn(3, 2, generator=g).requires_grad_(True)
    J = torch.stack([torch.autograd.functional.jacobian(lambda u: b(u[None], sch.lab(5))[0], x[i]) for i in range(3)])
    assert torch.allclose(J, b.jacobian(x.detach(), sch.lab(5)), atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# stochastic samplers on a grid (DDPM, accelerated SDE) and the non-product d-dependence
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", [("ddpm", {"variance": "beta_over_alpha"}), ("ddpm", {"variance": "beta"}),
                                       ("accel_sde", {})])
def test_stochastic_grid_law_matches_exact_gaussian_law(name, opts):
    """On a Gaussian target the output law is Gaussian and known exactly (laws.law): the grid density must match it
    to quadrature accuracy, through both the quadrature and the change-of-variables branches."""
    tgt = DiagonalGaussian(torch.tensor([2.0]), torch.tensor([0.05]))
    sch = sc.theory(120, 1, 6)
    xs = torch.linspace(-7.0, 7.0, 200)
    p = C.stochastic_grid_law(name, tgt, sch, xs, **opts)
    out = laws.law(S.SAMPLERS[name], tgt.affine_score(), DiagonalGaussian(torch.zeros(1), torch.ones(1)), sch,
                   stop=1, **opts)
    m, v = out.loc, out.var
    q = torch.exp(-0.5 * (xs - m) ** 2 / v) / torch.sqrt(2 * math.pi * v)
    assert float(0.5 * (p - q).abs().sum() * (xs[1] - xs[0])) < 1e-6


@pytest.mark.parametrize("name,opts", [("ddpm", {"variance": "beta_over_alpha"}), ("accel_sde", {})])
def test_stochastic_grid_law_matches_monte_carlo_on_mixture(name, opts):
    """The grid density of the sampler on the (non-Gaussian) mixture against the sampler itself: the CDF at 15
    quantiles within 5 binomial standard errors (100k runs)."""
    sch = sc.theory(30, 1, 6)
    xs = torch.linspace(-7.0, 7.0, 300)
    dx = float(xs[1] - xs[0])
    p = C.stochastic_grid_law(name, MIX, sch, xs, **opts)
    F = torch.cumsum(p, 0) * dx - 0.5 * p * dx                  # CDF at the grid points (trapezoid)
    n = 100_000
    g = torch.Generator().manual_seed(3)
    y = S.SAMPLERS[name](MIX.score, torch.randn(n, 1, generator=g), sch, stop=1, generator=g, **opts).x[:, 0]
    idx = torch.searchsorted(F, torch.linspace(0.03, 0.97, 15))
    Fe = (y[None, :] <= xs[idx][:, None]).double().mean(1)
    se = (F[idx] * (1 - F[idx]) / n).sqrt()
    assert ((Fe - F[idx]).abs() < 5 * se + 1e-4).all(), (Fe - F[idx]).abs().max()
    # and it is not the target's CDF at t = 1 (the test can tell a sampler error of this size)
    Fx = torch.cumsum(torch.exp(MIX.log_prob(xs[:, None], sch.lab(1))), 0) * dx
    assert (Fx[idx] - F[idx]).abs().max() > 10 * se.max()


def test_stochastic_grid_law_rejects_bad_input():
    sch = sc.theory(20, 1, 6)
    with pytest.raises(ValueError, match="name"):
        C.stochastic_grid_law("flow_ode", MIX, sch, torch.linspace(-5, 5, 50))
    with pytest.raises(ValueError, match="stop"):
        C.stochastic_grid_law("ddpm", MIX, sch, torch.linspace(-5, 5, 50), stop=20)


def test_coupled_errors_against_independent_references():
    """No perturbation: the full-matrix path reproduces the O(d) eigenbasis path.  With a dense perturbation:
    eps_score against Monte Carlo over X_t, eps_Jacobi the operator norm, and the perturbation's effect
    KL(p0 || p_dA) is positive and roughly quadratic in its size."""
    g = torch.Generator().manual_seed(0)
    d = 5
    tgt = DiagonalGaussian(torch.randn(d, generator=g), torch.linspace(0.1, 2.0, d))
    sch = sc.theory(60, 1, 6)
    W = C.dense_perturbation(d, generator=g)
    r0 = C.coupled_errors("flow_ode", tgt, torch.zeros(d, d), sch)
    _, kl, _ = C.law_errors("flow_ode", tgt.loc, tgt.var, sch)
    assert abs(r0["kl_target"] - float(kl.sum())) < 1e-9 and r0["kl_pert"] < 1e-12
    r1 = C.coupled_errors("flow_ode", tgt, 0.01 * W, sch)
    r2 = C.coupled_errors("flow_ode", tgt, 0.02 * W, sch)
    assert 3.0 < r2["kl_pert"] / r1["kl_pert"] < 5.0
    n = 4000
    mc = torch.stack([((tgt.sample(n, sch.lab(t), generator=g) @ (0.01 * W).T) ** 2).sum(-1).mean()
                      for t in range(1, sch.T + 1)]).mean().sqrt()
    assert abs(float(mc) - r1["eps_score"]) < 0.03 * r1["eps_score"]
    assert abs(r1["eps_jacobi"] - float(torch.linalg.svdvals(0.01 * W)[0])) < 1e-12
    with pytest.raises(ValueError, match="dA"):
        C.coupled_errors("flow_ode", tgt, torch.zeros(d + 1, d + 1), sch)


def test_mixture_errors_satisfy_pinsker_and_converge_under_refinement():
    """KL(p_Y || p_X) >= 2 TV^2 where both are small (the accelerated ODE at large T, where the unnormalised
    quadrature gave a KL below 2 TV^2, even negative), and both are stable under grid refinement."""
    sch = sc.theory(800, 1, 6)
    res = []
    for m in (300, 600):
        z, cell = metrics.grid(-7.0, 7.0, m, 1)
        tv, kl, _ = C.mixture_errors("accel_ode", MIX, sch, z, cell)
        assert float(kl) >= 2 * float(tv) ** 2 > 0
        res.append((float(tv), float(kl)))
    assert abs(res[0][0] / res[1][0] - 1) < 0.05 and abs(res[0][1] / res[1][1] - 1) < 0.1


def test_mixture_errors_mc_against_quadrature():
    """The Monte Carlo TV over the source (any d) against the 1-D source quadrature, within 4 standard errors."""
    sch = sc.theory(100, 1, 6)
    z, cell = metrics.grid(-7.0, 7.0, 2000, 1)
    tv_q = float(C.mixture_errors("flow_ode", MIX, sch, z, cell)[0])
    tv, se, nfe = C.mixture_errors_mc("flow_ode", MIX, sch, 20_000, generator=torch.Generator().manual_seed(2))
    assert abs(float(tv) - tv_q) < 4 * float(se) and nfe == 99
    with pytest.raises(ValueError, match="n must"):
        C.mixture_errors_mc("flow_ode", MIX, sch, 1.5)
    with pytest.raises(ValueError, match="sampler must"):
        C.law_errors("scheme2_ode", TGT.loc, TGT.var, sch)


def test_coupled_mixture_is_not_a_product():
    g = torch.Generator().manual_seed(0)
    mix = C.coupled_mixture(4, generator=g)
    # the two components' covariances share no eigenbasis: they do not commute
    A, B = mix.covs
    assert (A @ B - B @ A).abs().max() > 1e-3
    with pytest.raises(ValueError, match="d must"):
        C.coupled_mixture(0)
