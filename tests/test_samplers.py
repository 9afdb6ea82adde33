import numpy as np
import pytest
import torch

from diffnotes import laws, metrics, schedules as sc, samplers as S
from diffnotes.targets import DiagonalGaussian, Gaussian

torch.set_default_dtype(torch.float64)

TARGET = Gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[1.5, 0.4], [0.4, 0.6]]))
INIT = Gaussian(torch.zeros(2), torch.eye(2))


@pytest.mark.parametrize("name,opts", [("ddpm", {"variance": "beta"}), ("ddpm", {"variance": "beta_tilde"}),
                                       ("ddpm", {"variance": "beta_over_alpha"}), ("ddim", {"eta": 0.0}),
                                       ("ddim", {"eta": 0.7}), ("flow_ode", {}), ("accel_ode", {}),
                                       ("accel_sde", {})])
def test_exact_law_matches_monte_carlo(name, opts):
    """The law propagated in laws.py (derived separately) against 200k runs of the sampler itself."""
    f = S.SAMPLERS[name]
    sch = sc.theory(60, 2, 4, max_alphabar_T=0.05)
    L = laws.law(f, TARGET.affine_score(), INIT, sch, stop=1, **opts)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    out = f(TARGET.score, torch.randn(n, 2, generator=gen), sch, generator=gen, stop=1, **opts)
    se_m = (L.cov.diagonal() / n).sqrt()
    assert ((out.x.mean(0) - L.loc).abs() < 5 * se_m).all()
    se_c = (2 * L.cov.diagonal().max() ** 2 / n) ** 0.5
    assert (torch.cov(out.x.T) - L.cov).abs().max() < 6 * se_c


def test_nfe_counts_match_counting_wrapper():
    sch = sc.linear(50)
    x = torch.randn(4, 2)
    for name, f in S.SAMPLERS.items():
        cs = S.CountingScore(TARGET.score)
        out = f(cs, x, sch, generator=torch.Generator().manual_seed(0), stop=3)
        assert out.nfe == cs.calls, name
    assert S.accel_ode(TARGET.score, x, sch).nfe == 2 * S.flow_ode(TARGET.score, x, sch).nfe


def test_same_seed_same_numbers():
    sch = sc.linear(40)
    a = S.ddpm(TARGET.score, torch.zeros(3, 2), sch, generator=torch.Generator().manual_seed(5)).x
    b = S.ddpm(TARGET.score, torch.zeros(3, 2), sch, generator=torch.Generator().manual_seed(5)).x
    assert torch.equal(a, b)


def test_accelerated_samplers_reduce_when_correction_vanishes():
    """accel_ode with s_t - sqrt(alpha_{t+1}) s_{t+1}(Y^-) == 0 is 002's flow ODE; accel_sde with its midpoint noise
    switched off by a zero-noise generator-free check reduces to DDPM's mean."""
    sch = sc.linear(30)
    x = torch.randn(5, 2)
    # a score for which the momentum term vanishes identically: s_t(x) = c / sqrt(alphabar_t) (constant in x)
    c = torch.tensor([0.3, -0.2])
    score = lambda y, lab: c.expand_as(y) * torch.exp(-0.5 * lab)  # noqa: E731
    a = S.accel_ode(score, x, sch, stop=1).x
    b = S.flow_ode(score, x, sch, stop=1).x
    # the momentum is beta^2/(4 beta') (s_t - sqrt(alpha') s_{t+1}) = 0 exactly for this score
    assert torch.allclose(a, b, atol=1e-12)


def test_ddim_and_ddpm_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    T = 50
    sch = sc.linear(T)
    betas = sch.beta[1:T + 1].numpy()
    eps_fn = lambda x, lab: -torch.sqrt(-torch.expm1(lab)) * TARGET.score(x, lab)  # noqa: E731
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    # DDIM, eta = 0
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=betas, clip_sample=False,
                                  set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(T)
    y = x.float()
    for k in ref.timesteps:
        lab = torch.log(ref.alphas_cumprod[k].double())
        y = ref.step(eps_fn(y.double(), lab).float(), k, y).prev_sample
    ours = S.ddim(TARGET.score, x, sch).x
    # diffusers keeps its schedule in float32: agreement to float32 rounding accumulated over T steps
    assert torch.allclose(ours, y.double(), atol=2e-4, rtol=2e-4)
    # DDPM mean (noise removed by replaying the generator diffusers used)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, trained_betas=betas, clip_sample=False,
                                  variance_type="fixed_large")
    ref.set_timesteps(T)
    y = x.float()
    for k in ref.timesteps:
        lab = torch.log(ref.alphas_cumprod[k].double())
        g = torch.Generator().manual_seed(int(k))
        out = ref.step(eps_fn(y.double(), lab).float(), k, y, generator=g).prev_sample
        if k > 0:
            noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(int(k)), dtype=torch.float32)
            out = out - ref.betas[k].sqrt() * noise
        t = int(k) + 1
        mine = torch.exp(-0.5 * sch.log_alpha[t]) * (y.double() + sch.beta[t] * TARGET.score(y.double(), sch.lab(t)))
        assert torch.allclose(out.double(), mine, atol=1e-4, rtol=1e-4), int(k)
        y = out


def test_bad_inputs_raise():
    sch = sc.linear(50)
    with pytest.raises(ValueError, match="stop"):
        S.ddpm(TARGET.score, torch.zeros(2, 2), sch, stop=-1)
    with pytest.raises(ValueError, match="x must"):
        S.ddim(TARGET.score, torch.zeros(2), sch)
    with pytest.raises(ValueError, match="variance"):
        S.ddpm(TARGET.score, torch.zeros(2, 2), sch, variance="big")
    with pytest.raises(ValueError, match="eta"):
        S.ddim(TARGET.score, torch.zeros(2, 2), sch, eta=2.0)
    with pytest.raises(ValueError, match="schedule"):
        S.flow_ode(TARGET.score, torch.zeros(2, 2), np.ones(3))


def test_non_finite_is_loud():
    sch = sc.linear(50)
    with pytest.raises(FloatingPointError):
        S.flow_ode(lambda x, lab: x * float("nan"), torch.zeros(2, 2), sch)


def test_diagonal_law_equals_full_law():
    """The O(d) diagonal path and the full-matrix path give the same law (eigenbasis of a correlated target)."""
    sch = sc.theory(80, 2, 4, max_alphabar_T=0.05)
    dg, U = TARGET.eigenbasis()
    init_d = DiagonalGaussian(torch.zeros(2), torch.ones(2))
    for f in (S.ddpm, S.flow_ode, S.accel_ode, S.accel_sde, S.ddim):
        Lf = laws.law(f, TARGET.affine_score(), INIT, sch, stop=1)
        Ld = laws.law(f, dg.affine_score(), init_d, sch, stop=1)
        ref = TARGET.marginal(sch.lab(1))
        ref_d = dg.marginal(sch.lab(1))
        assert float(metrics.kl_gaussian(ref, Lf)) == pytest.approx(float(metrics.kl_gaussian(ref_d, Ld)), rel=1e-8)


def test_cached_coefficient_tables_give_the_same_draws():
    """The per-schedule coefficient tables (kept on the schedule after the first call) change nothing: a second
    call on the same schedule, and a call on a fresh copy, give bitwise the same samples; ``to`` does not carry
    the tables over."""
    from diffnotes import schedules as sc
    from diffnotes import targets as tg
    mix = tg.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [torch.eye(2).tolist()] * 2)
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sch = sc.linear(40)
    for name, opts in [("ddpm", {"variance": "beta_tilde"}), ("ddpm", {}), ("ddim", {"eta": 0.5}), ("ddim", {}),
                       ("flow_ode", {}), ("accel_ode", {}), ("accel_sde", {}), ("multistep_ode", {})]:
        f = getattr(S, name)
        runs = [f(mix.score, x, s, generator=torch.Generator().manual_seed(1), **opts).x
                for s in (sch, sch, sc.linear(40))]
        assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2]), name
    assert "_sampler_tables" in sch.__dict__ and "_sampler_tables" not in sch.to("cpu").__dict__
