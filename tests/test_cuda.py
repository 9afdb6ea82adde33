"""The CUDA path: every sampler, law and target runs with device="cuda" and agrees with the CPU.

Skipped where no GPU is present (CI has none); run on a GPU machine to check the device-agnostic code."""
import pytest
import torch

from diffnotes import laws, metrics, schedules as sc, samplers as S
from diffnotes.targets import Gaussian, GaussianMixture

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("name", list(S.SAMPLERS))
def test_sampler_on_cuda_matches_cpu(name):
    f = S.SAMPLERS[name]
    mix = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[1.0, 0.0], [-1.0, 0.5]]),
                          torch.eye(2).expand(2, 2, 2) * 0.2)
    sch = sc.linear(100)
    x = torch.randn(512, 2, dtype=torch.float64)
    if name in ("flow_ode", "accel_ode") or name == "ddim":
        a = f(mix.score, x, sch).x
        b = f(mix.to("cuda").score, x.cuda(), sch.to("cuda")).x
        assert torch.allclose(a, b.cpu(), atol=1e-9)
    else:   # stochastic: same law (moments), different random streams
        g = torch.Generator(device="cuda").manual_seed(0)
        b = f(mix.to("cuda").score, torch.randn(200_000, 2, dtype=torch.float64, device="cuda", generator=g),
              sch, generator=g).x
        assert b.device.type == "cuda" and torch.isfinite(b).all()
        ref = mix.to("cuda").mean()
        assert (b.mean(0) - ref).abs().max() < 0.05


@cuda
def test_law_on_cuda_matches_cpu():
    g = Gaussian(torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    init = Gaussian(torch.zeros(2), torch.eye(2))
    sch = sc.theory(200, 2, 4)
    for f in (S.ddpm, S.ddim, S.flow_ode, S.accel_ode, S.accel_sde):
        a = laws.law(f, g.affine_score(), init, sch, stop=1)
        b = laws.law(f, g.to("cuda").affine_score(), init.to("cuda"), sch, stop=1)
        assert torch.allclose(a.cov, b.cov.cpu(), atol=1e-12)
        assert float(metrics.kl_gaussian(g.marginal(sch.lab(1)), a)) == pytest.approx(
            float(metrics.kl_gaussian(g.to("cuda").marginal(sch.lab(1)), b)), rel=1e-9)


def _mixture3():
    return GaussianMixture([0.6, 0.3, 0.1], [[-2.5, 0.8], [0.0, 0.0], [2.5, -0.6]],
                           [[[0.3, 0.1], [0.1, 0.25]], [[0.3, -0.1], [-0.1, 0.25]], [[0.3, 0.0], [0.0, 0.2]]])


def _mixture_internals_match(dev):
    """Score, Hessian, log-density and reverse kernel of the mixture (the columns layout) on ``dev`` against CPU."""
    mix, x = _mixture3(), 2 * torch.randn(5000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    md, xd = mix.to(dev), x.to(dev)
    for f in (lambda m, z: m.score(z, -0.5), lambda m, z: m.score_and_jacobian(z, -0.5)[1],
              lambda m, z: m.log_prob(z, -0.5), lambda m, z: m.reverse_kernel(z, -0.5, -0.2)[1]):
        out = f(md, xd)
        assert out.device.type == torch.device(dev).type
        assert torch.allclose(f(mix, x), out.cpu(), atol=1e-10)


def _smc_matches_cpu(dev, method):
    """SMCDiff / TDS on ``dev`` (its own random stream) estimate the same conditional mean as on CPU."""
    from diffnotes import conditional as C
    sch = sc.ou(0.05, 4.0)
    kw = {"sigma_y": 0.1} if method == "tds" else {}
    est = []
    for d in ("cpu", dev):
        out = getattr(C, method)(C.Inpainting(_mixture3().to(d), idx_y=[1]), -0.3, sch, runs=200, n=64,
                                 generator=torch.Generator(device=d).manual_seed(0), **kw)
        assert out.x.device.type == torch.device(d).type and torch.isfinite(out.x).all()
        est.append(C.weighted_mean(out).mean().item())
    assert abs(est[0] - est[1]) < 0.1, est


@cuda
def test_mixture_internals_on_cuda_match_cpu():
    _mixture_internals_match("cuda")


@cuda
@pytest.mark.parametrize("method", ["smcdiff", "tds"])
def test_smc_on_cuda_matches_cpu(method):
    _smc_matches_cpu("cuda", method)


def test_cuda_helpers_hold_on_cpu():
    """The helpers above, run with the CPU as the 'other' device, so that they are known to pass where no GPU is."""
    _mixture_internals_match("cpu")
    for method in ("smcdiff", "tds"):
        _smc_matches_cpu("cpu", method)
