import math

import pytest
import torch

from diffnotes import schedules as sc


def test_theory_schedule_matches_formula_and_document_values():
    T, c0, c1 = 1000, 2.0, 4.0
    s = sc.theory(T, c0, c1)
    h = c1 * math.log(T) / T
    assert float(s.beta[1]) == pytest.approx(T ** -c0, rel=1e-12)
    for t in (2, 10, 400, 600, T, T + 1):   # formula for t >= 2 (and the extra step T + 1)
        assert float(s.beta[t]) == pytest.approx(h * min(T ** -c0 * (1 + h) ** t, 1.0), rel=1e-10)
    # c0 = c1 never reaches noise: the alphabar_T = 0.77, 0.49, 0.39 for T = 1e2, 1e3, 1e4
    got = [float(sc.theory(T, 4, 4, max_alphabar_T=None).alphabar[T]) for T in (100, 1000, 10000)]
    assert got == pytest.approx([0.77, 0.49, 0.39], abs=0.01)
    with pytest.raises(ValueError, match="never reaches noise"):
        sc.theory(100, 4, 4)


def test_stable_parameterisation_keeps_tiny_betas():
    s = sc.theory(1000, c0=4, c1=6)          # beta_1 = 1e-12: 1 - (1 - beta) would lose 4 digits
    assert float(s.beta[1]) == pytest.approx(1e-12, rel=1e-12)
    assert float(s.one_minus_alphabar[1]) == pytest.approx(1e-12, rel=1e-9)


def test_alphabar_is_product_and_derived_quantities_consistent():
    s = sc.linear(200)
    ab = torch.cumprod(1 - s.beta[1:s.T + 1], 0)
    assert torch.allclose(s.alphabar[1:s.T + 1], ab, rtol=1e-12)
    assert torch.allclose(s.sigma ** 2 + s.alphabar, torch.ones_like(s.alphabar), atol=1e-14)
    bt = s.beta[2:s.T + 1] * (1 - ab[:-1]) / (1 - ab[1:])
    assert torch.allclose(s.beta_tilde[2:s.T + 1], bt, rtol=1e-10)


def test_linear_and_cosine_against_diffusers():
    diffusers = pytest.importorskip("diffusers")
    T = 1000
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    s = sc.linear(T)
    assert torch.allclose(s.beta[1:T + 1], ref.betas.double(), rtol=1e-6)
    assert torch.allclose(s.alphabar[1:T + 1], ref.alphas_cumprod.double(), rtol=1e-4)
    ref_cos = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    c = sc.cosine(T)
    assert torch.allclose(c.beta[1:T + 1], ref_cos.betas.double(), rtol=1e-5, atol=1e-7)


def test_ou_schedule():
    s = sc.ou(0.01, 4.0)
    assert s.T == 400
    assert float(s.alphabar[s.T]) == pytest.approx(math.exp(-8.0), rel=1e-12)
    with pytest.raises(ValueError, match="eps"):
        sc.ou(-0.1, 1.0)


def test_subsample_sums_log_alphas():
    s = sc.linear(100)
    sub = s.subsample([0, 10, 50, 100])
    assert sub.T == 3
    assert torch.allclose(sub.log_alphabar[1:4], s.log_alphabar[[10, 50, 100]], rtol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        s.subsample([0, 50, 10])


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_T_raises(bad):
    with pytest.raises(ValueError, match="T must"):
        sc.linear(bad)


def test_unknown_device_raises():
    with pytest.raises(ValueError, match="device"):
        sc.VPSchedule(torch.full((10,), -1.0), device="nonsense")
