"""Rerun a chapter at another size: ``python -m diffnotes run NOTEBOOK [-p NAME VALUE ...] [--size paper]``.

The MyST source is converted with jupytext and the parameters are checked before anything executes: against the
notebook's ``parameters`` cell (an unknown name or a value of the wrong type is an error), then with the notebook's
own checks (the ``params.check`` calls and ``raise`` statements of the cell after it, run here on the values: one
definition).  papermill executes it, printing each cell's time and forwarding the notebook's progress bars.  Each
run gets its own folder ``OUT/<stem>/<name>`` (a timestamp unless ``--name``; a non-empty folder is refused unless
``--force``), holding the executed notebook, its figures (PNG), its verdict records (``results/``) and ``run.json``
(status, wall time, host, device, package commit).  The kernel runs with ``DIFFNOTES_STRICT=0`` (a verdict whose
outcome differs from the chapter's text at another size is recorded, not raised) and gets the run's ``size``
(``custom`` when ``-p`` changes more than the seed or the device).  ``--list-params`` prints each parameter with
its default, type and comment.  ``python -m diffnotes sweep`` runs many of these on a Dask cluster
(:mod:`diffnotes.sweep`).
"""
from __future__ import annotations

import argparse
import ast
import base64
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# The environment of every kernel that `run` and `sweep` start: verdicts are recorded, not asserted (a rerun at
# another size may legitimately differ from the chapter's text), and figures reach the executed notebook.
# glibc's allocator: blocks up to 32 MiB (its largest mmap threshold) come from the heap, which is kept rather than
# returned to the system after each free.  By default a freed tensor of a few MiB is unmapped and the next one mapped
# and zero-filled again page by page: at paper size (200k chains, 600 x 600 kernels) that was up to half of a run's
# CPU time in the kernel (page faults), e.g. 562,348 faults and a 17x longer step loop in chapter 02 on a busy machine.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(2 ** 30),
              "MALLOC_TOP_PAD_": str(64 * 2 ** 20)}
RUN_ENV = {"DIFFNOTES_STRICT": "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline", **MALLOC_ENV}
SIZE_KEEPING = {"seed", "device", "size"}   # overriding these keeps the run's size; any other makes it "custom"


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
    """The parameters of a run: the size's YAML file, then ``pairs`` (NAME, VALUE); checked against the
    ``parameters`` cell; ``size`` set where the notebook has one."""
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
    out = {k: coerce(k, v, spec[k][0]) for k, v in params.items()}
    names = {n for n, _ in pairs}
    if "size" in spec and "size" not in names:
        out["size"] = "custom" if names - SIZE_KEEPING else size
    return out


def _call_name(node):
    f = node.func if isinstance(node, ast.Call) else None
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def check_statements(path):
    """The notebook's own parameter checks: from the code cell after ``parameters``, its imports (not
    matplotlib's), its ``check(...)`` / ``resolve_device(...)`` calls and its ``if ...: raise`` statements."""
    import jupytext

    code = [c for c in jupytext.read(path).cells if c.cell_type == "code"]
    i = next(k for k, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    if i + 1 >= len(code):
        return []
    try:
        tree = ast.parse(code[i + 1].source)
    except SyntaxError:  # IPython magics: no checks to borrow
        return []
    keep = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            if not any("matplotlib" in n for n in names):
                keep.append(node)
        elif isinstance(node, (ast.Expr, ast.Assign)) and _call_name(node.value) in ("check", "resolve_device"):
            keep.append(node)
        elif isinstance(node, ast.If) and any(isinstance(n, ast.Raise) for n in ast.walk(node)):
            keep.append(node)
    return keep


def check_values(path, params):
    """Run the notebook's own checks (:func:`check_statements`) on its defaults overridden by ``params``: a value
    that the notebook would reject raises its ``ValueError`` here, before anything executes.  A statement that
    needs a name the checks do not define is left to the notebook."""
    ns = {k: v[0] for k, v in read_parameters(path).items()}
    ns.update(params)
    for node in check_statements(path):
        try:
            exec(compile(ast.Module(body=[node], type_ignores=[]), f"<{path.stem} checks>", "exec"), ns)
        except NameError:
            continue
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - a wrong type met by a comparison, say
            raise ValueError(f"{path.stem}: the notebook's parameter checks fail: {type(e).__name__}: {e}") from e


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


def prepare_folder(folder, force=False):
    """Make ``folder`` (absolute) ready for one run: a clear ``ValueError`` when it cannot be used, when it is
    not empty (unless ``force``, which empties it first: two runs' files never mix)."""
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"--out: {p} is a file, not a folder")
            break
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise ValueError(f"--out: {folder} already holds a run (choose another --name, or --force to replace it)")
        shutil.rmtree(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out: cannot write to {folder}: {e.strerror or e}") from None
    return folder


def run_folder(out, stem, name=None):
    """``OUT/<stem>/<name>``, absolute against the current directory; ``name`` defaults to a fresh timestamp."""
    base = Path(out).expanduser().resolve() / stem
    if name:
        return base / name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, k = base / stamp, 1
    while folder.exists():
        k += 1
        folder = base / f"{stamp}-{k}"
    return folder


def package_commit():
    """The git commit of the package's checkout (``+dirty`` with uncommitted changes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware():
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}


def _engine():
    """A papermill engine that prints each code cell's time as it ends (stderr)."""
    from papermill.engines import NBClientEngine, papermill_engines

    class TimedEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
            start, complete, t0 = nb_man.cell_start, nb_man.cell_complete, {}

            def cell_start(cell, cell_index=None, **kw):
                t0[cell_index] = time.time()
                return start(cell, cell_index, **kw)

            def cell_complete(cell, cell_index=None, **kw):
                if cell_index in t0 and cell_index in code:
                    line = next((x for x in cell.source.splitlines() if x.strip() and not x.startswith("#")), "")
                    print(f"  cell {code.index(cell_index) + 1:2d}/{len(code)} {time.time() - t0[cell_index]:7.1f} s"
                          f"  {line[:70]}", file=sys.stderr, flush=True)
                return complete(cell, cell_index, **kw)

            nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("diffnotes-timed", TimedEngine)
    return "diffnotes-timed"


def _kernel_manager(env, quiet=False):
    """A kernel manager class whose kernels get ``env`` on top of this process's environment (no global
    ``os.environ`` change: safe in a threaded Dask worker); ``quiet``: the kernel process's own stdout and stderr
    (start-up warnings, not the notebook's output) are dropped."""
    from jupyter_client.manager import AsyncKernelManager

    class EnvKernelManager(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw):
            kw["env"] = {**os.environ, **(kw.get("env") or {}), **env}
            if quiet:
                kw.setdefault("stdout", subprocess.DEVNULL)
                kw.setdefault("stderr", subprocess.DEVNULL)
            return await super()._async_pre_start_kernel(**kw)

    return EnvKernelManager


def execute(path, params, folder, *, source=None, cwd=None, verbose=True, kernel="python3"):
    """Execute the notebook ``path`` (or the MyST text ``source``) with ``params`` into ``folder`` (which must
    exist): ``<stem>.out.ipynb``, ``figures/``, ``results/`` and ``run.json``.  Returns the run record; a failed
    run is recorded (``status`` "failed", the failing cell and error), never raised."""
    import jupytext
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path = Path(path)
    stem = path.stem
    nb = jupytext.reads(source, fmt="md:myst") if source is not None else jupytext.read(path)
    nb.metadata.setdefault("kernelspec", {"name": kernel, "display_name": "Python 3", "language": "python"})
    src, dst = folder / f"{stem}.ipynb", folder / f"{stem}.out.ipynb"
    nbformat.write(nb, src)
    env = {**RUN_ENV, "DIFFNOTES_RESULTS": str(folder / "results")}
    rec = {"stem": stem, "params": params, "size": params.get("size"), "seed": params.get("seed"),
           "status": None, "error": None, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "host": socket.gethostname(), "device": params.get("device", "cpu"), "hardware": hardware(),
           "commit": package_commit()}
    kwargs = dict(parameters=params, cwd=str(cwd or path.parent), kernel_name=kernel, progress_bar=False,
                  kernel_manager_class=_kernel_manager(env, quiet=not verbose))
    if verbose:
        kwargs.update(engine_name=_engine(), stderr_file=sys.stderr)
    t0 = time.time()
    try:
        papermill.execute_notebook(str(src), str(dst), **kwargs)
        rec["status"] = "ok"
    except PapermillExecutionError as e:
        first = next((x for x in e.source.splitlines() if x.strip() and not x.startswith("#")), "")
        rec["status"] = "failed"
        rec["error"] = {"cell": e.cell_index, "execution_count": e.exec_count, "line": first[:100],
                        "ename": e.ename, "evalue": e.evalue}
    except Exception as e:  # noqa: BLE001 - a kernel that died, a timeout: recorded, the run folder kept
        rec["status"] = "failed"
        rec["error"] = {"cell": None, "execution_count": None, "line": "", "ename": type(e).__name__,
                        "evalue": str(e)}
    rec["wall_s"] = round(time.time() - t0, 3)
    rec["figures"] = save_figures(nbformat.read(dst, as_version=4), folder / "figures") if dst.exists() else 0
    src.unlink()
    (folder / "run.json").write_text(json.dumps(rec, indent=1, default=str))
    return rec


def describe_error(err):
    if not err:
        return ""
    where = f"cell {err['cell']}" if err.get("cell") is not None else "before any cell"
    if err.get("execution_count"):
        where += f" (In [{err['execution_count']}]: {err['line']})"
    return f"{where}: {err['ename']}: {err['evalue']}"


def run(path, params, folder):
    rec = execute(path, params, folder)
    print(f"run folder: {folder}\nexecuted notebook: {folder / (path.stem + '.out.ipynb')}\n"
          f"figures: {rec['figures']} in {folder / 'figures'}\nverdicts: {folder / 'results'}\n"
          f"wall time: {rec['wall_s']:.1f} s")
    if rec["status"] != "ok":
        print(f"error: the run failed at {describe_error(rec['error'])}", file=sys.stderr)
        return 1
    return 0


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
    r.add_argument("--out", default="runs", help="output folder, relative to the current directory "
                   "(default: runs); the run lands in OUT/<stem>/<name>")
    r.add_argument("--name", help="the run's folder name (default: a timestamp, e.g. 20260101-120000)")
    r.add_argument("--force", action="store_true", help="replace a non-empty run folder (its files are removed)")
    r.add_argument("--list-params", action="store_true", help="list the parameters and exit")
    from . import sweep
    from .exactbench import add_parser as exactbench_parser
    sweep.add_parser(sub)
    exactbench_parser(sub)
    args = ap.parse_args(argv)
    if args.cmd == "sweep":
        return sweep.main(args)
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
        check_values(path, params)
        folder = prepare_folder(run_folder(args.out, path.stem, args.name), args.force)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(path, params, folder)


if __name__ == "__main__":
    sys.exit(main())
