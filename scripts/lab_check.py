#!/usr/bin/env python3
"""JupyterLab for the notebooks: ``make lab`` starts it, ``make test-lab`` checks it in a real browser.

``--serve`` (what ``make lab`` runs) starts JupyterLab 4 from ``.venv`` on ``notebooks/`` with

- jupytext's contents manager (its server extension, enabled by the ``jupytext`` package) and ``jupytext.toml``:
  a ``notebooks/*.md`` file *is* the notebook, and saving writes the ``.md`` back (no ``.ipynb`` is written);
- the ``.md`` files opening as notebooks on a double click (JupyterLab setting ``defaultViewers``: markdown and
  myst -> "Jupytext Notebook", kept in ``_build/lab/settings``, not in your home folder);
- the venv's ``python3`` kernel (``JUPYTER_PATH`` puts ``.venv/share/jupyter`` first; it is the default kernel);
- the book's figure style: the inline backend and ``diffnotes.plotting.style()`` in every kernel, through an IPython
  startup file under ``_build/lab/ipython`` (the chapters call ``plotting.style()`` too).

Without ``--serve`` (the check of ``make test``): the same set-up on a temporary copy of ``notebooks/``, served
headless on a free port with a random token; Debian's Chromium (``/usr/bin/chromium``, through Playwright; never
Playwright's own browser download) opens ``01_pipeline.md``, which must open as a notebook with the venv's kernel;
its first three code cells (parameters, imports, the schedules figure) are run, which must give a figure and no
error; a sentence is added to the first markdown cell and the notebook saved; the ``.md`` on disk must then differ
from the original by exactly that sentence (jupytext's version stamps aside), still round-trip through jupytext
(``scripts/check_sync.py``), and no ``.ipynb`` may appear.  Any failure: a screenshot in
``_build/lab-check/failure.png``, the server log beside it, and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from browser_check import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402  (Debian's chromium, the same flags)
from check_sync import round_trip, without_versions  # noqa: E402

VENV = ROOT / ".venv"
OVERRIDES = {  # JupyterLab settings: .md and MyST files open as notebooks; no news pop-up (it would fetch a feed)
    "@jupyterlab/docmanager-extension:plugin": {
        "defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}
STARTUP = '''\
# Written by scripts/lab_check.py: the book's figure style in every kernel that JupyterLab starts.
try:
    get_ipython().run_line_magic("matplotlib", "inline")
    from diffnotes import plotting as _plotting
    _plotting.style()
    del _plotting
except Exception as _err:  # the notebook still opens; its own plotting.style() call will say what is wrong
    print("diffnotes: figure style not applied:", _err)
'''
CODE_CELL = re.compile(r"^`{3,}\{code-cell\} (\S+)$", re.M)
EDIT = "Edited in JupyterLab by the lab check."


def keep_lexer(model, path, contents_manager, **kwargs):
    """JupyterLab pre-save hook: keep the code-cell lexer that the ``.md`` on disk has.

    A kernel reports ``language_info.pygments_lexer = "ipython3"`` and jupytext writes that into every
    ````{code-cell} ...`` line on save, turning a one-line edit into a diff of every code cell.  Where the file
    on disk names another lexer (``python`` here), the saved text keeps it."""
    if model.get("type") != "file" or not path.endswith(".md") or not isinstance(model.get("content"), str):
        return
    try:
        old = Path(contents_manager._get_os_path(path)).read_text()
    except OSError:
        return
    lexers = set(CODE_CELL.findall(old))
    if len(lexers) == 1:
        (lexer,) = lexers
        model["content"] = CODE_CELL.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + lexer, model["content"])


def prepare(state: Path) -> dict:
    """Settings, workspaces and IPython folders under ``state``; the environment JupyterLab runs in."""
    settings = state / "settings"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "overrides.json").write_text(json.dumps(OVERRIDES, indent=2))
    startup = state / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-diffnotes-style.py").write_text(STARTUP)
    (state / "workspaces").mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update({
        "JUPYTER_PATH": os.pathsep.join(filter(None, [str(VENV / "share" / "jupyter"), env.get("JUPYTER_PATH")])),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        "IPYTHONDIR": str(state / "ipython"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        # the kernel imports this checkout's diffnotes even where the editable install points elsewhere;
        # the server imports keep_lexer from scripts/
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "scripts"), env.get("PYTHONPATH")])),
    })
    return env


def lab_args(root: Path, state: Path, *, port=8888, token=None, browser=True) -> list[str]:
    args = [str(VENV / "bin" / "jupyter"), "lab", f"--ServerApp.root_dir={root}", f"--port={port}",
            f"--LabApp.app_settings_dir={state / 'settings'}",
            "--MappingKernelManager.default_kernel_name=python3", "--ServerApp.ip=127.0.0.1",
            "--ContentsManager.pre_save_hook=lab_check.keep_lexer",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if token is not None:
        args += [f"--IdentityProvider.token={token}"]
    if not browser:
        args += ["--no-browser"]
    if os.geteuid() == 0:  # containers and CI run as root
        args += ["--allow-root"]
    return args


def serve(args) -> int:
    state = ROOT / "_build" / "lab"
    env = prepare(state)
    cmd = lab_args(ROOT / "notebooks", state, port=args.port, browser=not args.no_browser)
    print("JupyterLab on notebooks/ (a .md opens as a notebook; saving writes the .md back); Ctrl+C stops it")
    os.execve(cmd[0], cmd, env)


# ------------------------------------------------------------------------------------------------ the check
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str):
    req = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait_for_server(base, token, proc, log, timeout=90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            api(base, token, "/api/status")
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout} s")


def check(page, base, token, nbdir: Path, log):
    from playwright.sync_api import expect

    md = nbdir / "01_pipeline.md"
    before = md.read_text()
    specs = api(base, token, "/api/kernelspecs")
    argv0 = specs["kernelspecs"]["python3"]["spec"]["argv"][0]
    if Path(argv0).parent.resolve() != (VENV / "bin").resolve():
        raise AssertionError(f"the python3 kernel runs {argv0}, not the venv's python ({VENV / 'bin'})")

    page.goto(f"{base}/lab/tree/01_pipeline.md?token={token}", wait_until="domcontentloaded")
    panel = page.locator(".jp-NotebookPanel").first
    expect(panel).to_be_visible(timeout=60_000)                       # opened as a notebook, not in the editor
    expect(page.locator(".jp-FileEditor")).to_have_count(0)
    cells = panel.locator(".jp-Notebook .jp-Cell")
    expect(cells.first).to_be_visible(timeout=30_000)
    log("opened as a notebook")
    t0, kernels = time.time(), []
    while not kernels and time.time() - t0 < 60:
        kernels = [s["kernel"]["name"] for s in api(base, token, "/api/sessions")
                   if s["path"].endswith("01_pipeline.md")]
        time.sleep(0.5)
    if kernels != ["python3"]:
        raise AssertionError(f"01_pipeline.md runs kernels {kernels}, expected ['python3'] (the venv's)")
    expect(panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle'], "
                         ".jp-Toolbar-kernelStatus").first).to_be_attached(timeout=60_000)

    code = panel.locator(".jp-Notebook .jp-CodeCell")
    for i in range(3):                                                # parameters, imports, schedules figure
        cell = code.nth(i)
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Control+Enter")
        expect(cell.locator(".jp-InputPrompt")).to_have_text(f"[{i + 1}]:", timeout=90_000)
        log(f"code cell {i + 1} ran")
    third = code.nth(2)
    expect(third.locator(".jp-OutputArea-output img")).to_have_count(1, timeout=30_000)
    expect(third.locator(".jp-OutputArea-output").last).to_contain_text("alphabar_T")
    for i in range(3):
        text = code.nth(i).locator(".jp-OutputArea").inner_text()
        if "Traceback" in text or "Error" in text:
            raise AssertionError(f"code cell {i + 1} shows an error:\n{text}")
    log("outputs: a figure and the schedules' table, no error")

    first_md = panel.locator(".jp-Notebook .jp-MarkdownCell").first
    first_md.dblclick()
    editor = first_md.locator(".cm-content")
    expect(editor).to_be_visible(timeout=10_000)
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type("\n\n" + EDIT)
    page.keyboard.press("Shift+Enter")
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    t0 = time.time()
    while md.read_text() == before and time.time() - t0 < 30:
        time.sleep(0.25)
    after = md.read_text()
    b, a = without_versions(before), without_versions(after)
    j = next(k for k, line in enumerate(b) if line.startswith("```{code-cell}"))  # end of the first md cell
    want = b[:j] + [EDIT + "\n", "\n"] + b[j:]
    if a != want:
        import difflib
        raise AssertionError("the saved .md is not the original plus the edit:\n"
                             + "".join(difflib.unified_diff(want, a, "expected", "saved")))
    problem = round_trip(md)
    if problem:
        raise AssertionError(f"the saved .md does not round-trip through jupytext:\n{problem}")
    stray = sorted(p.relative_to(nbdir) for p in nbdir.rglob("*.ipynb"))
    if stray:
        raise AssertionError(f"JupyterLab wrote .ipynb files: {stray}")
    log("saved: the .md holds the edit, round-trips through jupytext, no .ipynb written")


def stop(proc):
    """Stop the server and the kernels it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help="start JupyterLab on notebooks/ (make lab)")
    ap.add_argument("--port", type=int, default=8888, help="with --serve (default 8888)")
    ap.add_argument("--no-browser", action="store_true", help="with --serve: do not open a browser")
    args = ap.parse_args()
    if args.serve:
        return serve(args)

    from playwright.sync_api import sync_playwright

    t_start = time.time()
    out = ROOT / "_build" / "lab-check"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    server_log = out / "jupyterlab.log"

    def log(msg):
        print(f"lab check [{time.time() - t_start:5.1f} s] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="diffnotes-lab-") as tmp:
        tmp = Path(tmp)
        nbdir = tmp / "notebooks"
        shutil.copytree(ROOT / "notebooks", nbdir, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs"))
        shutil.copy(ROOT / "jupytext.toml", tmp / "jupytext.toml")
        env = prepare(tmp / "state")
        env["JUPYTER_CONFIG_DIR"] = str(tmp / "config")             # no user configuration
        env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
        env["DIFFNOTES_RESULTS"] = str(tmp / "results")
        token, port = secrets.token_hex(16), free_port()
        base = f"http://127.0.0.1:{port}"
        with open(server_log, "w") as f:
            proc = subprocess.Popen(lab_args(nbdir, tmp / "state", port=port, token=token, browser=False),
                                    env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        page = None
        try:
            wait_for_server(base, token, proc, server_log)
            log(f"JupyterLab up on port {port}")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                try:
                    check(page, base, token, nbdir, log)
                    if errors:
                        raise AssertionError(f"JavaScript errors: {errors}")
                except Exception:
                    page.screenshot(path=str(out / "failure.png"), full_page=True)
                    raise
                finally:
                    browser.close()
        except Exception as e:
            print(f"lab check FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            shot = out / "failure.png"
            print(f"  screenshot: {shot if shot.exists() else '(none: the browser never opened)'}; "
                  f"server log: {server_log}", file=sys.stderr)
            return 1
        finally:
            stop(proc)
    log("ok (JupyterLab stopped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
