import math

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


# ---- kNN entropy / KL and the kernel density estimate -------------------------------------------------------------


def _aniso(seed, d=4, scale=(1.0, 0.3, 0.05, 2.0)):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    s = torch.tensor(scale[:d])
    return Gaussian(torch.randn(d, generator=g), Q @ torch.diag(s ** 2) @ Q.T)


@pytest.mark.usefixtures("one_thread")
def test_knn_entropy_of_an_anisotropic_gaussian_against_closed_form():
    p = _aniso(0)
    H = 0.5 * float(torch.logdet(2 * math.pi * math.e * p.cov))
    x = p.sample(6000, generator=torch.Generator().manual_seed(1))
    h = float(metrics.knn_entropy(x))
    assert abs(h - H) < 0.06                      # k = 1 in d = 4: bias ~0.03 and s.d. ~0.02 at n = 6000
    assert abs(float(metrics.knn_entropy(x, k=3)) - H) < 0.06
    # a wrong unit-ball volume or a missing log det of the whitening would be off by > 0.5 nats
    with pytest.raises(ValueError, match="k"):
        metrics.knn_entropy(x, k=0)
    with pytest.raises(ValueError, match="duplicate"):
        metrics.knn_entropy(torch.cat([x[:50], x[:1]]))


@pytest.mark.usefixtures("one_thread")
def test_knn_entropy_is_affine_equivariant_when_whitened():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(2))
    A = torch.tensor([[2.0, 0.3, 0.0], [0.0, 0.1, 0.5], [1.0, 0.0, 3.0]])
    h0, h1 = metrics.knn_entropy(x), metrics.knn_entropy(x @ A.T + 5.0)
    assert float(h1) == pytest.approx(float(h0) + float(torch.linalg.slogdet(A).logabsdet), abs=1e-9)
    # without whitening only a common scale is exact
    assert float(metrics.knn_entropy(3 * x, whiten=False)) == pytest.approx(
        float(metrics.knn_entropy(x, whiten=False)) + 3 * math.log(3), abs=1e-9)


@pytest.mark.usefixtures("one_thread")
def test_kl_knn_between_two_gaussians_within_its_error_bar():
    q, p = _aniso(3), _aniso(4, scale=(1.5, 0.5, 0.2, 1.0))
    x = q.sample(4000, generator=torch.Generator().manual_seed(5))
    est, se, shift = metrics.kl_knn(x, p.log_prob)
    exact = float(metrics.kl_gaussian(q, p))
    assert exact > 1.0
    assert abs(float(est) - exact) < 4 * float(se) + 0.05
    est0, se0, _ = metrics.kl_knn(x, q.log_prob)           # p = q: true value 0
    assert abs(float(est0)) < 4 * float(se0) + 0.05
    with pytest.raises(ValueError, match="n_batches"):
        metrics.kl_knn(x, p.log_prob, n_batches=1)


@pytest.mark.usefixtures("one_thread")
def test_kde_against_scipy_and_its_smoothing_bias():
    from scipy.stats import gaussian_kde

    p = _aniso(6, d=3, scale=(1.0, 0.5, 2.0))
    g = torch.Generator().manual_seed(7)
    x, y = p.sample(2000, generator=g), p.sample(300, generator=g)
    for bw in ["silverman", "scott", 0.4]:
        ref = torch.as_tensor(gaussian_kde(x.numpy().T, bw_method=bw)(y.numpy().T)).log()
        assert torch.allclose(metrics.kde_logpdf(x, y, bandwidth=bw), ref, atol=1e-10)
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.kde_logpdf(x, y, bandwidth=-1.0)
    # far in the tails (the largest kernel term ~ e^-1000, far below float64's smallest number): still finite and
    # equal to scipy's log-space evaluation, so the largest term is taken out before exp
    far = torch.tensor([[40.0, -30.0, 60.0], [-25.0, 0.0, 0.0]], dtype=torch.float64)
    ref = torch.as_tensor(gaussian_kde(x.numpy().T, bw_method="silverman").logpdf(far.numpy().T))
    got = metrics.kde_logpdf(x, far)
    assert torch.isfinite(got).all() and torch.allclose(got, ref, rtol=1e-9)
    # the KDE of N(m, C) is close to N(m, (1 + h^2) C): the plug-in KL(p || q_KDE) matches that closed form
    q = Gaussian(p.loc + 0.2, 1.3 * p.cov)
    n = 20000
    xq, yp = q.sample(n, generator=g), p.sample(2000, generator=g)
    h2 = (n * 5 / 4.0) ** (-2.0 / 7)
    smooth = Gaussian(q.loc, (1 + h2) * q.cov)
    est, se = metrics.kl_kde(yp, p.log_prob(yp), xq)
    assert abs(float(est) - float(metrics.kl_gaussian(p, smooth))) < 4 * float(se) + 0.03


def test_kl_gaussian_or_inf_is_inf_only_for_a_singular_law():
    from diffnotes.targets import Gaussian
    p = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    q = Gaussian(torch.ones(2, dtype=torch.float64), torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64)))
    sing = Gaussian(torch.zeros(2, dtype=torch.float64), torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64)))
    # closed form for diagonal Gaussians: 1/2 sum(r - 1 - log r + dm^2 / vq), r = vp / vq
    vq = torch.tensor([2.0, 0.5], dtype=torch.float64)
    r = 1 / vq
    want = 0.5 * float((r - 1 - torch.log(r) + 1 / vq).sum())
    assert abs(metrics.kl_gaussian_or_inf(p, q) - want) < 1e-12
    assert metrics.kl_gaussian_or_inf(sing, q) == math.inf
    assert metrics.kl_gaussian_or_inf(p, sing) == math.inf


def test_knn_tree_equals_brute_force():
    """The k-d tree and the brute-force neighbours give the same entropy (to rounding), whitened or not, k = 1, 3."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(3000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.1, 4.0], dtype=torch.float64)
    for k in (1, 3):
        for w in (True, False):
            a = float(metrics.knn_entropy(x, k=k, whiten=w, method="tree"))
            b = float(metrics.knn_entropy(x, k=k, whiten=w, method="brute"))
            assert a == pytest.approx(b, abs=1e-9)
    with pytest.raises(ValueError, match="method"):
        metrics.knn_entropy(x, method="kd")
    with pytest.raises(ValueError, match="duplicate"):
        metrics.knn_entropy(torch.cat([x[:50], x[:1]]), method="tree")


def test_logsumexp_gauss_is_the_direct_kernel_sum():
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(37, 3, generator=g, dtype=torch.float64) * 4, torch.randn(501, 3, generator=g, dtype=torch.float64)
    for var in (0.01, 1.0, 7.5):
        ref = torch.logsumexp(-0.5 * torch.cdist(x, c) ** 2 / var, dim=1)
        assert torch.allclose(metrics.logsumexp_gauss(x, c, var), ref, rtol=1e-11, atol=1e-9)
        # blocks that do not divide the sizes (online log-sum-exp across 8 blocks of centres, 4 of points)
        assert torch.allclose(metrics.logsumexp_gauss(x, c, var, rows=10, cols=64), ref, rtol=1e-11, atol=1e-9)
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="var"):
            metrics.logsumexp_gauss(x, c, bad)
