"""Sync check: the MyST .md notebooks are the only source.

1. every notebooks/*.md round-trips through jupytext (md -> ipynb -> md) to the same text;
2. no .ipynb is tracked by git, and none lies next to the sources in notebooks/ or book/
   (a .md and an .ipynb of the same name make the book build fail under -W).
"""

import difflib
import re
import subprocess
import sys
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parent.parent
VERSION_STAMP = re.compile(r"^\s+(format_version|jupytext_version):")


def without_versions(text: str) -> list[str]:
    """The lines of a MyST notebook, less the version stamps jupytext adds to its header."""
    return [line for line in text.splitlines(True) if not VERSION_STAMP.match(line)]


def round_trip(path: Path) -> str | None:
    """None if md -> ipynb -> md gives the same text back, else a diff and how to fix it."""
    text = path.read_text()
    nb = jupytext.reads(text, fmt="md:myst")
    back = jupytext.writes(jupytext.reads(jupytext.writes(nb, fmt="ipynb"), fmt="ipynb"), fmt="md:myst")
    before, after = without_versions(text), without_versions(back)
    if before == after:
        return None
    rel = path.relative_to(ROOT)
    diff = "".join(difflib.unified_diff(before, after, str(rel), "after round trip"))
    return f"{diff}\n  fix: jupytext --to md:myst -o {rel} {rel}"


def main() -> int:
    errors = []
    sources = sorted((ROOT / "notebooks").glob("*.md"))
    for path in sources:
        problem = round_trip(path)
        print(f"{'FAIL' if problem else 'ok  '} round trip {path.relative_to(ROOT)}")
        errors += [problem] if problem else []

    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True)
    errors += [f"tracked .ipynb (the .md is the source; remove it with git rm --cached): {f}"
               for f in tracked.stdout.splitlines()]
    errors += [f"stray .ipynb in the book tree (generated notebooks belong in _build/): {p.relative_to(ROOT)}"
               for d in ("notebooks", "book") for p in sorted((ROOT / d).glob("*.ipynb"))]

    for e in errors:
        print(e, file=sys.stderr)
    print(f"{len(sources)} notebooks checked, {len(errors)} problems")
    return 1 if errors or not sources else 0


if __name__ == "__main__":
    sys.exit(main())
