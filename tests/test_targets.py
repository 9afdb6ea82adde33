import pytest
import torch

from diffnotes import targets as tg

torch.set_default_dtype(torch.float64)


def _mixture(d=3, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, d, d, generator=g)
    covs = A @ A.transpose(1, 2) / d + 0.1 * torch.eye(d)
    means = 2 * torch.randn(K, d, generator=g)
    w = torch.softmax(torch.randn(K, generator=g), 0)
    return tg.GaussianMixture(w, means, covs)


@pytest.mark.parametrize("lab", [0.0, -0.3, -2.0])
def test_score_and_jacobian_match_autograd(lab):
    mix = _mixture()
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(mix.log_prob(xr, lab).sum(), xr)
    assert torch.allclose(mix.score(x, lab), g, atol=1e-10)
    H = torch.stack([torch.autograd.functional.hessian(lambda z: mix.log_prob(z[None], lab)[0], xi) for xi in x])
    assert torch.allclose(mix.score_jacobian(x, lab), H, atol=1e-9)


def test_log_prob_matches_torch_distributions():
    mix = _mixture()
    lab = torch.tensor(-0.8)
    ab = torch.exp(lab)
    comp = torch.distributions.MultivariateNormal(ab.sqrt() * mix.means, ab * mix.covs + (1 - ab) * torch.eye(3))
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(mix.weights), comp)
    x = torch.randn(11, 3)
    assert torch.allclose(mix.log_prob(x, lab), ref.log_prob(x), atol=1e-12)


def test_posterior_x0_matches_monte_carlo():
    """Exact posterior mean/cov of x0 given x_t vs. self-normalised importance sampling from the prior."""
    mix = _mixture(d=2, K=3, seed=3)
    lab = torch.tensor(-1.0)
    gen = torch.Generator().manual_seed(4)
    xt = mix.sample(1, lab, generator=gen)
    mean, cov = mix.posterior_x0(xt, lab)
    n = 400_000
    x0 = mix.sample(n, generator=gen)
    sab, omab = torch.exp(0.5 * lab), -torch.expm1(lab)
    logw = -0.5 * ((xt - sab * x0) ** 2).sum(-1) / omab
    w = torch.softmax(logw, 0)
    m_mc = (w[:, None] * x0).sum(0)
    ess = 1 / (w ** 2).sum()
    c_mc = (w[:, None, None] * (x0 - m_mc)[:, :, None] * (x0 - m_mc)[:, None, :]).sum(0)
    se = (cov[0].diagonal() / ess).sqrt()
    assert ((m_mc - mean[0]).abs() < 5 * se).all(), (m_mc, mean, se)
    assert torch.allclose(c_mc, cov[0], atol=10 * float(cov[0].abs().max()) / float(ess.sqrt()))


def test_reverse_kernel_is_consistent_with_forward_process():
    """Drawing x_s ~ q(x_s | x_t) for x_t ~ q_t must give the marginal q_s: compare moments."""
    mix = _mixture(d=2, K=2, seed=5)
    gen = torch.Generator().manual_seed(6)
    xt = mix.sample(200_000, -1.5, generator=gen)
    xs = mix.sample_reverse_kernel(xt, -1.5, -0.4, generator=gen)
    ref = mix.sample(200_000, -0.4, generator=gen)
    assert torch.allclose(xs.mean(0), ref.mean(0), atol=0.02)
    assert torch.allclose(torch.cov(xs.T), torch.cov(ref.T), atol=0.04)


def test_condition_matches_bruteforce_density_ratio():
    mix = _mixture(d=3, K=3, seed=7)
    y = torch.tensor([0.3])
    cond = mix.condition([2], y)
    x = torch.randn(9, 2)
    z = torch.cat([x, y.expand(9, 1)], 1)
    # log p(x | y) = log p(x, y) - log p(y): differences in x must agree
    lp = mix.log_prob(z)
    assert torch.allclose(cond.log_prob(x) - cond.log_prob(x[:1]), lp - lp[0], atol=1e-10)


def test_linear_posterior_matches_bruteforce():
    mix = _mixture(d=3, K=2, seed=8)
    H = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]])
    y, sy = torch.tensor([0.2, -0.4]), 0.3
    post = mix.linear_posterior(H, y, sy)
    x = torch.randn(6, 3)
    lik = -0.5 * ((y - x @ H.T) ** 2).sum(-1) / sy ** 2
    joint = mix.log_prob(x) + lik
    assert torch.allclose(post.log_prob(x) - post.log_prob(x[:1]), joint - joint[0], atol=1e-9)


def test_gaussian_affine_score_and_eigenbasis():
    g = tg.Gaussian(torch.tensor([1.0, -2.0]), torch.tensor([[2.0, 0.3], [0.3, 0.5]]))
    x = torch.randn(5, 2)
    assert torch.allclose(g.affine_score()(x, -0.5), g.score(x, -0.5), atol=1e-12)
    dg, U = g.eigenbasis()
    assert torch.allclose(dg.score(x @ U, -0.5), g.score(x, -0.5) @ U, atol=1e-12)
    assert torch.allclose(dg.log_prob(x @ U, -0.5), g.log_prob(x, -0.5), atol=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="covs"):
        tg.GaussianMixture(torch.ones(2) / 2, torch.zeros(2, 3), torch.eye(3).expand(3, 3, 3))
    mix = _mixture()
    with pytest.raises(ValueError, match="x must"):
        mix.score(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="lab"):
        mix.score(torch.zeros(4, 3), 0.5)
