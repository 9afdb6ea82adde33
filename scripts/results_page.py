"""Write book/results.md, "results at a glance", from the verdict records the notebooks wrote when they executed.

Each chapter's verdict cells call diffnotes.verdict.Verdicts.check, which writes _build/results/<chapter>.json.
This script only collects them (no notebook reads another's outputs) and is run by `make book` after the notebooks
have executed and before the final HTML build.  Nothing on the page is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffnotes.verdict import agree_now, counts_text, differs, fmt  # noqa: E402


def cell(v):
    """A figure for a markdown table cell: :func:`diffnotes.verdict.fmt`, with ``|`` escaped (None: empty)."""
    return "" if v is None else fmt(v).replace("|", "\\|").replace("\n", " ")


def machine(hw):
    if not isinstance(hw, dict):
        return str(hw)
    return (f"{hw.get('cores', '?')} CPU cores ({hw.get('cpu', '?')})" + (f", GPU {hw['gpu']}" if hw.get("gpu") else "")
            + f", torch {hw.get('torch', '?')}")


def paper_line(p):
    """One line on a chapter's paper-size record: seeds, wall time, machine, commit, and whether it is the documented
    paper size (else what differs, and why)."""
    runs = [r for r in p.get("runs", []) if r.get("status") == "ok"]
    wall = ", ".join(f"{r['wall_s']:.0f} s" for r in runs if r.get("wall_s") is not None)
    commits = sorted({str(r.get("commit"))[:7] for r in runs})
    hw = sorted({machine(r.get("hardware")) for r in runs})
    size = ("the documented paper size (`notebooks/params/" + p["chapter"] + ".paper.yml`)"
            if p.get("documented_paper_size", True) else
            "**not the documented paper size**: it differs in " + ", ".join(f"`{k}`" for k in p.get("differs_in", [])))
    line = (f"Paper-size record: {len(p.get('seeds', []))} seed(s) {p.get('seeds')}, wall time {wall or 'n/a'} per run, "
            f"{'; '.join(hw)}, package commit {', '.join(commits)}; {size}.")
    if p.get("failed_seeds"):
        line += f" Failed seeds: {p['failed_seeds']}."
    if p.get("note"):
        line += " " + p["note"]
    return line


def load(folder):
    """``{chapter: record}`` of the committed records in ``folder`` (each file read once)."""
    recs = [json.loads(f.read_text()) for f in sorted(Path(folder).glob("*.json"))]
    return {r["chapter"]: r for r in recs}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=str(ROOT / "_build" / "results"))
    ap.add_argument("--out", default=str(ROOT / "book" / "results.md"))
    ap.add_argument("--replicates", default=str(ROOT / "results" / "replicates"),
                    help="committed replicate records (scripts/paper_records.py --replicates)")
    ap.add_argument("--paper", default=str(ROOT / "results" / "paper"),
                    help="committed paper-size records (scripts/paper_records.py)")
    args = ap.parse_args()
    toc = (ROOT / "_toc.yml").read_text()
    files = sorted(Path(args.results).glob("*.json"))
    chapters = [json.loads(f.read_text()) for f in files]
    chapters = [c for c in chapters if f"notebooks/{c['chapter']}" in toc]
    claims = [c for ch in chapters for c in ch["claims"]]
    counts = {o: sum(c.get("outcome") == o for c in claims) for o in ("reproduced", "not reproduced", "inconclusive")}
    foils = sum(not (c.get("foil") or {}).get("passed", True) for c in claims)
    agree = sum(c.get("agrees", False) for c in claims)
    paper, reps = load(args.paper), load(args.replicates)
    lines = ["# Results at a glance", "",
             "One row per claim, collected from the verdict cells of the chapters as they executed for this build "
             "(`scripts/results_page.py` reads `_build/results/*.json`; nothing here is typed by hand). "
             "Each claim has a test stated in the chapter before measuring, and a *foil*: the same test run on a "
             "variant that is wrong by a small, stated margin, which must fail (otherwise the test could not tell). "
             "The *outcome* is *reproduced* (the test passes), *not reproduced* (it fails, and a positive control "
             "or the paper-size run shows the test had the power to see the claim) or *inconclusive* (it fails "
             "without that power; the chapter says what size would decide it). A rate with a log factor is judged with the "
             "bound's log power; where a plain power law worse by 0.25 would pass the same test over the measured "
             "range, the row says so.", ""]
    if not claims:
        lines += ["```{note}", "No verdict records yet: the chapters have not been executed in this build.", "```"]
    else:
        lines += [f"**{len(claims)} claims: {counts['reproduced']} reproduced, {counts['not reproduced']} not "
                  f"reproduced, {counts['inconclusive']} inconclusive; {foils} of {len(claims)} foils fail the test "
                  f"as they must; {agree} of {len(claims)} outcomes agree with the chapter's text.**", "",
                  "The *paper size* column comes from the committed records of paper-size runs made by "
                  "`python -m diffnotes sweep --size paper` (`results/paper/<chapter>.json`, collected by "
                  "`scripts/paper_records.py`, with the seeds, wall time, hardware and package commit of each run); "
                  f"chapters with a paper-size record: {', '.join(sorted(paper)) or 'none yet'}. It gives the outcome "
                  "over the seeds run and how many of them agree with the outcome the chapter's text states for the "
                  "paper size.", ""]
    differ = [(rec["chapter"], c["id"], c.get("outcome"), pc) for rec in chapters for c in rec["claims"]
              for pc in [paper.get(rec["chapter"], {}).get("claims", {}).get(c["id"])]
              if pc is not None and differs(pc, c.get("outcome"))]
    if paper:
        lines += ["**Claims whose outcome differs between CI size and paper size** (each chapter discusses its own): "
                  + ("; ".join(f"{ch} `{cid}`: {o} at CI size, {counts_text(pc)} at paper size"
                               for ch, cid, o, pc in differ) if differ else "none") + ".", ""]
    for rec in chapters:
        chapter = rec["chapter"]
        lines += [f"## {rec.get('title') or chapter}", "",
                  f"Chapter: {{doc}}`../notebooks/{chapter}`", ""]
        if chapter in paper:
            lines += [paper_line(paper[chapter]), ""]
        if chapter in reps:
            lines += ["Replicates: " + paper_line(reps[chapter]).replace("Paper-size record: ", "", 1), ""]
        lines += [
                  "| document | claim | document's figure | pre-stated test | measured | foil (must fail) | outcome |"
                  " paper size |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in rec["claims"]:
            f = c["foil"]
            meas = cell(c["measured"]) + (f" {cell(c['interval'])}" if c.get("interval") is not None else "")
            foil = f"{cell(f.get('name', ''))}: {cell(f.get('measured'))}, " + \
                ("**passes (no power)**" if f.get("passed") else "fails")
            out = c.get("outcome", "?")
            out = {"reproduced": "reproduced", "not reproduced": "**not reproduced**",
                   "inconclusive": "*inconclusive*"}.get(out, out)
            if c.get("caveat"):
                out += " (caveat: the exponent is resolved only given the bound's log power; see the card)"
            if not c.get("agrees", True):
                out += " (**disagrees with the text**)"
            pc = paper.get(chapter, {}).get("claims", {}).get(c["id"])
            if pc is None:
                pap = "not run" if chapter not in paper else "no record"
            else:
                pap = counts_text(pc)
                if pc.get("n"):
                    pap += (f" ({agree_now(pc, (c.get('stated_by_size') or {}).get('paper'))} of {pc['n']} seeds "
                            "agree with the text)")
                if differs(pc, c.get("outcome")):
                    pap += "; **differs from CI size**"
            rc = reps.get(chapter, {}).get("claims", {}).get(c["id"])
            if rc is not None and rc.get("n", 0) > 1:
                pap += ("; **replicates**: " + counts_text(rc)
                        + f" over {rc['n']} seeds ({agree_now(rc, (c.get('stated_by_size') or {}).get('ci'))} agree "
                          "with the text)"
                        + (f", measured {cell(rc['mean'])} ± {cell(rc['se'])} (mean ± s.e.)"
                           if rc.get("mean") is not None and rc.get("se") is not None else ""))
            lines.append("| " + " | ".join([cell(c["document"]), cell(c["claim"]), cell(c["expected"]),
                                             cell(c.get("test", "")), meas, foil, out, pap]) + " |")
        lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} from {len(files)} record(s), {len(claims)} claims")


if __name__ == "__main__":
    main()
