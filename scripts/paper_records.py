"""Collect a paper-size sweep into committed records: results/paper/<stem>.json, one per chapter.

    python -m diffnotes sweep 01_pipeline 02_convergence --size paper --seeds 0:1 --out runs/paper
    python scripts/paper_records.py runs/paper

With ``--replicates`` it collects runs of size ``custom`` instead (``results/replicates/<stem>.json``): replicate
seeds of the sections whose verdicts depend on the draw, at those sections' paper-size parameters, where the whole
chapter at paper size cannot be run that many times (the record lists the parameters that differ and a note).

Each record holds what the sweep's runs say of themselves (size, parameters, seeds, wall time, host, hardware, the
package commit) and, per verdict, the outcome of every seed, the measured figures, how many seeds agree with the
outcome the chapter's text states for the paper size, and the aggregate of ``diffnotes.sweep`` (outcome counts,
mean and standard error of the figure).  ``scripts/results_page.py`` puts them beside the CI-size outcomes.  The
executed notebooks stay out of git (``runs/`` is ignored).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffnotes.sweep import aggregate  # noqa: E402


def documented(stem, params):
    """Whether ``params`` (all but the seed) are the chapter's documented paper size, ``notebooks/params/<stem>.paper.yml``
    over the notebook's defaults; else the names that differ."""
    import yaml

    from diffnotes import cli
    f = ROOT / "notebooks" / "params" / f"{stem}.paper.yml"
    paper = yaml.safe_load(f.read_text()) if f.exists() else {}
    nb = ROOT / "notebooks" / f"{stem}.md"
    default = {k: v[0] for k, v in cli.read_parameters(nb).items()} if nb.exists() else {}
    diff = sorted(k for k, v in paper.items() if k != "size" and params.get(k, default.get(k)) != v)
    return not diff, diff


def collect(out: Path, dest: Path, note: str = "", size: str = "paper") -> list[Path]:
    written = []
    for g in aggregate(out):
        if g["params"].get("size") != size:
            continue
        stem = g["chapter"]
        runs = [json.loads(f.read_text()) for f in sorted((out / stem).glob("*/run.json"))]
        runs = [r for r in runs if r.get("size") == size]
        full, diff = documented(stem, g["params"])
        rec = {"chapter": stem, "size": size, "documented_paper_size": full, "differs_in": diff, "note": note,
               "params": g["params"], "seeds": g["seeds"],
               "failed_seeds": g["failed_seeds"],
               "runs": [{k: r.get(k) for k in ("seed", "status", "wall_s", "started", "host", "hardware", "device",
                                               "commit")} for r in runs],
               "claims": g["claims"]}
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / f"{stem}.json"
        path.write_text(json.dumps(rec, indent=1, default=str) + "\n")
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the sweep's --out folder")
    ap.add_argument("--dest", type=Path, default=None,
                    help="where the records go (default results/paper, or results/replicates with --replicates)")
    ap.add_argument("--note", default="", help="what the record is, where it is not the documented paper size "
                                               "(e.g. which parameters were reduced and why)")
    ap.add_argument("--replicates", action="store_true",
                    help="collect runs of size 'custom' (the paper size of some sections, e.g. 8 seeds of chapter "
                         "04's SMC sections) into results/replicates/<stem>.json, shown beside the paper-size record")
    a = ap.parse_args(argv)
    size = "custom" if a.replicates else "paper"
    dest = a.dest or ROOT / "results" / ("replicates" if a.replicates else "paper")
    written = collect(a.out, dest, a.note, size)
    if not written:
        raise SystemExit(f"no runs of size {size!r} in {a.out}")
    for p in written:
        print(f"wrote {p.relative_to(ROOT) if ROOT in p.parents else p}")


if __name__ == "__main__":
    main()
