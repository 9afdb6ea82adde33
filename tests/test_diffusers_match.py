"""Our samplers against diffusers' scheduler loops where the algorithms coincide (diffusers is a test-only reference).

``tests/test_samplers.py::test_ddim_and_ddpm_match_diffusers`` covers DDIM (eta = 0) and the DDPM mean on a full
50-step schedule.  Here: the setting of the benchmark (DDPM's T = 1000 linear schedule visited at diffusers'
10 "leading" timesteps, on a 4-component mixture in d = 3), the *whole sample* including the noise of DDIM with
eta > 0 and of DDPM (both draw ``torch.randn(x.shape)`` from the generator once per step, in the same order), and
two tolerances:

* **same schedule** (diffusers' ``alphas_cumprod`` handed to both, in float64, samples in float64): the algorithms are
  algebraically equal (diffusers goes through the x0-prediction, we through the score), so the samples agree to float64
  rounding, amplified at most by ``1 / sqrt(alphabar)`` of the x0-prediction (``<= 1 / sqrt(alphabar_901) ~ 1e2``
  here) over 10 steps: we test ``1e-9`` (abs and rel);
* **their float32 schedule** against our float64 one (float32 samples in diffusers, as it is used): each step's
  coefficients are ratios and square roots of ``alphas_cumprod``, whose relative error is ``e`` (measured below,
  bounded by ``T u = 1000 x 2^-24 = 6e-5`` for a float32 cumulative product; about ``3e-7`` in fact); one step's
  output then carries a relative error ``<= 2 e`` (a ratio of two ``alphabar``), 10 steps ``<= 20 e``; on top, the
  float32 arithmetic of both loops, ``u = 2^-24 ~ 6e-8`` per operation, about 10 operations a step: ``<= 100 u``
  over 10 steps.  We test ``rtol = atol = 20 e + 100 u`` (about ``1.2e-5``).  (A first version of this test
  left out the ``100 u``, wrongly assuming it negligible next to ``e``; the observed differences, up to ``4.8e-6``,
  sit inside both.)
"""
import pytest
import torch

from diffnotes import samplers as S, schedules as sc
from diffnotes.targets import GaussianMixture

diffusers = pytest.importorskip("diffusers")

T_TRAIN, STEPS = 1000, 10
MIX = GaussianMixture(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64),
                      torch.tensor([[2.0, 0.0, -1.0], [-2.0, 1.0, 0.0], [0.0, -2.0, 1.0], [0.5, 0.5, 2.0]],
                                   dtype=torch.float64),
                      torch.stack([torch.eye(3, dtype=torch.float64) * s for s in (0.2, 0.3, 0.5, 0.1)]))
VISITED = [0] + [k + 1 for k in range(0, T_TRAIN, T_TRAIN // STEPS)]     # our t = diffusers' timestep + 1


def eps_fn(x, lab):
    """The mixture's exact noise prediction ``-sqrt(1 - alphabar) score`` (computed in float64)."""
    lab = torch.as_tensor(lab, dtype=torch.float64)
    return -torch.sqrt(-torch.expm1(lab)) * MIX.score(x.double(), lab)


def run_diffusers(sched, x, generator, float64_schedule):
    sched.set_timesteps(STEPS)
    assert [int(k) + 1 for k in sched.timesteps] == VISITED[:0:-1]
    if float64_schedule:
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        for name in ("final_alpha_cumprod", "one"):
            if hasattr(sched, name):
                setattr(sched, name, getattr(sched, name).double())
    for k in sched.timesteps:
        lab = torch.log(sched.alphas_cumprod[int(k)].double())
        x = sched.step(eps_fn(x, lab).to(x.dtype), k, x, generator=generator).prev_sample
    return x


def schedulers():
    betas = sc.linear(T_TRAIN).beta[1:T_TRAIN + 1].float().numpy()
    common = dict(num_train_timesteps=T_TRAIN, trained_betas=betas, clip_sample=False)
    return {"ddim": lambda: diffusers.DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **common),
            "ddpm": lambda: diffusers.DDPMScheduler(variance_type="fixed_small", **common)}


CASES = [("ddim", {"eta": 0.0}), ("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.3}), ("ddpm", {"variance": "beta_tilde"})]


def score(x, lab):
    """The mixture's score in the dtype of ``x`` (computed in float64)."""
    return MIX.score(x.double(), lab).to(x.dtype)


def _ours(name, opts, sch, x, seed):
    return getattr(S, name)(score, x, sch, generator=torch.Generator().manual_seed(seed), **opts).x


@pytest.mark.parametrize("name,opts", CASES)
def test_same_schedule_same_samples(name, opts):
    """Diffusers' own alphabar in float64 on both sides: the samples agree to float64 rounding (1e-9)."""
    sched = schedulers()[name]()
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = _ours(name, opts, sc.from_alphabar(sched.alphas_cumprod.double(), max_alphabar_T=None).subsample(VISITED),
                 x, 7)
    g = torch.Generator().manual_seed(7)
    step = sched.step
    if name == "ddim":
        sched.step = lambda e, k, y, generator: step(e, k, y, eta=opts["eta"], generator=generator)
    theirs = run_diffusers(sched, x, g, float64_schedule=True)
    assert theirs.dtype == torch.float64
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-9), float((ours - theirs).abs().max())
    # and a different seed gives different samples when there is noise (the comparison can fail)
    if opts.get("eta", 1.0) > 0:
        other = _ours(name, opts, sc.from_alphabar(sched.alphas_cumprod.double(), max_alphabar_T=None)
                      .subsample(VISITED), x, 8)
        assert (other - theirs).abs().max() > 1e-3


@pytest.mark.parametrize("name,opts", CASES)
def test_float32_schedule_within_its_precision(name, opts):
    """Our float64 linear schedule against diffusers' float32 one (and float32 samples): within ``20 e + 100 u``."""
    sched = schedulers()[name]()
    ours_sch = sc.linear(T_TRAIN)
    exact = ours_sch.alphabar[1:T_TRAIN + 1]
    e = float(((sched.alphas_cumprod.double() - exact).abs() / exact).max())
    assert e < T_TRAIN * 2.0 ** -24            # a float32 cumulative product of T factors
    tol = 20 * e + 100 * 2.0 ** -24
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = _ours(name, opts, ours_sch.subsample(VISITED), x, 11)
    step = sched.step
    if name == "ddim":
        sched.step = lambda ee, k, y, generator: step(ee, k, y, eta=opts["eta"], generator=generator)
    # diffusers runs in float32 and draws float32 noise; our sampler in float32 draws the same float32 stream
    theirs = run_diffusers(sched, x.float(), torch.Generator().manual_seed(11), float64_schedule=False)
    ours32 = _ours(name, opts, ours_sch.subsample(VISITED), x.float(), 11)
    assert theirs.dtype == torch.float32
    assert torch.allclose(ours32.double(), theirs.double(), rtol=tol, atol=tol), \
        (float((ours32.double() - theirs.double()).abs().max()), tol)
    if opts.get("eta", 1.0) == 0:
        # deterministic: our float64 run is the reference, both float32 runs are within the tolerance of it
        assert torch.allclose(ours, theirs.double(), rtol=tol, atol=tol)
