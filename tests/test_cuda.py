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
