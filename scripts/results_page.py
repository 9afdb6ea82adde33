"""Write book/results.md, "results at a glance", from the verdict records the notebooks wrote when they executed.

Each chapter's verdict cells call diffnotes.verdict.Verdicts.check, which writes _build/results/<chapter>.json.
This script only collects them (no notebook reads another's outputs) and is run by `make book` after the notebooks
have executed and before the final HTML build.  Nothing on the page is typed by hand.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        v = f"{v:.4g}"
    elif isinstance(v, (list, tuple)):
        v = "[" + ", ".join(cell(u) for u in v) + "]"
    return str(v).replace("|", "\\|").replace("\n", " ")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=str(ROOT / "_build" / "results"))
    ap.add_argument("--out", default=str(ROOT / "book" / "results.md"))
    args = ap.parse_args()
    toc = (ROOT / "_toc.yml").read_text()
    files = sorted(Path(args.results).glob("*.json"))
    lines = ["# Results at a glance", "",
             "One row per claim, collected from the verdict cells of the chapters as they executed for this build "
             "(`scripts/results_page.py` reads `_build/results/*.json`; nothing here is typed by hand). "
             "*Verdict* is the outcome of the test stated in the chapter before measuring; *reproduced* says whether "
             "the document's claim itself was reproduced (a claim can fail to reproduce and still pass its honest, "
             "pre-stated verdict, which the chapter then explains).", ""]
    if not files:
        lines += ["```{note}", "No verdict records yet: the chapters have not been executed in this build.", "```"]
    for f in files:
        rec = json.loads(f.read_text())
        chapter = rec["chapter"]
        if f"notebooks/{chapter}" not in toc:
            continue
        lines += [f"## {rec.get('title') or chapter}", "",
                  f"Chapter: {{doc}}`../notebooks/{chapter}`", "",
                  "| document | claim | document's figure | measured | interval | verdict | reproduced |",
                  "|---|---|---|---|---|---|---|"]
        for c in rec["claims"]:
            lines.append("| " + " | ".join([cell(c["document"]), cell(c["claim"]), cell(c["expected"]),
                                             cell(c["measured"]), cell(c["interval"]),
                                             ("pass" if c["ok"] else "**FAIL**") + f" ({cell(c['tolerance'])})",
                                             "yes" if c["reproduced"] else "**no** (see chapter)"]) + " |")
        lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} from {len(files)} record(s)")


if __name__ == "__main__":
    main()
