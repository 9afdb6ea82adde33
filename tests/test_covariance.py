import math
from pathlib import Path

import pytest
import torch

from diffnotes import covariance as cv
from diffnotes import nets, schedules
from diffnotes import targets as tg

WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "weights"


def _gauss(d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return tg.Gaussian(torch.randn(d, generator=g, dtype=torch.float64), A @ A.T / d + 0.2 * torch.eye(d))


def _points(target, n, lab, seed=1):
    return target.sample(n, lab, generator=torch.Generator().manual_seed(seed))


class OracleHeads(cv.Heads):
    """Heads returning the exact regression targets of a Gaussian (to test the estimators' formulas)."""

    def __init__(self, target):
        super().__init__(sn=None, npr=None, ocm=None)
        self.target = target

    def __call__(self, method, x, lab):
        _, cov = self.target.posterior_x0(x, lab)
        a2, s2 = math.exp(float(lab)), -math.expm1(float(lab))
        var_eps = a2 / s2 * torch.diagonal(cov, dim1=-2, dim2=-1)           # Var[eps | x_t]
        eps_hat = -math.sqrt(s2) * self.target.score(x, lab)
        if method == "sn":
            return var_eps + eps_hat ** 2
        if method == "npr":
            return var_eps
        return s2 * torch.diagonal(self.target.score_jacobian(x, lab), dim1=-2, dim2=-1)


@pytest.mark.parametrize("lab", [-0.05, -1.0, -4.0])
def test_exact_methods_exact_on_gaussian(lab):
    target = _gauss()
    x = _points(target, 64, lab)
    mean, cov = target.posterior_x0(x, lab)
    full = cv.estimate("exact_full", target, x, lab)
    diag = cv.estimate("exact_diag", target, x, lab)
    assert torch.allclose(full.mean, mean, atol=1e-10) and torch.allclose(full.cov, cov, atol=1e-10)
    assert torch.allclose(diag.cov, torch.diagonal(cov, dim1=-2, dim2=-1), atol=1e-10)
    assert full.clipped == 0 and diag.clipped == 0
    heads = OracleHeads(target)
    for m in ("sn", "npr", "ocm"):
        p = cv.estimate(m, target, x, lab, heads=heads)
        assert torch.allclose(p.cov, torch.diagonal(cov, dim1=-2, dim2=-1), atol=1e-9), m


def test_hutchinson_converges_at_rate_one_over_M():
    target, lab = _gauss(d=4), -0.5
    x = _points(target, 4000, lab)
    exact = cv.estimate("exact_diag", target, x, lab).cov
    J = target.score_jacobian(x[:1], lab)[0]
    a2, s2 = math.exp(lab), -math.expm1(lab)
    offdiag = (J ** 2).sum(1) - torch.diagonal(J) ** 2                    # Var of one probe, per coordinate
    g = torch.Generator().manual_seed(3)
    for M in (1, 4, 16):
        h = cv.estimate("hutchinson", target, x, lab, M=M, generator=g, clip=False).cov
        mse = ((h - exact) ** 2).mean(0)
        theory = (s2 ** 2 / a2) ** 2 * offdiag / M
        assert torch.allclose(mse, theory, rtol=0.15), (M, mse, theory)


def test_pass_counting():
    target, lab = _gauss(d=3), -1.0
    x = _points(target, 8, lab)
    table = cv.AnalyticTable(torch.tensor([-2.0, -0.5], dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    want = {"beta": (1, 0, 0), "beta_tilde": (1, 0, 0), "analytic": (1, 0, 0), "hutchinson": (1, 5, 0),
            "exact_diag": (1, 3, 0), "exact_full": (1, 3, 0), "ocm": (1, 0, 1), "sn": (1, 0, 1)}
    cs = cv.CountedScore(target)
    for m, (f, v, h) in want.items():
        p = cv.estimate(m, cs, x, lab, M=5, table=table, heads=OracleHeads(target))
        assert (p.passes["forward"], p.passes["vjp"], p.passes["head"]) == (f, v, h), m
    assert cs.forward == len(want) and cs.vjp_calls == 5 + 3 + 3


def test_analytic_tau2_is_mean_trace_on_gaussian():
    target, lab = _gauss(d=3), -1.0
    g = torch.Generator().manual_seed(0)
    table = cv.analytic_table(target, lambda n, gen: target.sample(n, generator=gen), [-1.5, -1.0, -0.5],
                              n=200_000, generator=g)
    x = _points(target, 2, lab)
    _, cov = target.posterior_x0(x, lab)
    want = torch.diagonal(cov[0]).mean()                                  # Gaussian: Cov(x0 | xt) is constant
    assert abs(float(table.tau2(lab)) - float(want)) < 0.01 * float(want)


def test_beta_ddpm_is_sigma_t_squared_in_x0_space():
    for lab_t, lab_s in ((-1.0, -0.9), (-3.0, -0.2), (-0.5, 0.0)):
        c0, ct, lam2, beta, bt = cv.bridge_coefficients(lab_t, lab_s, 1.0)
        s2 = -math.expm1(lab_t)
        assert torch.isclose(lam2 + c0 ** 2 * s2, beta, rtol=1e-12)
        assert torch.isclose(lam2, bt)
        # the DDPM posterior mean coefficients of Ho et al.
        ab_t, ab_s = math.exp(lab_t), math.exp(lab_s)
        assert math.isclose(float(c0), math.sqrt(ab_s) * float(beta) / (1 - ab_t), rel_tol=1e-12)
        assert math.isclose(float(ct), math.sqrt(ab_t / ab_s) * (1 - ab_s) / (1 - ab_t), rel_tol=1e-12)


def test_psd_clip_counts_and_projects():
    cov = torch.tensor([[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    out, n = cv.psd_clip(cov, "full")
    assert n == 1 and torch.linalg.eigvalsh(out).min() >= -1e-12
    assert torch.allclose(out[0], torch.full((2, 2), 1.5, dtype=torch.float64))    # eigenvalue -1 removed
    out, n = cv.psd_clip(torch.tensor([[0.1, -0.2], [0.3, 0.4]], dtype=torch.float64), "diag")
    assert n == 1 and (out >= 0).all()


def test_ocm_target_is_unbiased_for_the_diagonal():
    target, lab = _gauss(d=3), -0.7
    x = _points(target, 1, lab).expand(20000, 3).contiguous()
    cs = cv.CountedScore(target)
    xg, s = cs.with_graph(x, lab)
    v = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    est = (v * cs.vjp(xg, s, v)).mean(0)
    J = target.score_jacobian(x[:1], lab)[0]
    se = (((J ** 2).sum(1) - torch.diagonal(J) ** 2) / 20000).sqrt()
    assert ((est - torch.diagonal(J)).abs() < 4 * se).all()


def test_bad_input_raises():
    target = _gauss()
    x = _points(target, 4, -1.0)
    with pytest.raises(ValueError, match="method"):
        cv.estimate("nope", target, x, -1.0)
    with pytest.raises(ValueError, match="heads"):
        cv.estimate("ocm", target, x, -1.0)
    with pytest.raises(ValueError, match="lab"):
        cv.estimate("beta", target, x, 0.0)
    with pytest.raises(ValueError, match="M"):
        cv.estimate("hutchinson", target, x, -1.0, M=0)


@pytest.mark.skipif(not (WEIGHTS / "003_score_grid.pt").exists(), reason="shipped weights not present")
def test_short_retraining_lands_near_shipped_loss():
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_003", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "train_003.py")
    tr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tr)
    shipped, meta = nets.load(WEIGHTS / "003_score_grid.pt")
    mix = tr.dataset("grid")
    sch = schedules.linear(meta["T"])
    g = torch.Generator().manual_seed(123)
    x0 = mix.sample(20000, generator=g).float()
    loss_shipped = nets.dsm_loss(shipped, x0, sch, torch.Generator().manual_seed(5)).detach().item()
    torch.set_num_threads(1)
    fresh = tr.train_score(mix, sch, steps=1500, seed=7)
    loss_fresh = nets.dsm_loss(fresh, x0, sch, torch.Generator().manual_seed(5)).detach().item()
    assert loss_shipped <= loss_fresh * 1.05                 # the shipped net is at least as trained
    assert loss_fresh < 1.3 * loss_shipped, (loss_fresh, loss_shipped)   # a short retraining lands near it


def _grid_1d_gamma(lab, n=40001):
    """E ||s||^2 / d of 003's grid by 1-D quadrature: the grid is a product of two copies of the 1-D mixture
    (1/3) sum_m N(m, 0.01), m in {-3, 0, 3}, so E||s||^2 is twice the 1-D integral of q_t' (x)^2 / q_t(x)."""
    a2, s2 = math.exp(lab), -math.expm1(lab)
    v = 0.01 * a2 + s2
    x = torch.linspace(-12, 12, n, dtype=torch.float64)
    comps = torch.stack([torch.exp(-(x - math.sqrt(a2) * m) ** 2 / (2 * v)) / math.sqrt(2 * math.pi * v)
                         for m in (-3.0, 0.0, 3.0)]) / 3
    q = comps.sum(0)
    dq = (comps * -(x - math.sqrt(a2) * torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64)[:, None]) / v).sum(0)
    return float(torch.trapezoid(dq ** 2 / q.clamp_min(1e-300), x))  # (2 coordinates x 1-D integral) / d = 1-D


@pytest.mark.parametrize("t", [20, 150, 500, 950])
def test_analytic_table_exact_matches_quadrature(t):
    """tau_0^2 from the exact per-point trace (Monte Carlo, with its standard error) agrees with tau_0^2 from
    E||s||^2 by 1-D quadrature on the product grid, to 4 standard errors; at t = 950, where the E||s||^2 route
    magnifies errors by sigma^4 / alpha^2, the exact route still has a small relative error."""
    grid = cv.mixture_003("grid")
    lab = float(schedules.linear(1000).log_alphabar[t])
    a2, s2 = math.exp(lab), -math.expm1(lab)
    tab = cv.analytic_table_exact(grid, [lab, lab / 2], n=20_000, generator=torch.Generator().manual_seed(t))
    want = (s2 - s2 ** 2 * _grid_1d_gamma(lab)) / a2
    got = float(tab.tau2(lab))
    se = float(tab.tau2_se[0])
    assert abs(got - want) <= 4 * se + 1e-9 * abs(want), (got, want, se)
    assert se < 0.05 * want
    if t == 950:                       # the Monte Carlo E||s||^2 route at the same size is far off (power)
        mc = cv.analytic_table(grid, lambda b, g: grid.sample(b, generator=g), [lab, lab / 2], n=20_000,
                               generator=torch.Generator().manual_seed(t))
        assert abs(float(mc.tau2(lab)) - want) > 100 * se


def test_analytic_table_exact_bad_input():
    with pytest.raises(ValueError, match="target"):
        cv.analytic_table_exact(object(), [-1.0])
    with pytest.raises(ValueError, match="n"):
        cv.analytic_table_exact(cv.mixture_003("grid"), [-1.0], n=1)


def test_point_errors_match_covariance_errors():
    """covariance_errors is the ratio of means of point_errors at the same points (same generator state)."""
    grid, sch = cv.mixture_003("grid"), schedules.linear(1000)
    labs = sch.log_alphabar
    e, _ = cv.covariance_errors(("beta", "exact_diag"), grid, grid, sch, [100], 64,
                                generator=torch.Generator().manual_seed(3))
    x = grid.sample(64, labs[100], generator=torch.Generator().manual_seed(3))
    pe, ref, _ = cv.point_errors(("beta", "exact_diag"), grid, grid, labs[100], x, lab_prev=labs[99])
    for m in ("beta", "exact_diag"):
        assert float(e[m][0]) == pytest.approx(float(pe[m].mean() / ref.mean()), rel=1e-6)  # float32 tensor
    assert float(pe["exact_diag"].max()) < 1e-10 * float(ref.mean())     # exact on the product grid


def test_fresh_draw_weights_are_a_second_seeded_draw():
    """Chapter 03's learned_score check uses a second score net and its OCM head (``train_003.py --fresh``): seeds 1
    and 11 recorded, the same settings as the shipped pair, a different net of the same quality."""
    net0, m0 = nets.load(WEIGHTS / "003_score_grid.pt")
    net1, m1 = nets.load(WEIGHTS / "003_score_grid_fresh.pt")
    head, mh = nets.load(WEIGHTS / "003_head_ocm_grid_net_fresh.pt")
    assert (m1["seed"], mh["seed"], m1["steps"], m1["T"]) == (1, 11, m0["steps"], m0["T"])
    assert m0["seed"] != m1["seed"]
    p0, p1 = torch.cat([p.flatten() for p in net0.parameters()]), torch.cat([p.flatten() for p in net1.parameters()])
    assert p0.shape == p1.shape and not torch.allclose(p0, p1)
    assert abs(m1["final_loss"] - m0["final_loss"]) < 0.1 * m0["final_loss"]
