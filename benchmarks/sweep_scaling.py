"""Wall time of the same 8-task sweep on a LocalCluster of 1 and of 2 workers (issue 19): 01_pipeline at smoke
size, seeds 0-7, each run in its own papermill kernel.  Writes ``benchmarks/results/sweep.json``; the Performance
page shows it (``benchmarks/report.py``).

    python benchmarks/sweep_scaling.py [--workers 1 2] [--seeds 0:8] [--note "..."]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from diffnotes import cli, sweep

OUT = Path(__file__).resolve().parent / "results" / "sweep.json"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seeds", default="0:8")
    ap.add_argument("--stem", default="01_pipeline")
    ap.add_argument("--size", default="smoke")
    ap.add_argument("--note", default="")
    a = ap.parse_args(argv)
    tasks = sweep.plan([a.stem], a.size, sweep.parse_seeds(a.seeds))
    rows = []
    for n in a.workers:
        load0 = os.getloadavg()
        client, cluster = sweep.connect(workers=n)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                res = sweep.run_sweep(tasks, tmp, client)
                wall = time.perf_counter() - t0
                runs = [json.loads(f.read_text()) for f in Path(tmp).glob("*/*/run.json")]
        finally:
            client.close()
            cluster.close()
        if res["failed"]:
            raise SystemExit(f"{len(res['failed'])} runs failed")
        rows.append({"workers": n, "tasks": len(tasks), "wall_s": round(wall, 2),
                     "run_wall_s_mean": round(sum(r["wall_s"] for r in runs) / len(runs), 2),
                     "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()]})
        print(rows[-1], flush=True)
    rec = {"stem": a.stem, "size": a.size, "seeds": a.seeds, "cores": os.cpu_count(), "rows": rows,
           "commit": cli.package_commit(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": a.note,
           "hardware": cli.hardware()}
    OUT.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
