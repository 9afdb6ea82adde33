import pytest
import torch

from diffnotes import covariance as cv
from diffnotes import schedules, skipstep
from diffnotes import targets as tg


def _gauss(d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return tg.Gaussian(torch.randn(d, generator=g, dtype=torch.float64), A @ A.T / d + 0.05 * torch.eye(d))


def _moments_z(x, target):
    """Largest |z| of the sample mean and covariance entries against the target (Monte Carlo standard errors)."""
    n = x.shape[0]
    m, C = x.mean(0), torch.cov(x.T)
    zm = (m - target.loc) / (torch.diagonal(target.cov) / n).sqrt()
    S = target.cov
    var_c = (S ** 2 + torch.outer(torch.diagonal(S), torch.diagonal(S))) / n
    return max(zm.abs().max(), ((C - S) / var_c.sqrt()).abs().max())


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_exact_full_covariance_makes_few_step_sampling_exact_on_a_gaussian(eta):
    # q(x0 | xt) is Gaussian, so p(x_s | x_t) = int q_eta(x_s | x_t, x0) q(x0 | x_t) dx0 is the true kernel
    # for any jump: two jumps already sample the target exactly.
    target, sch = _gauss(), schedules.linear(1000)
    g = torch.Generator().manual_seed(0)
    xT = target.sample(20000, float(sch.log_alphabar[1000]), generator=g)
    out = skipstep.skip_step("exact_full", target, xT, sch, [0, 300, 1000], eta=eta, generator=g)
    assert _moments_z(out.x, target) < 4.5
    # without the covariance (DDIM / beta-tilde) two jumps are visibly wrong
    bad = skipstep.skip_step("beta_tilde", target, xT, sch, [0, 300, 1000], eta=eta, generator=g)
    assert _moments_z(bad.x, target) > 10


def test_pass_counts_of_a_run():
    target, sch = _gauss(d=3), schedules.linear(1000)
    xT = target.sample(16, float(sch.log_alphabar[1000]), generator=torch.Generator().manual_seed(0))
    steps = skipstep.even_steps(1000, 5)
    out = skipstep.skip_step("exact_full", target, xT, sch, steps)
    assert out.nfe == 5 and out.passes == {"forward": 5, "vjp": 15, "head": 0}
    out = skipstep.skip_step("hutchinson", target, xT, sch, steps, M=2, generator=torch.Generator())
    assert out.passes == {"forward": 5, "vjp": 10, "head": 0}


def test_gaussian_kernel_matches_the_true_reverse_kernel_on_a_gaussian():
    target, lab_t, lab_s = _gauss(d=2), -2.0, -0.7
    x = target.sample(5, lab_t, generator=torch.Generator().manual_seed(1))
    post = cv.estimate("exact_full", target, x, lab_t)
    mean, cov = skipstep.gaussian_kernel(post, x, lab_t, lab_s, eta=1.0)
    w, m, C = target.reverse_kernel(x, lab_t, lab_s)
    assert torch.allclose(mean, m[:, 0], atol=1e-10) and torch.allclose(cov, C[0].expand_as(cov), atol=1e-10)


def test_even_steps_and_bad_input():
    assert skipstep.even_steps(1000, 4) == [0, 250, 500, 750, 1000]
    with pytest.raises(ValueError, match="K"):
        skipstep.even_steps(10, 0)
    target, sch = _gauss(), schedules.linear(100)
    with pytest.raises(ValueError, match="steps"):
        skipstep.skip_step("beta", target, torch.zeros(2, 2, dtype=torch.float64), sch, [0, 50, 40])


def test_smoothed_kl_matches_the_closed_form_for_gaussians():
    from diffnotes.metrics import kl_gaussian
    target, h = _gauss(d=2), 0.3
    g = torch.Generator().manual_seed(2)
    wrong = tg.Gaussian(target.loc + 0.3, 1.3 * target.cov)
    x = wrong.sample(6000, generator=g)
    est, se = skipstep.smoothed_kl(target, x, h, n_eval=1500, generator=g)
    eye = h ** 2 * torch.eye(2, dtype=torch.float64)
    want = float(kl_gaussian(tg.Gaussian(target.loc, target.cov + eye), tg.Gaussian(wrong.loc, wrong.cov + eye)))
    assert abs(est - want) < 4 * se + 0.01 * want
    floor, _ = skipstep.smoothed_kl(target, target.sample(6000, generator=g), h, n_eval=1500, generator=g)
    assert abs(floor) < 0.01 < want
