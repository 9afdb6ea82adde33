"""Rerun a chapter at another size: ``python -m diffnotes run NOTEBOOK [-p NAME VALUE ...] [--size paper]``.

The MyST source is converted with jupytext, the parameters are checked against the notebook's ``parameters``
cell (an unknown name or a value of the wrong type is an error before anything executes), and papermill executes
it with a progress bar.  The executed notebook, its figures (PNG) and its verdict records land in ``--out``.
``--list-params`` prints each parameter with its default, type and comment.
"""
from __future__ import annotations

import argparse
import ast
import base64
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def resolve_notebook(name):
    """A path to a ``.md`` notebook, or a chapter stem such as ``02_convergence``."""
    p = Path(name)
    for cand in (p, NOTEBOOKS / p, NOTEBOOKS / f"{name}.md"):
        if cand.is_file() and cand.suffix == ".md":
            return cand.resolve()
    known = ", ".join(sorted(q.stem for q in NOTEBOOKS.glob("*.md")))
    raise ValueError(f"notebook {name!r} not found (known: {known})")


def read_parameters(path):
    """``{name: (default, type name, comment)}`` from the cell tagged ``parameters`` (literal assignments only)."""
    import jupytext

    nb = jupytext.read(path)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path.name}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    src = cells[0].source
    lines = src.splitlines()
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = ast.literal_eval(node.value)
            line = lines[node.lineno - 1]
            comment = line.split("#", 1)[1].strip() if "#" in line else ""
            out[node.targets[0].id] = (value, type(value).__name__, comment)
    return out


def coerce(name, raw, default):
    """Parse ``raw`` (a string from the command line or a YAML value) to the type of ``default``."""
    value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and not isinstance(value, str):
        value = str(raw)
    if kind is list and isinstance(value, list) and default:
        inner = type(default[0])
        value = [coerce(f"{name}[{i}]", v, default[0]) for i, v in enumerate(value)] if inner in (int, float) \
            else value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"parameter {name!r} must be of type {kind.__name__} like its default {default!r}, "
                         f"got {raw!r}")
    return value


def build_parameters(path, size, pairs):
    spec = read_parameters(path)
    params = {}
    if size != "ci":
        f = path.parent / "params" / f"{path.stem}.{size}.yml"
        if not f.is_file():
            raise ValueError(f"size {size!r}: no file {f.relative_to(ROOT)}")
        params.update(yaml.safe_load(f.read_text()) or {})
    for name, raw in pairs:
        params[name] = raw
    for name in params:
        if name not in spec:
            raise ValueError(f"unknown parameter {name!r} for {path.stem} (known: {', '.join(spec)})")
    return {k: coerce(k, v, spec[k][0]) for k, v in params.items()}


def save_figures(nb, folder):
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, cell in enumerate(nb.cells):
        for j, o in enumerate(cell.get("outputs", [])):
            png = o.get("data", {}).get("image/png")
            if png:
                (folder / f"cell{i:02d}_{j}.png").write_bytes(base64.b64decode(png))
                n += 1
    return n


def run(path, params, out, kernel="python3"):
    import jupytext
    import nbformat
    import papermill

    out.mkdir(parents=True, exist_ok=True)
    src = out / f"{path.stem}.ipynb"
    dst = out / f"{path.stem}.out.ipynb"
    nb = jupytext.read(path)
    nb.metadata.setdefault("kernelspec", {"name": kernel, "display_name": "Python 3", "language": "python"})
    nbformat.write(nb, src)
    os.environ["DIFFNOTES_RESULTS"] = str(out / "results")
    papermill.execute_notebook(str(src), str(dst), parameters=params, cwd=str(path.parent), kernel_name=kernel,
                               progress_bar=True)
    n = save_figures(nbformat.read(dst, as_version=4), out / "figures")
    print(f"executed notebook: {dst}\nfigures: {n} in {out / 'figures'}\nverdicts: {out / 'results'}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m diffnotes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute a chapter notebook with overridden parameters")
    r.add_argument("notebook", help="path to a notebooks/*.md file, or its stem (e.g. 02_convergence)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a parameter (VALUE is parsed as YAML: 3, 0.5, [50, 100], text)")
    r.add_argument("--size", choices=["smoke", "ci", "paper"], default="ci",
                   help="start from notebooks/params/<stem>.<size>.yml (ci: the notebook's own defaults)")
    r.add_argument("--out", default="runs", help="output folder (default: ./runs/<stem>)")
    r.add_argument("--list-params", action="store_true", help="list the parameters and exit")
    from .exactbench import add_parser as exactbench_parser
    exactbench_parser(sub)
    args = ap.parse_args(argv)
    if args.cmd == "exactbench":
        return args.func(args)
    try:
        path = resolve_notebook(args.notebook)
        if args.list_params:
            spec = read_parameters(path)
            w = max(len(k) for k in spec)
            print(f"{'name':{w}}  {'type':5}  default  # comment")
            for k, (v, t, c) in spec.items():
                print(f"{k:{w}}  {t:5}  {v!r}" + (f"  # {c}" if c else ""))
            return 0
        params = build_parameters(path, args.size, args.parameter)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(path, params, Path(args.out) / path.stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
