"""Chapter 002 algorithms against independent references (laws.law, Monte Carlo, autograd, closed forms)."""
import math

import pytest
import torch

from diffnotes import convergence as C, laws, metrics, samplers as S, schedules as sc
from diffnotes.targets import DiagonalGaussian, GaussianMixture

torch.set_default_dtype(torch.float64)
TGT = DiagonalGaussian(torch.tensor([1.5, -0.4]), torch.tensor([0.1, 2.0]))
INIT = DiagonalGaussian(torch.zeros(2), torch.ones(2))
MIX = GaussianMixture(torch.tensor([0.6, 0.4]), torch.tensor([[-1.0], [1.5]]), torch.tensor([[[0.15]], [[0.05]]]))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "flow_ode", "accel_ode", "accel_sde"])
def test_diag_law_matches_general_law(name):
    sch = sc.theory(70, 1, 6)
    A, b = C.diag_coeffs(TGT.loc, TGT.var, sch)
    m, v = C.diag_law(name, A, b, sch, INIT.loc, INIT.var, stop=1)
    ref = laws.law(S.SAMPLERS[name], TGT.affine_score(), INIT, sch, stop=1)
    assert torch.allclose(m, ref.loc, atol=1e-12) and torch.allclose(v, ref.var, atol=1e-12)


@pytest.mark.parametrize("alpha_factor", [True, False])
def test_multistep_law_matches_monte_carlo(alpha_factor):
    """The exact law of the multistep schemes (diag_law) against the sampler itself on 100k runs."""
    sch = sc.theory(60, 1, 6)
    name = "multistep_ode" if alpha_factor else "scheme2_ode"
    A, b = C.diag_coeffs(TGT.loc, TGT.var, sch)
    m, v = C.diag_law(name, A, b, sch, INIT.loc, INIT.var, stop=1)
    g = torch.Generator().manual_seed(1)
    n = 100_000
    x = S.multistep_ode(TGT.score, torch.randn(n, 2, generator=g), sch, alpha_factor=alpha_factor, stop=1).x
    assert ((x.mean(0) - m).abs() < 5 * (v / n).sqrt()).all()
    assert ((x.var(0) - v).abs() < 6 * v * math.sqrt(2 / n)).all()


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
    """accel_sde with the midpoint noise removed (Z_t = 0) is DDPM with variance (1-alpha)/(2 alpha)."""
    sch = sc.theory(40, 1, 6)
    A, b = C.diag_coeffs(TGT.loc, TGT.var, sch)
    m1, _ = C.diag_law("accel_sde", A, b, sch, INIT.loc, INIT.var)
    m2, _ = C.diag_law("ddpm", A, b, sch, INIT.loc, INIT.var)
    assert torch.allclose(m1, m2, atol=1e-13)   # the means coincide: the noise only enters the variance


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
    A, b = C.diag_coeffs(tgt.loc, tgt.var, sch)
    m, v = C.diag_law("flow_ode", A, b, sch, torch.zeros(1), torch.ones(1))
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


def test_ddpm_grid_law_matches_exact_gaussian_law():
    tgt = DiagonalGaussian(torch.tensor([0.8]), torch.tensor([0.3]))
    sch = sc.theory(40, 1, 6)
    xs = torch.linspace(-7, 7, 1401)
    p = C.ddpm_grid_law(tgt.score, sch, xs)
    A, b = C.diag_coeffs(tgt.loc, tgt.var, sch)
    m, v = C.diag_law("ddpm", A, b, sch, torch.zeros(1), torch.ones(1), variance="beta_over_alpha")
    q = torch.exp(-0.5 * (xs - m) ** 2 / v) / torch.sqrt(2 * math.pi * v)
    assert 0.5 * (p - q).abs().sum() * (xs[1] - xs[0]) < 2e-3


# ---------------------------------------------------------------------------------------------------------------
# stochastic samplers on a grid (DDPM, accelerated SDE) and the non-product d-dependence
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", [("ddpm", {"variance": "beta_over_alpha"}), ("ddpm", {"variance": "beta"}),
                                       ("accel_sde", {})])
def test_stochastic_grid_law_matches_exact_gaussian_law(name, opts):
    """On a Gaussian target the output law is Gaussian and known exactly (diag_law): the grid density must match it
    to quadrature accuracy, through both the quadrature and the change-of-variables branches."""
    tgt = DiagonalGaussian(torch.tensor([2.0]), torch.tensor([0.05]))
    sch = sc.theory(120, 1, 6)
    xs = torch.linspace(-7.0, 7.0, 200)
    p = C.stochastic_grid_law(name, tgt, sch, xs, **opts)
    A, b = C.diag_coeffs(tgt.loc, tgt.var, sch)
    m, v = C.diag_law(name, A, b, sch, torch.zeros(1), torch.ones(1), stop=1, **opts)
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
