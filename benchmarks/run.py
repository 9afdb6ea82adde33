"""The performance benchmark: one command, one JSON of figures (and the plot / page through ``report.py``).

    python benchmarks/run.py              # full run (several minutes on two CPU cores), writes
                                          # benchmarks/results/<device>.json
    python benchmarks/run.py --quick      # seconds: every section at toy size (the harness test uses it)
    python benchmarks/run.py --device cuda

Sections (the figures of issue 8):

1. ``overhead``: wall time of each sampler of :mod:`diffnotes.samplers` divided by ``NFE x`` the time of one
   evaluation of its predictor at that batch, on an analytic Gaussian-mixture score (``targets.GaussianMixture``),
   over ``d``, batch and dtype.
2. ``diffusers``: the same number of steps through diffusers' scheduler loops (DDIM, DDPM, second-order singlestep
   DPM-Solver) on the same mixture (its noise prediction ``eps = -sqrt(1 - alphabar) score``); each loop's own
   overhead is ``wall - NFE x (time of the predictor that loop calls)``.
3. ``smc``: ``conditional.smcdiff`` and ``conditional.tds`` on chapter 04's benchmark problem, batched
   ``runs x N`` particles; the wall time for ``T`` steps is measured on ``smc_steps`` steps and scaled linearly
   (every step has the same shape and cost), stated as such in the record.
4. ``laws``: the exact law (``laws.law`` + ``metrics.kl_gaussian``) against a Monte Carlo KL of equal accuracy,
   against ``d``.
5. book execution times are read from jupyter-cache by ``report.py`` (they are not produced here).
6. ``memory``: peak resident memory (``ru_maxrss`` of a fresh subprocess) of the largest sampler case.

Timings are the minimum over repeats (the least perturbed by other processes on a shared machine); every
record carries its repeat count.  Results are labelled by device: torch device name, CPU model, thread count,
torch / diffusers versions, and the load average before and after the run.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# the SMC before/after comparison reruns this file on an exported older package (see bench_smc)
if os.environ.get("DIFFNOTES_BENCH_PACKAGE"):
    sys.path.insert(0, os.environ["DIFFNOTES_BENCH_PACKAGE"])

from diffnotes import laws, metrics, samplers as S, schedules as sc, targets  # noqa: E402

SCHEMA = 1
SAMPLER_NAMES = ["ddpm", "ddim", "flow_ode", "accel_ode", "accel_sde", "multistep_ode"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# (batch, d) normal draws per step: the part of a stochastic sampler's own time no code change can remove while the
# draws stay torch.randn's (in-run ratio floor = 1 + draws x steps x t(randn) / time in the score)
NOISE_DRAWS = {"ddpm": 1, "ddim": 0, "flow_ode": 0, "accel_ode": 0, "accel_sde": 2, "multistep_ode": 0}

# (d, batch) grid of the full run: batch x d <= 1e7 (and d = 1000 only at small batch: the mixture's score costs
# O(batch K d^2))
FULL_GRID = [(2, 100), (2, 10_000), (2, 100_000), (2, 1_000_000), (10, 100), (10, 100_000), (100, 100),
             (100, 10_000), (1000, 100)]
QUICK_GRID = [(2, 100), (2, 2_000), (10, 100)]


# ---- the predictor ---------------------------------------------------------------------------------------------
def mixture(d, K=4, *, seed=0, device="cpu", dtype=torch.float64):
    """A K-component Gaussian mixture in R^d with random means (scale 2) and random full covariances
    ``0.1 I + 0.3 A A^T / d``; float32 copies cast every cached tensor (the class itself is float64)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    m = 2 * torch.randn(K, d, generator=g, dtype=torch.float64)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = 0.1 * torch.eye(d, dtype=torch.float64) + 0.3 * A @ A.transpose(1, 2)
    mix = targets.GaussianMixture(w, m, cov).to(device)
    if dtype != torch.float64:
        mix = copy.copy(mix)
        for a in ("weights", "means", "covs", "lam", "U", "log_weights", "_Ucat", "_mU"):
            setattr(mix, a, getattr(mix, a).to(dtype))
    return mix


def eps_predictor(mix):
    """The noise prediction ``eps(x, lab) = -sqrt(1 - alphabar) * score(x, lab)`` that diffusers' loops consume."""
    def eps(x, lab):
        return mix.score(x, lab) * float(-math.sqrt(-math.expm1(float(lab))))
    return eps


def bench_schedule(steps, T_train=1000):
    """DDPM's linear schedule (T = 1000, beta 1e-4 .. 0.02) visited at diffusers' "leading" timesteps
    ``k = 0, T/steps, ..., T - T/steps`` (our step t = k + 1) and then ``t = 0``: the schedule every sampler and
    every diffusers loop of this benchmark runs on, with ``steps`` steps."""
    full = sc.linear(T_train)
    gap = T_train // steps
    return full, full.subsample([0] + [k + 1 for k in range(0, T_train, gap)])


# ---- timing ------------------------------------------------------------------------------------------------------
def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, repeats, device="cpu", budget_s=0.0, max_repeats=50, warmup=True):
    """Minimum wall time of ``fn()`` over at least ``repeats`` calls (after one warm-up call unless ``warmup`` is
    false), more while the total stays under ``budget_s`` (at most ``max_repeats``); returns
    ``(time, result of the fastest call, calls)``."""
    out = fn() if warmup else None
    _sync(device)
    best, best_out, k, spent = math.inf, out, 0, 0.0
    while k < repeats or (spent < budget_s and k < max_repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        dt = time.perf_counter() - t0
        spent += dt
        k += 1
        if dt < best:
            best, best_out = dt, out
    return best, best_out, k


class TimedScore:
    """Wraps a predictor and adds up the wall time of its calls (synchronised on CUDA): the predictor's share of a
    sampler run measured inside that very run, so that a perturbation of the machine hits both alike."""

    def __init__(self, fn, device):
        self.fn, self.device, self.seconds, self.calls = fn, device, 0.0, 0

    def __call__(self, x, lab):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.fn(x, lab)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def timed_run(run, fn, repeats, device, budget_s, warmup=True):
    """Fastest of repeated runs ``run(score)``: ``(wall, seconds inside the predictor in that run, result)``."""
    def once():
        ts = TimedScore(fn, device)
        return run(ts), ts
    wall, (res, ts), k = timeit(once, repeats, device, budget_s, warmup=warmup)
    return wall, ts.seconds, res, k


def score_time(fn, x, lab, repeats, device, budget_s=0.0):
    """Time of one predictor evaluation at this batch (minimum over the calls)."""
    return timeit(lambda: fn(x, lab), repeats, device, budget_s)[0]


def _labs(sch):
    return sch.log_alphabar.unbind(0)


# ---- 1. sampler overhead ----------------------------------------------------------------------------------------
def bench_overhead(grid, dtypes, steps, repeats, device, progress, budget=0.0):
    rows = []
    _, sch = bench_schedule(steps)
    sch = sch.to(device)
    for d, n in _progress(grid, progress, "overhead"):
        for dt_name in dtypes:
            dt = DTYPES[dt_name]
            mix = mixture(d, device=device, dtype=dt)
            g = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(n, d, generator=g, device=device, dtype=torch.float64).to(dt)
            lab = sch.lab(sch.T // 2)
            big = n * d * d >= 1e6            # the predictor costs O(n K d^2): one run takes seconds
            reps = repeats if not big else 2
            t_score = score_time(mix.score, x, lab, 3 * reps, device, budget)
            t_randn = timeit(lambda: torch.randn(n, d, generator=g, device=device, dtype=dt), 3 * reps, device,
                             budget)[0]
            for name in SAMPLER_NAMES:
                f = getattr(S, name)
                wall, t_in, out, k = timed_run(
                    lambda sc_: f(sc_, x, sch, generator=torch.Generator(device=device).manual_seed(1)),
                    mix.score, reps, device, budget, warmup=not big)
                rows.append(dict(d=d, batch=n, dtype=dt_name, sampler=name, steps=steps, nfe=out.nfe,
                                 t_score_s=t_score, wall_s=wall, ratio=wall / (out.nfe * t_score),
                                 t_score_inrun_s=t_in, ratio_inrun=wall / t_in,
                                 overhead_per_step_s=(wall - t_in) / steps, repeats=k, t_randn_s=t_randn,
                                 draws_per_step=NOISE_DRAWS[name],
                                 ratio_floor=1 + NOISE_DRAWS[name] * steps * t_randn / t_in))
    return rows


# ---- 1b. before / after a change of the samplers, interleaved -----------------------------------------------------
AB_REV = "8473fd2"     # diffnotes/samplers.py before the performance fix of issue 8
SMC_BEFORE_REV = "4826ecc"   # the package before the SMC work (short-axis reductions, columns layout, TDS twist reuse)


def samplers_at(rev):
    """``diffnotes/samplers.py`` as it was at git revision ``rev``, as a module (``(module, full hash)``)."""
    import importlib.util
    src = subprocess.run(["git", "show", f"{rev}:diffnotes/samplers.py"], cwd=ROOT, capture_output=True, text=True)
    full = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True)
    if src.returncode != 0 or full.returncode != 0:
        raise ValueError(f"samplers-from: cannot read diffnotes/samplers.py at {rev!r}: {src.stderr.strip()}")
    name = f"diffnotes._samplers_at_{full.stdout.strip()}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "diffnotes"
    sys.modules[name] = mod
    exec(compile(src.stdout, f"{rev}:diffnotes/samplers.py", "exec"), mod.__dict__)
    return mod, full.stdout.strip()


def bench_ab(rev, batches, dtypes, d, steps, repeats, device, progress):
    """Each sampler's own time per step, the samplers at ``rev`` against the current ones, runs interleaved
    (old, new, old, new, ...) so that both see the same machine; the predictor is a one-pass map (``0.5 x``) whose
    in-run time is subtracted: what is left is the sampler's own work."""
    old, full = samplers_at(rev)
    _, sch = bench_schedule(steps)
    sch = sch.to(device)
    rows = []

    def predictor(x, lab):
        return 0.5 * x
    for n in _progress(batches, progress, "before/after"):
        for dt_name in dtypes:
            x = torch.randn(n, d, generator=torch.Generator(device=device).manual_seed(0), device=device,
                            dtype=torch.float64).to(DTYPES[dt_name])
            for name in SAMPLER_NAMES:
                best = {}
                reps = repeats if n * d <= 1e4 else max(3, repeats // 5)
                for _ in range(reps):
                    for label, mod in (("before", old), ("after", S)):
                        f = getattr(mod, name)
                        wall, t_in, _, _ = timed_run(
                            lambda sc_: f(sc_, x, sch, generator=torch.Generator(device=device).manual_seed(1)),
                            predictor, 1, device, 0.0, warmup=False)
                        best[label] = min(best.get(label, math.inf), (wall - t_in) / steps)
                rows.append(dict(rev=full, d=d, batch=n, dtype=dt_name, sampler=name, steps=steps, repeats=reps,
                                 own_per_step_before_s=best["before"], own_per_step_after_s=best["after"],
                                 speedup=best["before"] / best["after"]))
    return rows


# ---- 2. against diffusers ---------------------------------------------------------------------------------------
def _diffusers_loops(mix, full, steps, device):
    """Callables ``run(x, generator) -> (x, nfe)`` of diffusers' scheduler loops on the eps predictor of ``mix``."""
    import diffusers

    betas = full.beta[1:full.T + 1].float().numpy()
    common = dict(num_train_timesteps=full.T, trained_betas=betas)
    eps = eps_predictor(mix)
    loops = {}

    def make(sched):
        sched.set_timesteps(steps, device=device)
        ts = list(sched.timesteps)
        labs = {int(k): torch.log(sched.alphas_cumprod[int(k)].double()).to(device) for k in ts}

        def run(x, generator, predictor=eps):
            sched.set_timesteps(steps, device=device)     # resets the multistep / singlestep state
            nfe = 0
            for k in ts:
                kk = int(k)
                e = predictor(x, labs[kk])
                nfe += 1
                x = sched.step(e, k, x, generator=generator).prev_sample
            return x, nfe
        return run

    loops["DDIMScheduler"] = make(diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                                          **common))
    loops["DDPMScheduler"] = make(diffusers.DDPMScheduler(clip_sample=False, variance_type="fixed_small", **common))
    loops["DPMSolverSinglestepScheduler"] = make(diffusers.DPMSolverSinglestepScheduler(
        solver_order=2, algorithm_type="dpmsolver++", lower_order_final=True, **common))
    return loops, eps


# our peer of each diffusers loop (same algorithm for DDIM / DDPM; the accelerated samplers for DPM-Solver-2)
PEERS = {"DDIMScheduler": [("ddim", {})], "DDPMScheduler": [("ddpm", {"variance": "beta_tilde"})],
         "DPMSolverSinglestepScheduler": [("accel_ode", {}), ("multistep_ode", {}), ("accel_sde", {})]}


def bench_diffusers(batches, dtypes, d, steps, repeats, device, progress, budget=0.0):
    rows = []
    full, sch = bench_schedule(steps)
    sch = sch.to(device)
    for n in _progress(batches, progress, "diffusers"):
        for dt_name in dtypes:
            dt = DTYPES[dt_name]
            mix = mixture(d, device=device, dtype=dt)
            x = torch.randn(n, d, generator=torch.Generator(device=device).manual_seed(0), device=device,
                            dtype=torch.float64).to(dt)
            loops, eps = _diffusers_loops(mix, full, steps, device)
            lab = sch.lab(sch.T // 2)
            reps = repeats if n * d <= 1e6 else max(1, repeats // 2)
            t_score = score_time(mix.score, x, lab, 3 * reps, device, budget)
            t_eps = score_time(eps, x, lab, 3 * reps, device, budget)
            for loop, run in loops.items():
                wall_ref, t_in_ref, (_, nfe_ref), k_ref = timed_run(
                    lambda e_: run(x, torch.Generator(device=device).manual_seed(1), e_), eps, reps, device, budget)
                ov_ref = wall_ref - t_in_ref
                for name, opts in PEERS[loop]:
                    f = getattr(S, name)
                    wall, t_in, out, k = timed_run(
                        lambda sc_: f(sc_, x, sch, generator=torch.Generator(device=device).manual_seed(1), **opts),
                        mix.score, reps, device, budget)
                    ov = wall - t_in
                    rows.append(dict(d=d, batch=n, dtype=dt_name, steps=steps, diffusers=loop, sampler=name,
                                     same_algorithm=loop != "DPMSolverSinglestepScheduler",
                                     nfe=out.nfe, nfe_diffusers=nfe_ref, t_score_s=t_score, t_eps_s=t_eps,
                                     wall_s=wall, wall_diffusers_s=wall_ref, predictor_s=t_in,
                                     predictor_diffusers_s=t_in_ref, overhead_s=ov, overhead_diffusers_s=ov_ref,
                                     overhead_ratio=ov_ref / ov if ov > 0 else None,
                                     overhead_per_step_s=ov / steps, overhead_per_step_diffusers_s=ov_ref / steps,
                                     total_ratio=wall / wall_ref, repeats=k, repeats_diffusers=k_ref))
    return rows


# ---- 3. SMC -----------------------------------------------------------------------------------------------------
def smc_problem(device):
    from diffnotes import conditional as C
    mix = targets.GaussianMixture([0.6, 0.3, 0.1], [[-2.5, 0.8], [0.0, 0.0], [2.5, -0.6]],
                                  [[[0.3, 0.1], [0.1, 0.25]], [[0.3, -0.1], [-0.1, 0.25]],
                                   [[0.3, 0.0], [0.0, 0.2]]]).to(device)
    return C.Inpainting(mix, idx_y=[1])


def bench_smc(runs, n, T_target, steps_measured, device, progress, repeats=1, before_rev=None, threads=2):
    """Chapter 04's problem (``Z = [X, Y]``, ``y0 = -0.3``), OU schedule with ``T_target`` steps on ``[0, 4]``;
    ``steps_measured`` of them are timed (the last ones, ``t = steps_measured .. 1``, through a schedule made of
    those steps; the total is then scaled to ``T_target`` steps), minimum over ``repeats`` runs.  With
    ``before_rev``, the same timing is repeated in a subprocess on the package as it was at that git revision
    (``code`` = the revision; the current code's rows have ``code = "current"``)."""
    from diffnotes import conditional as C
    P = smc_problem(device)
    eps = 4.0 / T_target
    full = sc.ou(eps, 4.0)
    sch = full.subsample(list(range(0, steps_measured + 1))) if steps_measured < full.T else full
    rows = []
    for name in _progress(["smcdiff", "tds"], progress, "smc"):
        f = getattr(C, name)
        kw = {"sigma_y": 0.1} if name == "tds" else {}

        def once():
            return f(P, -0.3, sch, runs=runs, n=n, generator=torch.Generator(device=device).manual_seed(0), **kw)
        wall, _, k = timeit(once, repeats, device, warmup=False)
        rows.append(dict(method=name, code="current", runs=runs, particles=n, steps_measured=sch.T,
                         steps_target=T_target, wall_measured_s=wall, per_step_s=wall / sch.T,
                         wall_target_s=wall / sch.T * T_target, scaled=sch.T != T_target, target_s=10.0, repeats=k))
    if before_rev:
        try:
            rows += _smc_at(before_rev, runs, n, steps_measured, device, repeats, threads)
        except ValueError as e:
            if before_rev != SMC_BEFORE_REV:      # asked for explicitly: an error; the default: skipped (shallow clone)
                raise
            print(f"smc: no before/after comparison ({e})", file=sys.stderr)
    return rows


def _smc_at(rev, runs, n, steps_measured, device, repeats, threads):
    """The ``smc`` rows of this benchmark run on ``diffnotes/`` as exported from git revision ``rev``."""
    import tempfile
    full = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True)
    if full.returncode != 0:
        raise ValueError(f"smc-before: unknown git revision {rev!r}: {full.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="diffnotes-at-") as tmp:
        arch = subprocess.run(["git", "archive", "--format=tar", rev, "diffnotes"], cwd=ROOT, capture_output=True)
        if arch.returncode != 0:
            raise ValueError(f"smc-before: git archive {rev} failed: {arch.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", tmp], input=arch.stdout, check=True)
        out = Path(tmp) / "smc.json"
        env = dict(os.environ, DIFFNOTES_BENCH_PACKAGE=tmp)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--sections", "smc", "--smc-before", "",
                        "--smc-steps", str(steps_measured), "--smc-runs", str(runs), "--smc-particles", str(n),
                        "--smc-repeats", str(repeats), "--device", device, "--threads", str(threads),
                        "--out", str(out)], env=env, check=True, capture_output=True)
        rows = json.loads(out.read_text())["smc"]
    for r in rows:
        r["code"] = full.stdout.strip()
    return rows


# ---- 4. exact laws vs Monte Carlo -------------------------------------------------------------------------------
def bench_laws(dims, T, pilot_n, pilot_reps, rel_acc, device, progress, max_pilot_elems=2_000_000):
    """``KL(q_1 || p_{Y_1})`` (target at t = 1 against DDPM's output law at t = 1) for a diagonal Gaussian target
    in R^d with an exact score: (a) exact, by propagating the law (``laws.law``, O(d) per step, and the full-matrix
    path O(d^3) where d <= 100) and the closed form ``metrics.kl_gaussian``; (b) by Monte Carlo: run DDPM on ``n``
    draws and plug the fitted diagonal Gaussian into the closed form.  The MC estimate's RMSE (``pilot_reps`` replicas
    at ``pilot_n``, capped at ``max_pilot_elems / d``) scales as ``n^{-1/2}``: the ``n`` for an RMSE of
    ``rel_acc`` x KL, and its cost, follow (extrapolated from the pilot: sampling cost is linear in ``n``)."""
    rows = []
    pilot_cap = pilot_n
    sch = sc.theory(T, 2, 4, max_alphabar_T=0.05).to(device)
    for d in _progress(dims, progress, "laws"):
        g = torch.Generator().manual_seed(d)
        var = (0.2 + 1.8 * torch.rand(d, generator=g, dtype=torch.float64)).to(device)
        loc = torch.randn(d, generator=g, dtype=torch.float64).to(device)
        tgt = targets.DiagonalGaussian(loc, var)
        init = targets.DiagonalGaussian(torch.zeros(d, dtype=torch.float64, device=device),
                                        torch.ones(d, dtype=torch.float64, device=device))
        ref = tgt.marginal(sch.lab(1))

        def exact():
            return metrics.kl_gaussian(ref, laws.law(S.ddpm, tgt.affine_score(), init, sch, stop=1))
        t_exact, kl, _ = timeit(exact, 3, device)
        kl = float(kl)
        t_full = None
        if d <= 100:
            G = targets.Gaussian(loc, torch.diag(var))
            initG = targets.Gaussian(torch.zeros(d, dtype=torch.float64, device=device),
                                     torch.eye(d, dtype=torch.float64, device=device))
            refG = G.marginal(sch.lab(1))
            t_full, klf, _ = timeit(lambda: metrics.kl_gaussian(refG, laws.law(S.ddpm, G.affine_score(), initG, sch,
                                                                             stop=1)), 1, device)
        pilot_n = min(pilot_cap, max(100, max_pilot_elems // d))
        gen = torch.Generator(device=device).manual_seed(1)
        ests = []
        t0 = time.perf_counter()
        for _ in range(pilot_reps):
            y = S.ddpm(tgt.score, torch.randn(pilot_n, d, generator=gen, dtype=torch.float64, device=device), sch,
                       generator=gen, stop=1).x
            fit = targets.DiagonalGaussian(y.mean(0), y.var(0))
            ests.append(float(metrics.kl_gaussian(ref, fit)))
        _sync(device)
        t_pilot = (time.perf_counter() - t0) / pilot_reps
        rmse = math.sqrt(sum((e - kl) ** 2 for e in ests) / len(ests))
        n_req = pilot_n * (rmse / (rel_acc * kl)) ** 2
        rows.append(dict(d=d, T=T, kl_exact=kl, kl_direction="KL(q_1 || p_Y1) at t = 1", t_exact_diag_s=t_exact,
                         t_exact_full_s=t_full, pilot_n=pilot_n, pilot_reps=pilot_reps, mc_rmse_at_pilot=rmse,
                         rel_acc=rel_acc, n_required=n_req, t_mc_pilot_s=t_pilot,
                         t_mc_required_s=t_pilot * n_req / pilot_n, cost_ratio=t_pilot * n_req / pilot_n / t_exact))
    return rows


# ---- 6. peak memory ---------------------------------------------------------------------------------------------
def bench_memory(cases, steps, device, threads):
    """Peak resident memory of one sampler case in a fresh interpreter (``ru_maxrss``, KiB on Linux): read once
    after the imports and the predictor are set up (baseline) and once after sampling; the increment is what the
    sampling itself needed, compared with the size of one ``(batch, d)`` tensor."""
    rows = []
    for sampler, d, n, dt in cases:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-case",
               json.dumps(dict(sampler=sampler, d=d, n=n, dtype=dt, steps=steps, device=device, threads=threads))]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        x_bytes = n * d * torch.empty(0, dtype=DTYPES[dt]).element_size()
        inc = (res["after_kib"] - res["baseline_kib"]) * 1024
        rows.append(dict(sampler=sampler, d=d, batch=n, dtype=dt, steps=steps,
                         method="ru_maxrss of a fresh subprocess, before and after sampling",
                         peak_rss_mib=res["after_kib"] / 1024, baseline_rss_mib=res["baseline_kib"] / 1024,
                         increment_mib=inc / 2 ** 20, x_mib=x_bytes / 2 ** 20, increment_over_x=inc / x_bytes,
                         cuda_peak_mib=res.get("cuda_peak_mib")))
    return rows


def _memory_case(spec):
    spec = json.loads(spec)
    torch.set_num_threads(spec["threads"])
    dev, dt = spec["device"], DTYPES[spec["dtype"]]
    mix = mixture(spec["d"], device=dev, dtype=dt)
    _, sch = bench_schedule(spec["steps"])
    sch = sch.to(dev)
    mix.score(torch.zeros(2, spec["d"], device=dev, dtype=dt), sch.lab(1))     # warm the kernels up
    out = {"baseline_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    x = torch.randn(spec["n"], spec["d"], device=dev, dtype=dt)
    getattr(S, spec["sampler"])(mix.score, x, sch, generator=torch.Generator(device=dev).manual_seed(0))
    if torch.device(dev).type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    out["after_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))


# ---- machine label and main -------------------------------------------------------------------------------------
def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device, threads):
    import diffusers
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return dict(device=str(dev), device_name=name, cpu_model=cpu_model(), cpu_count=os.cpu_count(),
                torch_threads=threads, torch=torch.__version__, diffusers=diffusers.__version__,
                python=platform.python_version(), platform=platform.platform())


def label(device, threads):
    dev = torch.device(device)
    return "cpu" if dev.type == "cpu" else dev.type


def _progress(it, on, desc):
    if on:
        from tqdm.auto import tqdm
        return tqdm(it, desc=desc, leave=False)
    return it


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy sizes (seconds): checks the harness and the schema")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<device>[-quick].json)")
    ap.add_argument("--sections", default="overhead,ab,diffusers,smc,laws,memory",
                    help="comma-separated subset of overhead,ab,diffusers,smc,laws,memory (ab: before/after the "
                         "samplers' performance fix, needs git)")
    ap.add_argument("--ab-rev", default=AB_REV, help=f"git revision of the 'before' samplers (default {AB_REV})")
    ap.add_argument("--smc-steps", type=int, default=None,
                    help="SMC steps actually timed (default: all T = 200; fewer are scaled to T = 200)")
    ap.add_argument("--smc-repeats", type=int, default=None, help="SMC runs timed (minimum taken; default 3)")
    ap.add_argument("--smc-runs", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--smc-particles", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--smc-before", default=None,
                    help=f"git revision whose SMC code is timed beside the current one (default {SMC_BEFORE_REV}, "
                         "none with --quick; '' to skip)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    ap.add_argument("--progress", action="store_true", help="tqdm progress bars")
    ap.add_argument("--samplers-from", default=None, metavar="GIT_REV",
                    help="time diffnotes/samplers.py as it was at this git revision (before/after comparisons)")
    ap.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_case:
        return _memory_case(a.memory_case)
    try:
        dev = torch.device(a.device)
    except RuntimeError as e:
        raise ValueError(f"device: unknown device {a.device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but torch.cuda.is_available() is False")
    if a.threads < 1:
        raise ValueError(f"threads must be >= 1, got {a.threads}")
    sections = [s for s in a.sections.split(",") if s]
    unknown = set(sections) - {"overhead", "ab", "diffusers", "smc", "laws", "memory"}
    if unknown:
        raise ValueError(f"sections: unknown {sorted(unknown)}")
    torch.set_num_threads(a.threads)
    if a.samplers_from:
        _use_samplers_from(a.samplers_from)
    q = a.quick
    if a.smc_before is None:
        a.smc_before = "" if q else SMC_BEFORE_REV
    cfg = dict(
        quick=q, steps=5 if q else 10, repeats=1 if q else 3, budget_s=0.0 if q else 1.0,
        grid=QUICK_GRID if q else FULL_GRID, dtypes=list(DTYPES),
        diffusers_batches=[100, 2_000] if q else [100, 100_000], diffusers_d=2,
        ab_batches=[100, 2_000] if q else [100, 100_000], ab_repeats=3 if q else 60,
        smc=dict(runs=a.smc_runs or 50, n=a.smc_particles or 16, T=200, steps_measured=a.smc_steps or 2,
                 repeats=a.smc_repeats or 1, before=a.smc_before) if q else
        dict(runs=a.smc_runs or 1000, n=a.smc_particles or 128, T=200, steps_measured=a.smc_steps or 200,
             repeats=a.smc_repeats or 3, before=a.smc_before),
        laws=dict(dims=[2, 10] if q else [2, 10, 100, 1000], T=20 if q else 100,
                  pilot_n=2_000 if q else 20_000, pilot_reps=3 if q else 5, rel_acc=0.01, max_pilot_elems=1_000_000),
        memory=[("ddpm", 2, 2_000, "float64")] if q else
        [("accel_ode", 10, 1_000_000, "float64")])
    out = dict(schema=SCHEMA, created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               machine=machine(a.device, a.threads), config=cfg, note=a.note, samplers_from=a.samplers_from,
               loadavg_before=list(os.getloadavg()))
    t0 = time.perf_counter()
    out["section_s"] = {}
    for sec in sections:
        ts = time.perf_counter()
        if sec == "overhead":
            out[sec] = bench_overhead(cfg["grid"], cfg["dtypes"], cfg["steps"], cfg["repeats"], a.device, a.progress,
                                      cfg["budget_s"])
        elif sec == "ab":
            out[sec] = bench_ab(a.ab_rev, cfg["ab_batches"], cfg["dtypes"], 2, cfg["steps"], cfg["ab_repeats"],
                                a.device, a.progress)
        elif sec == "diffusers":
            out[sec] = bench_diffusers(cfg["diffusers_batches"], cfg["dtypes"], cfg["diffusers_d"], cfg["steps"],
                                       cfg["repeats"], a.device, a.progress, cfg["budget_s"])
        elif sec == "smc":
            c = cfg["smc"]
            out[sec] = bench_smc(c["runs"], c["n"], c["T"], c["steps_measured"], a.device, a.progress, c["repeats"],
                                 c["before"], a.threads)
        elif sec == "laws":
            c = cfg["laws"]
            out[sec] = bench_laws(c["dims"], c["T"], c["pilot_n"], c["pilot_reps"], c["rel_acc"], a.device,
                                  a.progress, c["max_pilot_elems"])
        elif sec == "memory":
            out[sec] = bench_memory(cfg["memory"], cfg["steps"], a.device, a.threads)
        out["section_s"][sec] = time.perf_counter() - ts
        print(f"{sec}: {out['section_s'][sec]:.1f} s", flush=True)
    out["loadavg_after"] = list(os.getloadavg())
    out["total_s"] = time.perf_counter() - t0
    path = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"{label(a.device, a.threads)}{'-quick' if q else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=_json_default) + "\n")
    print(f"wrote {path} ({out['total_s']:.1f} s)")
    return out


def _use_samplers_from(rev):
    """Replace the samplers module used by every section with ``diffnotes/samplers.py`` at git revision ``rev``."""
    global S
    S, _ = samplers_at(rev)


def _json_default(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(type(v))


if __name__ == "__main__":
    main()
