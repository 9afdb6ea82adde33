#!/usr/bin/env python3
"""Load every page of the built book in headless Chromium and check what a reader would see.

For each page of ``_build/html`` (except search, genindex, ``_static``, ``_sources``):

1. math: on a page with math, MathJax ran (``mjx-container`` elements exist, no ``mjx-merror``) and no raw
   ``$$``, ``\\[`` or ``\\(`` is left in the visible text outside code blocks;
2. images: every ``<img>`` loaded (``complete && naturalWidth > 0``), and no local resource failed to load;
3. links: every internal link points to an existing file, and its ``#anchor`` to an id on that page;
4. no Python traceback on the page (error output cells, "Traceback (most recent call last)");
5. no JavaScript error on the page (``pageerror``; sphinx-thebe's repeated inline script used to raise one on
   every page: ``book/_ext/dedup_scripts.py`` removes the repeat);
6. nothing cut off at the page width: no code or output block (``pre``) whose longest line is wider than the block
   (a visible block that scrolls sideways; for a folded one, its longest line measured in its own font against the
   article's width), and no raw Python dict or list echo of a verdict record in an output.

One full-page PNG per chapter page (``notebooks/*.html``) goes to ``_build/screenshots/``.

The machine has no network beyond the package registries: the book is served from 127.0.0.1, MathJax 3
(which the book loads from a CDN) is served from a copy fetched once from the npm registry and cached under
``_build/``, and every other external request is aborted at once.  Needs ``playwright`` (PyPI; its own
browser download is never used) and Debian's ``/usr/bin/chromium``: ``make browser-deps`` installs both.
"""
from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
MATHJAX_SPEC = "mathjax@3"  # what the book's CDN URL asks for
MATHJAX_FALLBACK_TARBALL = "https://registry.npmjs.org/mathjax/-/mathjax-3.2.2.tgz"  # when npm is absent
# https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js, and the fonts and components it loads next
MATHJAX_URL = re.compile(r"^https?://[^/]+/(?:npm/)?mathjax(?:@[^/]*)?/es5/(?P<path>[^?#]+)")
META_REFRESH = re.compile(r"""<meta\s+http-equiv=["']?refresh["']?\s+content=["']\d+\s*;\s*url=(?P<url>[^"']+)""", re.I)
SKIP_PAGES = {"search.html", "genindex.html", "py-modindex.html"}
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}
CONTENT_TYPES = {".js": "application/javascript", ".woff": "font/woff", ".woff2": "font/woff2",
                 ".json": "application/json", ".css": "text/css"}


# ---------------------------------------------------------------------------------------------------- MathJax
def mathjax_dir(cache: Path) -> Path:
    """The ``es5/`` folder of MathJax 3, fetched from the npm registry on first use and kept in ``cache``."""
    es5 = cache / "mathjax" / "package" / "es5"
    if (es5 / "tex-mml-chtml.js").is_file():
        return es5
    cache.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(cache.glob("mathjax-3*.tgz"))
    if not tarballs:
        npm = shutil.which("npm")
        if npm:
            print(f"browser check: fetching {MATHJAX_SPEC} from the npm registry (npm pack)", flush=True)
            subprocess.run([npm, "pack", MATHJAX_SPEC, "--silent", "--pack-destination", str(cache)],
                           check=True, stdout=subprocess.DEVNULL)
        else:
            print(f"browser check: npm not found, fetching {MATHJAX_FALLBACK_TARBALL}", flush=True)
            target = cache / MATHJAX_FALLBACK_TARBALL.rsplit("/", 1)[1]
            with urllib.request.urlopen(MATHJAX_FALLBACK_TARBALL, timeout=120) as r, open(target, "wb") as f:
                shutil.copyfileobj(r, f)
        tarballs = sorted(cache.glob("mathjax-3*.tgz"))
    out = cache / "mathjax"
    shutil.rmtree(out, ignore_errors=True)
    with tarfile.open(tarballs[-1]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/es5/") and (m.isfile() or m.isdir())]
        try:
            tar.extractall(out, members=members, filter="data")
        except TypeError:  # Python < 3.11.4
            tar.extractall(out, members=members)
    if not (es5 / "tex-mml-chtml.js").is_file():
        sys.exit(f"browser check: {tarballs[-1]} holds no es5/tex-mml-chtml.js")
    return es5


# ------------------------------------------------------------------------------------------------ local server
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D102
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


# ------------------------------------------------------------------------------------------------------ links
class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if v is not None and (k == "id" or (k == "name" and tag == "a")):
                self.ids.add(v)


@functools.lru_cache(maxsize=None)
def ids_of(path: Path) -> frozenset[str]:
    p = _Ids()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(p.ids)


def check_link(html_root: Path, base: str, href: str) -> str | None:
    """None if ``href`` (absolute URL on the local server) resolves, else why not."""
    u = urllib.parse.urlsplit(href)
    rel = urllib.parse.unquote(u.path[len(urllib.parse.urlsplit(base).path):])
    rel = posixpath.normpath("/" + rel).lstrip("/")
    target = html_root / rel if rel not in ("", ".") else html_root
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"missing file {rel or '/'}"
    frag = urllib.parse.unquote(u.fragment)
    if frag and target.suffix == ".html" and frag not in ids_of(target):
        return f"no id #{frag} in {target.relative_to(html_root).as_posix()}"
    return None


# ------------------------------------------------------------------------------------------------------- page JS
WAIT_MATHJAX_JS = """async (ms) => {
  const mj = window.MathJax;
  if (!mj || !mj.startup || !mj.startup.promise) return mj ? 'configured, not loaded' : 'absent';
  const timeout = new Promise(r => setTimeout(() => r('timeout'), ms));
  return await Promise.race([mj.startup.promise.then(() => 'ok', e => 'error: ' + e), timeout]);
}"""

WAIT_IMAGES_JS = """async (ms) => {
  const imgs = Array.from(document.images);
  for (const i of imgs) if (i.loading === 'lazy') i.loading = 'eager';
  const done = i => i.complete ? Promise.resolve() :
      new Promise(r => { i.addEventListener('load', r, {once: true}); i.addEventListener('error', r, {once: true}); });
  await Promise.race([Promise.all(imgs.map(done)), new Promise(r => setTimeout(r, ms))]);
}"""

INSPECT_JS = r"""() => {
  // Visible text outside code, scripts and rendered math: where a raw $$, \[ or \( must not remain.
  const skip = 'pre, code, script, style, noscript, textarea, mjx-container, .highlight, .MathJax, template';
  const visible = el => {
    for (; el && el !== document.body; el = el.parentElement) {
      const s = getComputedStyle(el);
      if (s.display === 'none' || s.visibility === 'hidden') return false;
    }
    return true;
  };
  const chunks = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n; (n = walker.nextNode()); ) {
    const p = n.parentElement;
    if (!p || p.closest(skip) || !n.nodeValue.trim() || !visible(p)) continue;
    chunks.push(n.nodeValue);
  }
  const prose = chunks.join(' ');
  const raw = [];
  const re = /\$\$|\\\[|\\\(|(?<![\w$])\$[^$\s][^$\n]*?\\[A-Za-z]+[^$\n]*?\$(?!\w)/g;
  let rawCount = 0;
  for (let m; (m = re.exec(prose)); )
    if (rawCount++ < 3) raw.push(prose.slice(Math.max(0, m.index - 30), m.index + 40).replace(/\s+/g, ' '));
  const imgs = Array.from(document.images).map(i => ({
    src: i.currentSrc || i.src || i.getAttribute('src') || '(no src)', ok: i.complete && i.naturalWidth > 0}));
  const links = Array.from(document.querySelectorAll('a[href]'))
    .map(a => ({raw: a.getAttribute('href'), abs: a.href}));
  const errCells = Array.from(document.querySelectorAll(
      '.output.error, .output.traceback, .output_error, [data-mime-type="application/vnd.jupyter.stderr"].error'))
    .map(e => e.innerText.trim().split('\n').slice(-1)[0].slice(0, 120));
  const tbre = /Traceback \(most recent call last\)|Cell In\[\d+\], line \d+/;
  const tb = errCells.length ? [] : Array.from(new Set(document.body.innerText.split('\n')
      .filter(l => tbre.test(l)).map(l => l.trim().replace(/\s+/g, ' ').slice(0, 120)))).slice(0, 3);
  // (6) horizontal overflow of code and output blocks
  const article = document.querySelector('article.bd-article, article, main') || document.body;
  const W = article.clientWidth;
  const canvas = document.createElement('canvas').getContext('2d');
  const overflow = [];
  for (const pre of document.querySelectorAll('div.highlight pre, div.output pre, .cell_output pre')) {
    const lines = pre.textContent.split('\n');
    let longest = '';
    for (const l of lines) if (l.length > longest.length) longest = l;
    if (!longest.trim()) continue;
    let wide;
    const st = getComputedStyle(pre);
    if (pre.clientWidth > 0) {
      wide = pre.scrollWidth > pre.clientWidth + 2;
    } else if (st.whiteSpace.includes('wrap')) {
      wide = false;  // a folded block whose lines wrap when unfolded
    } else {
      canvas.font = st.font || (st.fontSize + ' ' + st.fontFamily);
      wide = canvas.measureText(longest).width > W - 48;
    }
    if (wide) overflow.push(longest.trim().slice(0, 70) + ` (${longest.length} chars)`);
  }
  const echo = Array.from(document.querySelectorAll('.cell_output pre, div.output pre'))
    .filter(p => /\{'(chapter|id)': /.test(p.textContent)).length;
  return {
    overflow, echo, W,
    mathSources: document.querySelectorAll('.math, span.math, div.math').length,
    mjx: document.querySelectorAll('mjx-container').length,
    // TeX errors (mjx-merror), and undefined macros, which MathJax's noundefined shows as red \name text
    merrors: Array.from(document.querySelectorAll('mjx-merror')).map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80))
      .concat(Array.from(document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'))
        .filter(e => e.textContent.startsWith('\\')).map(e => 'undefined macro ' + e.textContent.slice(0, 60))),
    raw, rawCount, imgs, links, errCells, tb,
  };
}"""


# --------------------------------------------------------------------------------------------------------- main
def pages_of(html_root: Path) -> list[str]:
    out = []
    for p in sorted(html_root.rglob("*.html")):
        rel = p.relative_to(html_root)
        if rel.parts[0] in SKIP_DIRS or rel.as_posix() in SKIP_PAGES:
            continue
        out.append(rel.as_posix())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    ap.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots")
    ap.add_argument("--cache", type=Path, default=ROOT / "_build" / ".browser-cache",
                    help="where the MathJax tarball from the npm registry is kept")
    ap.add_argument("--chromium", default=CHROMIUM)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per page load")
    ap.add_argument("--deps-only", action="store_true", help="fetch MathJax into the cache and stop")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    es5 = mathjax_dir(args.cache)
    if args.deps_only:
        print(f"browser check: MathJax in {es5}")
        return 0
    html_root = args.html.resolve()
    if not (html_root / "index.html").is_file():
        print(f"browser check: FAIL: no built book at {html_root} (run `make book`)")
        return 1
    if not Path(args.chromium).is_file():
        print(f"browser check: FAIL: no {args.chromium} (run `make browser-deps`)")
        return 1
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("browser check: FAIL: playwright is not installed (run `make browser-deps`)")
        return 1

    pages = pages_of(html_root)
    shutil.rmtree(args.screenshots, ignore_errors=True)
    args.screenshots.mkdir(parents=True)
    server, base = serve(html_root)
    base_host = urllib.parse.urlsplit(base).netloc
    profile = tempfile.mkdtemp(prefix="diffnotes-chromium-")

    # per-page network record, reset before each page
    net = {"failed": [], "blocked": set(), "mathjax_missing": []}

    def route(r):
        url = r.request.url
        u = urllib.parse.urlsplit(url)
        if u.scheme in ("data", "blob") or u.netloc == base_host:
            return r.continue_()
        m = MATHJAX_URL.match(url)
        if m:
            f = (es5 / m["path"]).resolve()
            if f.is_file() and es5 in f.parents:
                return r.fulfill(path=str(f), headers={
                    "Access-Control-Allow-Origin": "*",
                    "Content-Type": CONTENT_TYPES.get(f.suffix, "application/octet-stream")})
            net["mathjax_missing"].append(url)
            return r.fulfill(status=404, body="")
        net["blocked"].add(u.netloc)
        all_blocked.add(u.netloc)
        return r.abort("internetdisconnected")

    def on_response(resp):
        u = urllib.parse.urlsplit(resp.url)
        if u.netloc == base_host and resp.status >= 400 and not u.path.endswith("/favicon.ico"):
            net["failed"].append(f"{resp.status} {urllib.parse.unquote(u.path)}")

    def on_failed(req):
        u = urllib.parse.urlsplit(req.url)
        if u.netloc == base_host and "ERR_ABORTED" not in (req.failure or ""):  # not a load cut short by navigation
            net["failed"].append(f"{req.failure} {urllib.parse.unquote(u.path)}")

    n_fail = n_shots = 0
    all_blocked: set[str] = set()
    print(f"browser check: {len(pages)} pages of {html_root.relative_to(ROOT) if ROOT in html_root.parents else html_root}"
          f" in {args.chromium}", flush=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, service_workers="block")
        try:
            ctx.route("**/*", route)
            page = ctx.new_page()
            page.on("response", on_response)
            page.on("requestfailed", on_failed)
            js_errors: list[str] = []
            page.on("pageerror", lambda e: js_errors.append(str(e).splitlines()[0][:120]))
            for rel in pages:
                t = time.monotonic()
                net["failed"].clear(); net["blocked"].clear(); net["mathjax_missing"].clear(); js_errors.clear()
                problems: list[str] = []
                redirect = META_REFRESH.search((html_root / rel).read_text(encoding="utf-8", errors="replace")[:4096])
                if redirect:  # index.html: a bare redirect to the root page
                    href = urllib.parse.urljoin(base + rel, redirect["url"].strip())
                    why = check_link(html_root, base, href) if href.startswith(base) else "points off-site"
                    if why:
                        problems.append(f"redirect to {redirect['url']!r}: {why}")
                    n_fail += bool(problems)
                    print(f"  {'FAIL' if problems else 'ok  '} {rel:<40} redirect -> {redirect['url']}", flush=True)
                    for p in problems:
                        print(f"         - {p}", flush=True)
                    continue
                try:
                    page.goto(base + urllib.parse.quote(rel), wait_until="load", timeout=args.timeout * 1000)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"page did not load: {str(e).splitlines()[0]}")
                mj = page.evaluate(WAIT_MATHJAX_JS, args.timeout * 1000) if not problems else "skipped"
                if not problems:
                    page.evaluate(WAIT_IMAGES_JS, args.timeout * 1000)
                    info = page.evaluate(INSPECT_JS)
                    # (1) math
                    has_math = info["mathSources"] > 0 or info["raw"]
                    if has_math and mj != "ok":
                        problems.append(f"math: MathJax did not run ({mj})")
                    elif info["mathSources"] and not info["mjx"]:
                        problems.append(f"math: {info['mathSources']} math elements but no mjx-container")
                    for e in info["merrors"]:
                        problems.append(f"math: MathJax error: {e}")
                    for s in info["raw"]:
                        problems.append(f"math: unrendered TeX in the text: ...{s}...")
                    if info["rawCount"] > len(info["raw"]):
                        problems.append(f"math: ... and {info['rawCount'] - len(info['raw'])} more unrendered TeX")
                    for u in net["mathjax_missing"]:
                        problems.append(f"math: MathJax file not in the local copy: {u}")
                    # (2) images and local resources
                    for im in info["imgs"]:
                        if not im["ok"]:
                            problems.append(f"image did not load: {urllib.parse.unquote(im['src'].replace(base, ''))}")
                    bad_imgs = {urllib.parse.unquote(urllib.parse.urlsplit(im["src"]).path) for im in info["imgs"]}
                    for f in sorted(set(net["failed"])):
                        if f.split(" ", 1)[1] not in bad_imgs:
                            problems.append(f"local resource failed: {f}")
                    # (3) internal links
                    n_links = 0
                    for link in info["links"]:
                        href = link["abs"]
                        if not href.startswith(base) or link["raw"] in ("#", ""):
                            continue
                        n_links += 1
                        why = check_link(html_root, base, href)
                        if why:
                            problems.append(f"broken link {link['raw']!r}: {why}")
                    # (4) tracebacks
                    for e in info["errCells"]:
                        problems.append(f"error output cell: {e}")
                    for s in info["tb"]:
                        problems.append(f"traceback on the page: {s}")
                    # (6) nothing cut off at the page width
                    for s in info["overflow"][:5]:
                        problems.append(f"cut off at the page width ({info['W']} px): {s}")
                    if len(info["overflow"]) > 5:
                        problems.append(f"... and {len(info['overflow']) - 5} more blocks cut off")
                    if info["echo"]:
                        problems.append(f"{info['echo']} raw verdict-record echoes in outputs")
                    # screenshot of each chapter page
                    shot = ""
                    if rel.startswith("notebooks/"):
                        out = args.screenshots / (Path(rel).stem + ".png")
                        page.screenshot(path=str(out), full_page=True)
                        n_shots += 1
                        shot = f", screenshot {out.relative_to(ROOT) if ROOT in out.parents else out}"
                    detail = (f"math={info['mjx']} img={len(info['imgs'])} links={n_links}"
                              f"{' js-errors=' + str(len(js_errors)) if js_errors else ''}{shot}")
                else:
                    detail = ""
                for e in dict.fromkeys(js_errors):      # a script error on a page is a defect of the book
                    problems.append(f"JS error: {e}")
                status = "FAIL" if problems else "ok  "
                n_fail += bool(problems)
                print(f"  {status} {rel:<40} {detail} ({time.monotonic() - t:.1f}s)", flush=True)
                for p in problems:
                    print(f"         - {p}", flush=True)
        finally:
            ctx.close()
            server.shutdown()
            shutil.rmtree(profile, ignore_errors=True)
    if all_blocked:
        print(f"  note: external requests aborted (no network here): {', '.join(sorted(all_blocked))}")
    total = time.monotonic() - t0
    verdict = "FAIL" if n_fail else "ok"
    print(f"browser check: {verdict}: {len(pages)} pages, {n_fail} failed, {n_shots} screenshots in "
          f"{args.screenshots.relative_to(ROOT) if ROOT in args.screenshots.resolve().parents else args.screenshots}"
          f" ({total:.1f}s)")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
