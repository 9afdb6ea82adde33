"""``python -m diffnotes sweep`` on Dask: a LocalCluster of two workers, resume, a failing task, and a real
multi-process cluster (``dask scheduler`` and two ``dask worker`` processes).  Smoke size: about a minute."""
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from diffnotes import cli, sweep

STEMS = ["01_pipeline", "03_covariance"]


def _records(out):
    """Per run: its run.json and its verdict claims, read straight from the run folders."""
    runs = []
    for f in sorted(Path(out).glob("*/*/run.json")):
        rec = json.loads(f.read_text())
        claims = [c for r in sorted((f.parent / "results").glob("*.json")) for c in json.loads(r.read_text())["claims"]]
        runs.append((f.parent, rec, claims))
    return runs


def test_sweep_two_notebooks_two_seeds_aggregate_and_resume(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", *STEMS, "--size", "smoke", "--seeds", "0:2", "--workers", "2", "--out", str(out)]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "dashboard http" in err and "2 workers" in err
    runs = _records(out)
    assert sorted((r["stem"], r["seed"]) for _, r, _ in runs) == sorted((s, k) for s in STEMS for k in (0, 1))
    for folder, rec, claims in runs:
        assert rec["status"] == "ok" and rec["wall_s"] > 0 and rec["host"] and "commit" in rec and rec["hardware"]
        assert (folder / f"{rec['stem']}.out.ipynb").is_file() and (folder / "figures").is_dir()
        assert claims
        if "size" in rec["params"]:                    # the size reached the kernel (where the notebook has one)
            assert rec["params"]["size"] == "smoke" and {c["size"] for c in claims} == {"smoke"}
    manifest = json.loads((out / "sweep.json").read_text())
    assert len(manifest["tasks"]) == 4

    # the aggregate equals the per-run records (recomputed here independently)
    agg = {g["chapter"]: g for g in json.loads((out / "aggregate.json").read_text())}
    for stem in STEMS:
        by_id = {}
        for _, rec, claims in runs:
            if rec["stem"] == stem:
                for c in claims:
                    by_id.setdefault(c["id"], []).append((rec["seed"], c))
        g = agg[stem]
        assert g["seeds"] == [0, 1] and g["failed_seeds"] == [] and set(g["claims"]) == set(by_id)
        for cid, pairs in by_id.items():
            cl = g["claims"][cid]
            assert cl["outcome_counts"] == dict(Counter(c["outcome"] for _, c in pairs))
            xs = [c["measured"] for _, c in sorted(pairs, key=lambda p: p[0])]
            assert cl["measured"] == xs
            if all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs):
                assert cl["mean"] == pytest.approx(statistics.fmean(xs), rel=1e-12)
                assert cl["se"] == pytest.approx(statistics.stdev(xs) / math.sqrt(len(xs)), rel=1e-9, abs=1e-300)

    # resume: nothing runs twice
    stamps = {f: f.stat().st_mtime_ns for f in out.glob("*/*/run.json")}
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "4 of 4 runs already complete" in err and "sweep: 0 runs" in err
    assert {f: f.stat().st_mtime_ns for f in out.glob("*/*/run.json")} == stamps


def test_a_failing_task_is_reported_and_the_others_finish(tmp_path, capsys):
    tasks = sweep.plan(["01_pipeline"], "smoke", [2, 3])
    tasks[1]["params"]["d"] = -4                      # injected after the checks: the notebook itself rejects it
    client, cluster = sweep.connect(workers=2)
    try:
        res = sweep.run_sweep(tasks, tmp_path, client)
    finally:
        client.close()
        cluster.close()
    bad, good = (f"01_pipeline/{t['key']}" for t in (tasks[1], tasks[0]))
    assert res["failed"] == [bad] and sorted(res["ran"]) == sorted([bad, good])
    err = capsys.readouterr().err
    assert f"FAILED {bad}" in err and "cell" in err and "parameter 'd' must be >= 1" in err
    rec = json.loads((tmp_path / bad / "run.json").read_text())
    assert rec["status"] == "failed" and rec["error"]["ename"] == "ValueError" and rec["error"]["cell"] is not None
    assert json.loads((tmp_path / good / "run.json").read_text())["status"] == "ok"
    assert (tmp_path / good / "results" / "01_pipeline.json").is_file()
    g = sweep.aggregate(tmp_path)
    assert sorted(s for x in g for s in x["failed_seeds"]) == [3]


def test_parameters_are_checked_before_anything_is_submitted(tmp_path, capsys):
    out = tmp_path / "never"
    for extra in (["-p", "d", "-4"], ["--grid", "d", "[4, -1]"], ["--seeds", "a:b"], ["--grid", "d", "4"],
                  ["-p", "nope", "1"]):
        assert cli.main(["sweep", "01_pipeline", "--size", "smoke", "--out", str(out), *extra]) == 2
        assert capsys.readouterr().err.startswith("error:")
    assert not out.exists()
    tasks = sweep.plan(["01_pipeline"], "smoke", [0, 1], [("n_mc", "5000")], {"d": [4, 8]})
    assert len(tasks) == 4 and len({t["key"] for t in tasks}) == 4
    assert all(t["params"]["size"] == "custom" and t["params"]["n_mc"] == 5000 for t in tasks)


def test_a_real_multi_process_cluster(tmp_path, capsys):
    """`dask scheduler` and two `dask worker` processes, separate from this one; a sweep with --scheduler."""
    dask = str(Path(sys.executable).parent / "dask")
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ)
    procs = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                               "--port", "0", "--dashboard-address", ":0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        t0 = time.time()
        while not sched_file.is_file() and time.time() - t0 < 60:
            time.sleep(0.2)
        procs += [subprocess.Popen([dask, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                                    "--nworkers", "1", "--name", f"w{i}", "--no-dashboard"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                  for i in range(2)]
        from dask.distributed import Client
        with Client(scheduler_file=str(sched_file), timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)
            address = c.scheduler.address
            workers = set(c.scheduler_info()["workers"])
        assert len(workers) == 2
        out = tmp_path / "sweep"
        assert cli.main(["sweep", "01_pipeline", "--size", "smoke", "--seeds", "0:2", "--scheduler", address,
                         "--out", str(out)]) == 0
        runs = _records(out)
        assert [r["status"] for _, r, _ in runs] == ["ok", "ok"]
        assert {r["worker"] for _, r, _ in runs} <= workers
        assert "scheduler " + address in capsys.readouterr().err
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
