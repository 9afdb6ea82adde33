import pytest
import torch

from diffnotes import metrics
from diffnotes.targets import DiagonalGaussian, Gaussian

torch.set_default_dtype(torch.float64)


def _g(seed, d=4):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g)
    return Gaussian(torch.randn(d, generator=g), A @ A.T + 0.5 * torch.eye(d))


def test_kl_gaussian_against_torch_distributions():
    p, q = _g(0), _g(1)
    ref = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(p.loc, p.cov),
                                            torch.distributions.MultivariateNormal(q.loc, q.cov))
    assert float(metrics.kl_gaussian(p, q)) == pytest.approx(float(ref), rel=1e-10)
    dp, dq = DiagonalGaussian(p.loc, p.cov.diagonal()), DiagonalGaussian(q.loc, q.cov.diagonal())
    ref_d = torch.distributions.kl_divergence(torch.distributions.Normal(dp.loc, dp.var.sqrt()),
                                              torch.distributions.Normal(dq.loc, dq.var.sqrt())).sum()
    assert float(metrics.kl_gaussian(dp, dq)) == pytest.approx(float(ref_d), rel=1e-10)
    assert float(metrics.kl_gaussian(dp, Gaussian(dq.loc, dq.cov))) == pytest.approx(float(ref_d), rel=1e-10)


def test_hellinger_bounds_tv_on_a_grid():
    p = Gaussian(torch.tensor([0.0, 0.0]), torch.tensor([[1.0, 0.3], [0.3, 0.8]]))
    q = Gaussian(torch.tensor([0.5, -0.2]), torch.tensor([[1.3, 0.0], [0.0, 0.6]]))
    pts, cell = metrics.grid(-8, 8, 401, 2)
    tv, mp, mq = metrics.tv_grid(p.log_prob(pts), q.log_prob(pts), cell)
    assert abs(mp) < 1e-6 and abs(mq) < 1e-6
    H = float(metrics.hellinger_gaussian(p, q))
    assert H ** 2 <= float(tv) <= 2 ** 0.5 * H
    kl = float(metrics.kl_grid(p.log_prob(pts), q.log_prob(pts), cell))
    assert kl == pytest.approx(float(metrics.kl_gaussian(p, q)), rel=1e-5)


def test_kl_mc_within_its_error_bar():
    p, q = _g(2, 3), _g(3, 3)
    x = p.sample(100_000, generator=torch.Generator().manual_seed(0))
    est, se = metrics.kl_mc(p.log_prob(x), q.log_prob(x))
    assert abs(float(est) - float(metrics.kl_gaussian(p, q))) < 4 * float(se)


def test_fit_slope_recovers_exponent_and_interval_covers():
    x = torch.logspace(1, 4, 12)
    g = torch.Generator().manual_seed(0)
    y = 3 * x ** -1.5 * torch.exp(0.05 * torch.randn(12, generator=g))
    fit = metrics.fit_slope(x, y)
    assert fit.ci[0] < -1.5 < fit.ci[1]
    assert fit.ci[1] - fit.ci[0] < 0.1
    y2 = x ** -1.0 * torch.log(x) ** 2
    assert metrics.fit_slope(x, y2).slope > -0.9              # the log factor biases a plain fit upwards
    assert metrics.fit_slope(x, y2, log_power=2).slope == pytest.approx(-1.0, abs=1e-10)
    with pytest.raises(ValueError, match="positive"):
        metrics.fit_slope(x, -y)


def test_frechet_distance_closed_form_in_1d():
    d = metrics.frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([0.0]), torch.tensor([[1.0]]))
    assert float(d) == pytest.approx(1.0 + (2.0 - 1.0) ** 2)
