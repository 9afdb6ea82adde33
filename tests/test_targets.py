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


# ---- the short-last-axis reductions and the categorical draw (the fast CPU paths of targets) -------------------
def test_short_last_axis_reductions_match_torch():
    g = torch.Generator().manual_seed(3)
    for K in (1, 2, 3, 5, 8):
        x = 30 * torch.randn(4000, K, generator=g)
        assert tg._short_last(x) or K == 1                   # the fast path is the one under test
        assert torch.allclose(tg.sum_last(x), x.sum(-1), rtol=1e-14, atol=1e-12)
        assert torch.allclose(tg.softmax_last(x), torch.softmax(x, -1), rtol=1e-13, atol=1e-300)
        assert torch.allclose(tg.logsumexp_last(x), torch.logsumexp(x, -1), rtol=1e-14, atol=1e-12)
    x = torch.randn(3000, 3, generator=g)
    x[0] = float("-inf")
    x[1, 2] = float("inf")
    x[2, 1] = float("nan")
    out, ref = tg.logsumexp_last(x), torch.logsumexp(x, -1)
    assert out[0] == ref[0] == float("-inf") and out[1] == ref[1] == float("inf")
    assert torch.isnan(out[2]) and torch.isnan(ref[2])
    assert torch.equal(out[3:], out[3:]) and torch.allclose(out[3:], ref[3:], rtol=1e-14)
    # autograd through the fast path (MALA and the tests differentiate log_prob)
    xr = torch.randn(3000, 3, generator=g, requires_grad=True)
    (ga,) = torch.autograd.grad(tg.logsumexp_last(xr).sum(), xr)
    assert torch.allclose(ga, torch.softmax(xr.detach(), -1), rtol=1e-13)


def test_fast_paths_give_the_small_batch_numbers():
    """Score, log-density, Jacobian and reverse kernel of 6000 points (fast reductions) equal those computed in
    chunks of 100 points (torch's own reductions) to rounding."""
    mix = _mixture(d=2, K=3)
    x = 2 * torch.randn(6000, 2, generator=torch.Generator().manual_seed(4))
    lab = torch.tensor(-0.7)
    chunks = lambda f: torch.cat([f(c) for c in x.split(100)])
    for f in (lambda z: mix.score(z, lab), lambda z: mix.log_prob(z, lab), lambda z: mix.score_jacobian(z, lab),
              lambda z: mix.reverse_kernel(z, lab, -0.2)[1], lambda z: mix.responsibilities(z, lab)):
        assert torch.allclose(f(x), chunks(f), rtol=1e-12, atol=1e-12)
    s, H = mix.score_and_jacobian(x, lab)
    assert torch.allclose(s, mix.score(x, lab), rtol=1e-12, atol=1e-12)
    assert torch.equal(H, mix.score_jacobian(x, lab))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_categorical_rows_is_torch_multinomial(seed):
    """Same indices as torch.multinomial(w, 1) and the same generator state afterwards (float64, CPU); a zero
    weight is never drawn; bad weights raise."""
    w = torch.rand(5000, 4, generator=torch.Generator().manual_seed(10 + seed))
    w[::3, 1] = 0.0
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    ref = torch.multinomial(w, 1, generator=g1)[:, 0]
    out = tg.categorical_rows(w, g2)
    assert torch.equal(out, ref)
    assert not (out[::3] == 1).any()
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    # frequencies: each column of a fixed weight row within 5 standard errors
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    k = tg.categorical_rows(p.expand(20000, 4), torch.Generator().manual_seed(seed))
    freq = torch.bincount(k, minlength=4) / 20000.0
    assert ((freq - p).abs() < 5 * (p * (1 - p) / 20000).sqrt()).all()
    bad = w.clone()
    bad[7, 0] = -1.0
    with pytest.raises(ValueError, match="w must be"):
        tg.categorical_rows(bad, g2)
    bad = w.clone()
    bad[7] = 0.0
    with pytest.raises(ValueError, match="w must be"):
        tg.categorical_rows(bad, g2)


def test_sample_mixture_cols_gives_the_rows_draws():
    """The columns layout of the per-point mixture sampler (TDS) draws the same points as the rows one, from the
    same generator state, and leaves the generator in the same state."""
    mix = _mixture(d=2, K=3)
    x = 2 * torch.randn(5000, 2, generator=torch.Generator().manual_seed(5))
    w, means, covs = mix.reverse_kernel(x, -0.9, -0.4)
    wc, mc, cc = mix._reverse_kernel_cols(x, -0.9, -0.4)
    assert torch.allclose(wc.T, w, rtol=1e-14, atol=1e-15) and torch.allclose(mc.permute(2, 0, 1), means)
    g1, g2 = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    rows = tg.sample_mixture_rows(w, means, covs, generator=g1)
    cols = tg.sample_mixture_cols(wc, mc, cc, generator=g2)
    assert torch.allclose(cols.T, rows, rtol=1e-13, atol=1e-13)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
