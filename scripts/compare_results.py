"""Reproducibility check: two executions of the notebooks with the same parameters and seeds must record identical
verdict figures.  Usage: python scripts/compare_results.py DIR_A DIR_B (each holding <chapter>.json records)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(d):
    return {f.stem: json.loads(f.read_text()) for f in sorted(Path(d).glob("*.json"))}


def main(a, b):
    ra, rb = load(a), load(b)
    problems = []
    if set(ra) != set(rb):
        problems.append(f"different chapters: {sorted(ra)} vs {sorted(rb)}")
    for ch in sorted(set(ra) & set(rb)):
        ca = {c["id"]: c for c in ra[ch]["claims"]}
        cb = {c["id"]: c for c in rb[ch]["claims"]}
        if set(ca) != set(cb):
            problems.append(f"{ch}: different claims {sorted(ca)} vs {sorted(cb)}")
        for k in sorted(set(ca) & set(cb)):
            for field in ("measured", "interval", "outcome", "foil"):
                if ca[k].get(field) != cb[k].get(field):
                    problems.append(f"{ch}/{k}: {field} {ca[k][field]!r} != {cb[k][field]!r}")
    n = sum(len(r["claims"]) for r in ra.values())
    if problems:
        print("NOT reproducible:\n  " + "\n  ".join(problems))
        return 1
    print(f"reproducible: {n} verdict figures in {len(ra)} chapters identical across two runs")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
