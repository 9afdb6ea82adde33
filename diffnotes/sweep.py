"""Run notebooks over seeds and parameter grids on a Dask cluster: ``python -m diffnotes sweep``.

    python -m diffnotes sweep 01_pipeline 02_convergence --size smoke --seeds 0:8 --workers 2 --out runs/a
    python -m diffnotes sweep 01_pipeline --grid d "[4, 8]" -p n_mc 5000 --scheduler tcp://10.0.0.1:8786

Each task is one papermill execution of one notebook with one parameter set (:func:`diffnotes.cli.execute`) in a
Dask worker.  Every parameter set is checked before anything is submitted, with the checks of ``run`` (the
``parameters`` cell, then the notebook's own checks).  Without ``--scheduler`` a ``LocalCluster`` runs one
single-threaded worker process per core (``--workers N``).  The worker executes into a temporary folder and sends
the files back, so workers need the package but no shared file system.

``OUT/<stem>/<run>/`` holds each run (executed notebook, figures, verdict records, ``run.json`` with its status,
wall time, host, hardware and package commit); ``OUT/sweep.json`` the manifest (every task and its parameters);
``OUT/aggregate.json`` per chapter, parameter set and verdict, across seeds: the outcome counts and the measured
figure's mean and standard error.  A run whose ``run.json`` says "ok" is complete: a rerun of the same sweep skips
it (resume).  A failed task is reported with its notebook cell and does not stop the others; the command then
exits with status 1.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from . import cli


# ------------------------------------------------------------------------------------------------ the tasks
def parse_seeds(text):
    """``"0:8"`` (a range, end excluded), ``"3"`` or ``"0,4,7"``."""
    try:
        if ":" in text:
            a, b = (int(x) for x in text.split(":"))
            seeds = list(range(a, b))
        else:
            seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds: expected START:STOP, a seed or a comma list, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct seeds >= 0, got {text!r}")
    return seeds


def parse_grid(pairs):
    """``[(NAME, "[v1, v2]"), ...]`` -> ``{NAME: ["v1", "v2"]}`` (each value coerced later, per notebook)."""
    grid = {}
    for name, text in pairs:
        values = yaml.safe_load(text)
        if not isinstance(values, list) or not values:
            raise ValueError(f"--grid {name}: expected a non-empty YAML list such as \"[1, 2]\", got {text!r}")
        if name in grid or name == "seed":
            raise ValueError(f"--grid {name}: given twice, or the seed (use --seeds)")
        grid[name] = values
    return grid


def run_key(params):
    """The run's folder name: the seed and a hash of the whole parameter set (same parameters, same folder)."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"seed{params.get('seed', 'x')}-{h}"


def plan(stems, size="ci", seeds=(0,), pairs=(), grid=None):
    """Every task of a sweep, each parameter set checked as ``run`` checks it (ValueError before anything runs)."""
    grid = grid or {}
    names = list(grid)
    tasks = []
    for stem in stems:
        path = cli.resolve_notebook(stem)
        spec = cli.read_parameters(path)
        if "seed" not in spec:
            raise ValueError(f"{path.stem} has no 'seed' parameter to sweep")
        source = path.read_text()
        for combo in itertools.product(*(grid[n] for n in names)):
            for seed in seeds:
                extra = list(pairs) + [(n, v) for n, v in zip(names, combo)] + [("seed", seed)]
                params = cli.build_parameters(path, size, extra)
                cli.check_values(path, params)
                tasks.append({"stem": path.stem, "key": run_key(params), "params": params, "source": source,
                              "notebook_dir": str(path.parent)})
    keys = [(t["stem"], t["key"]) for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("the sweep lists the same run twice (a repeated seed or grid value)")
    return tasks


def run_task(task):
    """On a worker: execute one task in a temporary folder; return its record and its files (bytes by path)."""
    with tempfile.TemporaryDirectory(prefix="diffnotes-task-") as tmp:
        folder = Path(tmp) / "run"
        folder.mkdir()
        cwd = task["notebook_dir"] if os.path.isdir(task["notebook_dir"]) else tmp
        rec = cli.execute(Path(task["stem"] + ".md"), task["params"], folder, source=task["source"], cwd=cwd,
                          verbose=False)
        try:
            from distributed import get_worker
            rec["worker"] = get_worker().address
        except (ImportError, ValueError):
            rec["worker"] = None
        (folder / "run.json").write_text(json.dumps(rec, indent=1, default=str))
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return {"record": rec, "files": files}


def complete(folder):
    try:
        return json.loads((folder / "run.json").read_text())["status"] == "ok"
    except (OSError, ValueError, KeyError):
        return False


def store(out, task, result):
    """Write a finished task's files into ``OUT/<stem>/<key>/`` (replacing an incomplete earlier attempt)."""
    folder = out / task["stem"] / task["key"]
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in result["files"].items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# ------------------------------------------------------------------------------------------------ aggregate
def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(out):
    """Per chapter and parameter set (all but the seed), per verdict: outcome counts over the seeds, how many seeds'
    outcomes agree with the one the chapter's text states (``agree`` of ``n``), and the measured figure's mean and
    standard error (numbers only; other figures are listed)."""
    groups = {}
    for f in sorted(Path(out).glob("*/*/run.json")):
        rec = json.loads(f.read_text())
        rest = {k: v for k, v in rec["params"].items() if k != "seed"}
        g = groups.setdefault((rec["stem"], json.dumps(rest, sort_keys=True)),
                              {"chapter": rec["stem"], "params": rest, "seeds": [], "failed_seeds": [], "claims": {}})
        if rec["status"] != "ok":
            g["failed_seeds"].append(rec["seed"])
            continue
        g["seeds"].append(rec["seed"])
        for rf in sorted((f.parent / "results").glob("*.json")):
            for c in json.loads(rf.read_text())["claims"]:
                cl = g["claims"].setdefault(c["id"], {"document": c.get("document"), "claim": c.get("claim"),
                                                      "stated": c.get("stated"), "seeds": [], "outcomes": [],
                                                      "measured": [], "agrees": []})
                cl["seeds"].append(rec["seed"])
                cl["outcomes"].append(c["outcome"])
                cl["measured"].append(c.get("measured"))
                cl["agrees"].append(bool(c.get("agrees")))
    result = []
    for g in groups.values():
        g["seeds"] = sorted(g["seeds"])
        g["failed_seeds"] = sorted(g["failed_seeds"])
        for cl in g["claims"].values():
            idx = sorted(range(len(cl["seeds"])), key=lambda i: cl["seeds"][i])
            for k in ("seeds", "outcomes", "measured", "agrees"):
                cl[k] = [cl[k][i] for i in idx]
            cl["agree"] = sum(cl["agrees"])         # seeds whose outcome is the one the chapter's text states
            cl["outcome_counts"] = dict(sorted(Counter(cl["outcomes"]).items()))
            xs = [float(x) for x in cl["measured"] if _number(x)]
            n = len(xs)
            cl["n"] = len(cl["seeds"])
            cl["mean"] = sum(xs) / n if n and n == cl["n"] else None
            cl["se"] = (math.sqrt(sum((x - cl["mean"]) ** 2 for x in xs) / (n - 1) / n)
                        if cl["mean"] is not None and n > 1 else None)
        result.append(g)
    return sorted(result, key=lambda g: (g["chapter"], json.dumps(g["params"], sort_keys=True)))


def report(groups, file=None):
    file = file or sys.stdout
    for g in groups:
        failed = f"; failed seeds {g['failed_seeds']}" if g["failed_seeds"] else ""
        print(f"{g['chapter']}  size {g['params'].get('size', '?')}  seeds {g['seeds']}{failed}", file=file)
        for cid, cl in g["claims"].items():
            counts = ", ".join(f"{v} {k}" for k, v in cl["outcome_counts"].items())
            fig = ("" if cl["mean"] is None else f"  measured {cli_fmt(cl['mean'])}"
                   + ("" if cl["se"] is None else f" +- {cli_fmt(cl['se'])} (s.e.)"))
            print(f"  {cid:30s} {counts}{fig}", file=file)


def cli_fmt(v):
    return f"{v:.4g}"


# ------------------------------------------------------------------------------------------------ the command
def add_parser(sub):
    s = sub.add_parser("sweep", help="run notebooks over seeds and parameter grids on a Dask cluster",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    s.add_argument("stems", nargs="+", metavar="STEM", help="notebook stems (e.g. 01_pipeline) or paths")
    s.add_argument("--size", choices=["smoke", "ci", "paper"], default="ci",
                   help="start from notebooks/params/<stem>.<size>.yml (ci: the notebook's own defaults)")
    s.add_argument("--seeds", default="0:1", help="seeds: START:STOP (end excluded), one seed or a comma list "
                   "(default 0:1)")
    s.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a parameter in every run (VALUE parsed as YAML)")
    s.add_argument("--grid", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
                   help="run every value of a YAML list, e.g. --grid d \"[4, 8]\" (grids multiply)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    g.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://HOST:8786")
    s.add_argument("--out", default="runs/sweep", help="output folder (default: runs/sweep)")


def run_sweep(tasks, out, client, *, argv=None, file=None):
    """Submit the incomplete tasks to ``client``; store each result as it finishes; write the manifest and the
    aggregate.  Returns ``{"ran": [...], "skipped": [...], "failed": [...]}`` (task keys)."""
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    file = file or sys.stderr
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "sweep.json"
    known = json.loads(manifest.read_text())["tasks"] if manifest.is_file() else []
    entries = {(t["stem"], t["key"]): t for t in known}
    for t in tasks:
        entries[(t["stem"], t["key"])] = {"stem": t["stem"], "key": t["key"], "params": t["params"],
                                          "folder": f"{t['stem']}/{t['key']}"}
    manifest.write_text(json.dumps({"command": argv, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "commit": cli.package_commit(), "tasks": list(entries.values())}, indent=1))
    todo = [t for t in tasks if not complete(out / t["stem"] / t["key"])]
    skipped = [f"{t['stem']}/{t['key']}" for t in tasks if t not in todo]
    if skipped:
        print(f"resume: {len(skipped)} of {len(tasks)} runs already complete, skipped", file=file)
    by_future = {client.submit(run_task, t, pure=False, key=f"diffnotes-{t['stem']}-{t['key']}-{time.time_ns()}"): t
                 for t in todo}
    ran, failed = [], []
    t0 = time.time()
    with tqdm(total=len(todo), desc="sweep", unit="run", file=file) as bar:
        for fut in as_completed(by_future):
            t = by_future[fut]
            name = f"{t['stem']}/{t['key']}"
            try:
                res = fut.result()
                store(out, t, res)
                rec = res["record"]
            except Exception as e:  # noqa: BLE001 - a worker that died: reported, the others go on
                rec = {"status": "failed", "error": {"cell": None, "ename": type(e).__name__, "evalue": str(e)}}
            ran.append(name)
            if rec["status"] != "ok":
                failed.append(name)
                bar.write(f"FAILED {name} (seed {t['params'].get('seed')}): {cli.describe_error(rec['error'])}",
                          file=file)
            bar.update()
    groups = aggregate(out)
    (out / "aggregate.json").write_text(json.dumps(groups, indent=1, default=str))
    print(f"sweep: {len(ran)} runs in {time.time() - t0:.1f} s ({len(failed)} failed), {len(skipped)} skipped; "
          f"runs in {out}/<stem>/<run>/, manifest {manifest}, aggregate {out / 'aggregate.json'}", file=file)
    return {"ran": ran, "skipped": skipped, "failed": failed, "groups": groups}


def connect(workers=None, scheduler=None):
    """A Dask client: to ``scheduler``, or to a new LocalCluster of single-threaded worker processes."""
    import logging

    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="30s"), None
    n = workers or os.cpu_count() or 1
    if n < 1:
        raise ValueError(f"--workers must be >= 1, got {n}")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def main(args):
    try:
        seeds = parse_seeds(args.seeds)
        grid = parse_grid(args.grid)
        tasks = plan(args.stems, args.size, seeds, args.parameter, grid)
        out = Path(args.out).expanduser().resolve()
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: {out} is a file, not a folder")
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep: {len(tasks)} runs ({len(args.stems)} notebooks x {len(tasks) // len(args.stems)} parameter sets), "
          f"parameters checked", file=sys.stderr)
    client, cluster = connect(args.workers, args.scheduler)
    try:
        n = len(client.scheduler_info().get("workers", {}))
        print(f"Dask: {'scheduler ' + args.scheduler if args.scheduler else 'LocalCluster'}, {n} workers; "
              f"dashboard {client.dashboard_link}", file=sys.stderr)
        res = run_sweep(tasks, out, client, argv=sys.argv)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    report(res["groups"])
    return 1 if res["failed"] else 0
