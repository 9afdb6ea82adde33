"""Convert the MyST notebooks to .ipynb and inject the parameters of a given size.

    python scripts/prepare_notebooks.py --size smoke --out _build/nbval [notebooks/01_pipeline.md ...]

--size ci     no injection: the defaults of each notebook's `parameters` cell (what the book runs)
--size smoke  inject notebooks/params/<stem>.smoke.yml, if that file exists
--size paper  inject notebooks/params/<stem>.paper.yml, if that file exists

Injection uses papermill's own machinery, so the result is what `papermill -f FILE` would run:
an `injected-parameters` cell right after the cell tagged `parameters`.
"""

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).resolve().parent.parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def prepare(src: Path, size: str, out: Path) -> Path:
    nb = jupytext.read(src, fmt="md:myst")
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.pop("jupytext", None)
    dest = out / f"{src.stem}.ipynb"
    nbformat.write(nb, dest)
    params_file = src.parent / "params" / f"{src.stem}.{size}.yml"
    note = "defaults"
    if size != "ci" and params_file.exists():
        params = yaml.safe_load(params_file.read_text()) or {}
        nb = load_notebook_node(str(dest))  # papermill's view of the notebook (tags on every cell)
        if not any("parameters" in c.metadata.tags for c in nb.cells):
            sys.exit(f"{src}: {params_file.name} exists but no cell is tagged `parameters`")
        nbformat.write(parameterize_notebook(nb, params), dest)
        note = f"{params_file.relative_to(ROOT)} {params}"
    print(f"{src.relative_to(ROOT)} -> {dest} ({note})")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["ci", "smoke", "paper"], default="smoke")
    ap.add_argument("--out", type=Path, default=ROOT / "_build" / "nbval")
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.md")
    args = ap.parse_args()

    sources = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.md"))
    if not sources:
        sys.exit("no notebooks/*.md found")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.notebooks:  # all chapters: a deleted or renamed one must not linger
        for stale in args.out.glob("*.ipynb"):
            stale.unlink()
    for src in sources:
        prepare(src, args.size, args.out)


if __name__ == "__main__":
    main()
