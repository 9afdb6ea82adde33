"""The benchmark harness (quick mode), the committed Performance page against the committed JSON, and the fast
samplers against the plain per-step formulas (the same draws; the numbers equal to rounding)."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffnotes import samplers as S, schedules as sc
from diffnotes.targets import GaussianMixture

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


run = _load("run")
report = _load("report")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# ---- the harness ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    pytest.importorskip("diffusers")
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    run.main(["--quick", "--threads", "1", "--out", str(out)])
    return json.loads(out.read_text())


def _pos(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_quick_run_schema(quick):
    r = quick
    assert r["schema"] == run.SCHEMA
    for k in ("device", "device_name", "cpu_model", "torch_threads", "torch", "diffusers"):
        assert k in r["machine"], k
    assert r["machine"]["torch_threads"] == 1
    assert set(r["section_s"]) == {"overhead", "ab", "diffusers", "smc", "laws", "memory"}
    steps = r["config"]["steps"]
    # 1. one row per (grid point, dtype, sampler), NFE as the samplers count them
    assert len(r["overhead"]) == len(r["config"]["grid"]) * 2 * len(run.SAMPLER_NAMES)
    for row in r["overhead"]:
        assert row["nfe"] == (2 * steps if row["sampler"] == "accel_ode" else steps)
        for k in ("t_score_s", "wall_s", "ratio", "t_score_inrun_s", "ratio_inrun"):
            assert _pos(row[k]), (k, row)
        assert row["ratio_inrun"] == pytest.approx(row["wall_s"] / row["t_score_inrun_s"])
        assert row["t_score_inrun_s"] < row["wall_s"]          # the predictor's share is part of the wall time
    # 1b. before / after, every sampler at every batch and dtype
    assert len(r["ab"]) == len(r["config"]["ab_batches"]) * 2 * len(run.SAMPLER_NAMES)
    for row in r["ab"]:
        assert _pos(row["speedup"]) and row["speedup"] == pytest.approx(
            row["own_per_step_before_s"] / row["own_per_step_after_s"])
    # 2. every diffusers loop ran its steps; DDIM/DDPM are flagged as the same algorithm
    for row in r["diffusers"]:
        assert row["nfe_diffusers"] == steps
        assert row["same_algorithm"] == (row["diffusers"] != "DPMSolverSinglestepScheduler")
        assert _pos(row["wall_s"]) and _pos(row["wall_diffusers_s"])
        assert row["overhead_s"] == pytest.approx(row["wall_s"] - row["predictor_s"])
    assert {row["diffusers"] for row in r["diffusers"]} == set(run.PEERS)
    # 3. SMC: both methods, the per-step time scaled to T
    assert [row["method"] for row in r["smc"]] == ["smcdiff", "tds"]
    for row in r["smc"]:
        assert row["wall_target_s"] == pytest.approx(row["per_step_s"] * row["steps_target"])
    # 4. laws: the exact KL is positive and the MC cost is extrapolated consistently
    for row in r["laws"]:
        assert _pos(row["kl_exact"]) and _pos(row["n_required"])
        assert row["t_mc_required_s"] == pytest.approx(row["t_mc_pilot_s"] * row["n_required"] / row["pilot_n"])
    # 6. memory: a peak no lower than its baseline
    for row in r["memory"]:
        assert row["peak_rss_mib"] >= row["baseline_rss_mib"] > 0
    # the page renders from it
    page = report.render(r)
    assert page.startswith("# Performance") and "## 1. Sampler overhead" in page


def test_smc_before_after_reruns_an_exported_revision(tmp_path):
    """The SMC section times the package as exported from a git revision in a subprocess (here HEAD: the rows
    carry its short hash and the same schema)."""
    pytest.importorskip("diffusers")
    out = tmp_path / "smc.json"
    run.main(["--quick", "--threads", "1", "--sections", "smc", "--smc-before", "HEAD", "--out", str(out)])
    rows = json.loads(out.read_text())["smc"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=run.ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert [(r["method"], r["code"]) for r in rows] == [("smcdiff", "current"), ("tds", "current"),
                                                        ("smcdiff", head), ("tds", head)]
    assert all(r["per_step_s"] > 0 and r["repeats"] >= 1 for r in rows)
    with pytest.raises(ValueError, match="smc-before"):
        run.main(["--quick", "--threads", "1", "--sections", "smc", "--smc-before", "no-such-rev",
                  "--out", str(out)])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sections"):
        run.main(["--quick", "--sections", "overhead,nonsense"])
    with pytest.raises(ValueError, match="threads"):
        run.main(["--quick", "--threads", "0"])


def test_timed_score_adds_up():
    """The in-run predictor time is a sum of the calls' times: a sleeping predictor gives its known total."""
    import time
    ts = run.TimedScore(lambda x, lab: time.sleep(0.01) or x, "cpu")
    for _ in range(5):
        ts(torch.zeros(1), 0.0)
    assert ts.calls == 5 and 0.05 <= ts.seconds < 0.5


# ---- the committed page ----------------------------------------------------------------------------------------
def test_committed_page_matches_committed_json():
    """book/performance.md is exactly what report.py renders from benchmarks/results/*.json (rerun
    `make bench` or `python benchmarks/report.py` after changing either)."""
    res = report.load(report.RESULTS / "cpu.json")
    assert res is not None, "benchmarks/results/cpu.json is missing"
    others = [o for o in (report.load(p) for p in sorted(report.RESULTS.glob("cuda*.json")) if "quick" not in p.name)
              if o]
    assert report.PAGE.read_text() == report.render(res, others)
    assert (report.PAGE.parent / "figures" / "performance-cpu.png").exists()


# ---- the fast samplers are the plain formulas, to rounding ------------------------------------------------------
def _plain(name, score, x, sch, g, **o):
    """The updates written step by step with 0-d tensor coefficients (the samplers before the performance fix)."""
    la, lab, beta, omab = sch.log_alpha, sch.log_alphabar, sch.beta, sch.one_minus_alphabar
    noise = lambda: torch.randn(x.shape, dtype=x.dtype, generator=g)  # noqa: E731
    s_prev = None
    for t in range(sch.T, 0, -1):
        if name == "ddpm":
            sd = sch.beta_tilde.sqrt() if o.get("variance") == "beta_tilde" else beta.sqrt()
            x = torch.exp(-0.5 * la)[t] * (x + beta[t] * score(x, lab[t])) + sd[t] * noise()
        elif name == "ddim":
            eta = o.get("eta", 0.0)
            s = score(x, lab[t])
            x0 = torch.exp(-0.5 * lab[t]) * (x + omab[t] * s)
            c = (omab[t - 1] * (1 - eta ** 2 * beta[t] / omab[t])).clamp_min(0).sqrt()
            x = torch.exp(0.5 * lab[t - 1]) * x0 + c * (-omab[t].sqrt() * s)
            if eta > 0:
                x = x + (eta ** 2 * sch.beta_tilde)[t].sqrt() * noise()
        elif name == "flow_ode":
            x = torch.exp(-0.5 * la)[t] * (x + 0.5 * beta[t] * score(x, lab[t]))
        elif name == "accel_ode":
            s = score(x, lab[t])
            sa = torch.exp(0.5 * la[t + 1])
            s2 = score(sa * (x - 0.5 * beta[t + 1] * s), lab[t + 1])
            x = torch.exp(-0.5 * la[t]) * (x + 0.5 * beta[t] * s + beta[t] ** 2 / (4 * beta[t + 1]) * (s - sa * s2))
        elif name == "accel_sde":
            h = (0.5 * beta).sqrt()
            xp = x + h[t] * noise()
            x = torch.exp(-0.5 * la)[t] * (xp + beta[t] * score(xp, lab[t]) + h[t] * noise())
        elif name == "multistep_ode":
            s = score(x, lab[t])
            corr = torch.zeros_like(s) if s_prev is None else \
                beta[t] ** 2 / (4 * beta[t + 1]) * (s - torch.exp(0.5 * la[t + 1]) * s_prev)
            x = torch.exp(-0.5 * la[t]) * (x + 0.5 * beta[t] * s + corr)
            s_prev = s
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,opts", [("ddpm", {}), ("ddpm", {"variance": "beta_tilde"}), ("ddim", {}),
                                       ("ddim", {"eta": 0.6}), ("flow_ode", {}), ("accel_ode", {}),
                                       ("accel_sde", {}), ("multistep_ode", {})])
def test_fast_samplers_equal_plain_formulas(name, opts, dtype):
    """The samplers (coefficients precomputed, fused updates) against the documents' per-step formulas, with the
    same draws: equal to rounding, relative to 1 + |x| (float64: 1e-13, observed <= 2.2e-15; float32: 100 x its unit
    roundoff 6e-8 over up to 60 steps, observed <= 1.5e-6)."""
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture(torch.tensor([0.3, 0.7]), torch.randn(2, 3, generator=g, dtype=torch.float64),
                          torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * 0.3)

    def score(x, lab):
        return mix.score(x.double(), lab).to(x.dtype)
    for sch in (sc.linear(60), sc.linear(1000).subsample([0, 1] + list(range(101, 1000, 100)))):
        x = torch.randn(50, 3, generator=g, dtype=torch.float64).to(dtype)
        fast = getattr(S, name)(score, x, sch, generator=torch.Generator().manual_seed(1), **opts).x
        plain = _plain(name, score, x, sch, torch.Generator().manual_seed(1), **opts)
        assert fast.dtype == plain.dtype == dtype
        tol = 1e-13 if dtype == torch.float64 else 6e-6
        err = float(((fast - plain).abs() / (1 + plain.abs())).max())
        assert err <= tol, err


@pytest.mark.parametrize("n", [3, 10_000])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_finite_check_catches_every_non_finite(n, bad):
    """The samplers' finite check (a min/max reduction at large batch) raises on NaN and on +-inf anywhere, and
    passes huge but finite values and an empty batch."""
    x = torch.zeros(n, 2, dtype=torch.float64)
    x[n // 2, 1] = bad
    with pytest.raises(FloatingPointError, match="step t = 7"):
        S._check_finite(x, 7, "test")
    S._check_finite(torch.full((n, 2), 1e300, dtype=torch.float64), 7, "test")
    S._check_finite(torch.zeros(0, 2), 7, "test")
