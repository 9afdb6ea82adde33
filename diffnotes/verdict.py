"""Verdicts that can fail: a claim, its pre-stated test, a foil the test must reject, and one of three outcomes.

Each chapter makes one :class:`Verdicts` and ends every claim with ``V.check(...)``:

* ``test`` is a :class:`Test`: the rule, written down before measuring, that decides whether ``data`` (what the
  experiment measured) shows the claim.  It returns a :class:`Result` (pass/fail, the measured figure, an interval
  and what that interval means).
* ``foil`` is a :class:`Foil`: the **same test** applied to a variant that is wrong by a small, stated margin (a
  first-order sampler under a second-order claim, a formula as misprinted, a law with a wrong variance, a synthetic
  curve with an exponent worse by 0.25).  The foil must fail, or the test has no power and the verdict is an error.
* The outcome is ``reproduced`` (the test passes), ``not reproduced`` (it fails *and* power was shown: a positive
  control -- a variant for which the claim is known to hold -- passes the same test at the same size, or the
  paper-size run fails too) or ``inconclusive`` (it fails without a demonstration of power; ``decide`` then says
  what size would decide it).  An existence claim ("can diverge") that is not seen is never ``not reproduced``.
* ``stated`` is the outcome the chapter's prose states.  The cell asserts that the measured outcome equals it and
  that the foil failed, so text and numbers cannot disagree.

The records (one JSON file per chapter under ``_build/results/``, or ``$DIFFNOTES_RESULTS``) feed the results page;
each verdict renders as a card in the notebook and the book.
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Verdicts", "SIZES", "Test", "Result", "Foil", "Control", "OUTCOMES", "results_dir",
           "at_most", "at_least", "within", "below_interval", "rate", "each", "power_law_curve"]

OUTCOMES = ("reproduced", "not reproduced", "inconclusive")


def results_dir():
    env = os.environ.get("DIFFNOTES_RESULTS")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "_toc.yml").exists():
            return p / "_build" / "results"
    return here / "_results"


def _plain(v):
    """JSON-friendly values (tensors and numpy scalars included; non-finite floats as strings)."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _plain(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    return v


# ----------------------------------------------------------------------------------------------------------- tests
@dataclass
class Result:
    """What a test says of one data set: ``ok``, the figure it judged, an optional interval and what the interval
    means (e.g. "95% bootstrap interval", "range of local slopes over the top of the T range (exact computation,
    not a confidence interval)"), and any detail worth a line (e.g. the raw slope beside the log-corrected one)."""
    ok: bool
    figure: Any
    interval: Any = None
    meaning: str = ""
    detail: str = ""
    caveat: str = ""


@dataclass
class Test:
    """A pre-stated test: ``text`` says it in words; ``fn(data)`` returns a :class:`Result` (or ``(ok, figure)``,
    or ``(ok, figure, interval)``)."""
    __test__ = False  # not a pytest class
    text: str
    fn: Callable[[Any], Any]

    def __call__(self, data) -> Result:
        r = self.fn(data)
        if isinstance(r, Result):
            return r
        if isinstance(r, tuple) and len(r) in (2, 3):
            return Result(bool(r[0]), r[1], r[2] if len(r) == 3 else None)
        raise TypeError(f"test {self.text!r} returned {type(r).__name__}; expected Result or (ok, figure[, interval])")


@dataclass
class Foil:
    """The same test on a variant wrong by a stated margin; it must fail."""
    name: str
    data: Any
    margin: str = ""


@dataclass
class Control:
    """A positive control: a variant for which the claim is known to hold, run at the same size; it must pass the
    same test for a failing claim to be called ``not reproduced``."""
    name: str
    data: Any


def _num(x, what="figure"):
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"test data must be a number ({what}), got {x!r}") from None
    return v


def at_most(bound, *, what="figure"):
    """Pass if the figure (a number) is at most ``bound``."""
    return Test(f"{what} <= {bound:g}", lambda x: Result(_num(x) <= bound, _num(x)))


def at_least(bound, *, what="figure"):
    """Pass if the figure (a number) is at least ``bound``."""
    return Test(f"{what} >= {bound:g}", lambda x: Result(_num(x) >= bound, _num(x)))


def within(target, tol, *, what="figure"):
    """Pass if ``|figure - target| <= tol``."""
    return Test(f"|{what} - {target:g}| <= {tol:g}", lambda x: Result(abs(_num(x) - target) <= tol, _num(x)))


def below_interval(bound, *, what="upper end of the interval", meaning="95% interval"):
    """Data ``(figure, (lo, hi))``: pass if ``hi < bound``."""
    def fn(d):
        fig, (lo, hi) = d
        return Result(float(hi) < bound, float(fig), (float(lo), float(hi)), meaning)
    return Test(f"{what} < {bound:g}", fn)


def _local_slopes(T, err, log_power):
    lx = [math.log(t) for t in T]
    ly = [math.log(e) - log_power * math.log(math.log(t)) for t, e in zip(T, err)]
    return [(ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i]) for i in range(len(lx) - 1)], lx, ly


def _ls_slope(lx, ly):
    n = len(lx)
    xm, ym = sum(lx) / n, sum(ly) / n
    sxx = sum((a - xm) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("a slope needs at least two distinct x values")
    return sum((a - xm) * (b - ym) for a, b in zip(lx, ly)) / sxx


def rate(p, *, log_power=0.0, margin=0.125, top=3, kind="upper", quantity="error"):
    """Asymptotic rate test for ``error = O(T^-p (log T)^log_power)``, judged at the top of the T range.

    Data: ``(T, err)`` sequences, increasing ``T``, already restricted by the chapter's pre-stated rule that drops
    pre-asymptotic ``T``.  Over the last ``top`` points the log-corrected curve ``log(err / (log T)^log_power)`` is
    examined: the figure is its least-squares slope there, the interval is the range of its local (consecutive)
    slopes there -- an exact computation has no noise, so this interval shows curvature, not uncertainty.

    With a log power, over a practical T range a plain ``T^(-p + 0.25)`` is hard to tell from ``T^-p (log T)^l``
    (dividing by ``(log T)^l`` adds about ``l / log T`` to a slope): the result then carries a ``caveat`` saying so,
    shown on the verdict card.

    ``kind="upper"`` (an upper bound): pass if every local slope over the top is <= ``-p + margin`` (the curve times
    ``T^p / (log T)^l`` does not grow faster than ``T^margin`` there).  ``kind="tight"`` (the rate is attained): pass if
    every local slope over the top lies within ``margin`` of ``-p``.  With the default margin 0.125, a curve whose
    exponent is worse by 0.25 fails either kind.  The raw (uncorrected) slope is reported beside it.
    """
    if kind not in ("upper", "tight"):
        raise ValueError(f"kind must be 'upper' or 'tight', got {kind!r}")
    if top < 2:
        raise ValueError(f"top must be >= 2, got {top}")
    lp = f" (log T)^{log_power:g}" if log_power else ""
    rule = (f"every local slope of log({quantity}{' / (log T)^%g' % log_power if log_power else ''}) vs log T over "
            f"the top {top} T values is " + (f"<= {-p + margin:+.3g}" if kind == "upper"
                                             else f"within {margin:g} of {-p:+.3g}"))

    def fn(d):
        T, err = [float(t) for t in d[0]], [float(e) for e in d[1]]
        if len(T) != len(err) or len(T) < top:
            raise ValueError(f"rate test needs >= {top} (T, err) points, got {len(T)} and {len(err)}")
        if any(e <= 0 or not math.isfinite(e) for e in err) or any(t <= 1 for t in T):
            raise ValueError(f"rate test needs finite positive errors and T > 1, got T={T}, err={err}")
        T, err = T[-top:], err[-top:]
        loc, lx, ly = _local_slopes(T, err, log_power)
        slope = _ls_slope(lx, ly)
        raw = _ls_slope(lx, [math.log(e) for e in err])
        judge = (lambda ls: all(s <= -p + margin for s in ls)) if kind == "upper" else \
            (lambda ls: all(abs(s + p) <= margin for s in ls))
        ok = judge(loc)
        caveat = ""
        if log_power:
            # does a plain power law, worse by 0.25 and without the log factor, pass the same test here?
            plain = power_law_curve(T, err, -p + 0.25)
            if judge(_local_slopes(*plain, log_power)[0]):
                caveat = (f"over T = {T[0]:g}..{T[-1]:g} a plain T^{-p + 0.25:g} (no log factor) also passes: the "
                          f"exponent is resolved only given the log power {log_power:g} (separating them needs "
                          f"l / log T < {margin:g}, i.e. T > {math.exp(log_power / margin):.1e})")
        return Result(ok, round(slope, 4), (round(min(loc), 4), round(max(loc), 4)),
                      "range of local slopes over the top of the T range (exact: curvature, not uncertainty)",
                      f"raw slope {raw:+.3f}, log-corrected slope {slope:+.3f} over T = {T[0]:g}..{T[-1]:g}", caveat)
    return Test(f"claim {quantity} = O(T^-{p:g}{lp}); {rule}", fn)


def each(test):
    """The same test on every series of a dict: passes when every series passes (figures, intervals per series;
    the caveats of the series, if any, once each)."""
    def fn(data):
        rs = {k: test(v) for k, v in data.items()}
        caveats = list(dict.fromkeys(r.caveat for r in rs.values() if r.caveat))
        return Result(all(r.ok for r in rs.values()), {k: r.figure for k, r in rs.items()},
                      {k: r.interval for k, r in rs.items()}, next(iter(rs.values())).meaning,
                      "; ".join(f"{k}: {r.detail}" for k, r in rs.items()), "; ".join(caveats))
    return Test(test.text + " (every series)", fn)


def power_law_curve(T, err, exponent, log_power=0.0):
    """A synthetic foil curve ``c T^exponent (log T)^log_power`` through the last point of ``(T, err)``: the claim's
    rate made worse by a stated margin (e.g. ``exponent = -p + 0.25``)."""
    T = [float(t) for t in T]
    e_last = float(err[-1])
    f = lambda t: t ** exponent * (math.log(t) ** log_power if log_power else 1.0)  # noqa: E731
    c = e_last / f(T[-1])
    return (T, [c * f(t) for t in T])


# ---------------------------------------------------------------------------------------------------------- records
SIZES = ("smoke", "ci", "paper", "custom")


def _strict():
    return os.environ.get("DIFFNOTES_STRICT", "1").strip().lower() not in ("0", "false", "no")


class Verdicts:
    """One chapter's verdicts.  ``size`` names the run's size (``smoke``, ``ci``, ``paper`` or ``custom``): a stated
    outcome may be given per size (``stated={"ci": "inconclusive", "paper": "reproduced"}``).

    Strict mode (the default; the book build and ``make test``) asserts every verdict.  With
    ``DIFFNOTES_STRICT=0`` (a rerun at another size or seed: ``python -m diffnotes run/sweep``) a verdict whose
    outcome differs from the text, or whose foil passes, is recorded with ``agrees: false`` and shown, not raised,
    so that the run is not lost."""

    def __init__(self, chapter, title="", size="ci"):
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        self.chapter, self.title, self.size, self.records = chapter, title, size, []

    def check(self, claim_id, *, document, claim, expected, test, data, foil, stated, control=None,
              paper_fails=False, existence=False, decide="", note=""):
        """Decide, record and assert one claim.

        document: e.g. ``"002, Theorem 1"``; claim: one line; expected: the document's figure or exponent;
        test: the pre-stated :class:`Test`; data: what it is applied to; foil: a :class:`Foil` (must fail);
        stated: the outcome the chapter's text states (one of :data:`OUTCOMES`); control: a :class:`Control`
        (positive control) giving the power to call a failure ``not reproduced``; paper_fails: the paper-size run
        failed the same test too (also power); existence: an existence claim (unseen means inconclusive);
        decide: for an inconclusive outcome, what size would decide it.
        """
        by_size = dict(stated) if isinstance(stated, dict) else {k: stated for k in SIZES if k != "custom"}
        if self.size not in by_size and self.size != "custom":
            raise ValueError(f"stated gives no outcome for size {self.size!r}: {stated}")
        stated = by_size.get(self.size, by_size.get("ci"))          # a custom run is judged by the CI-size text
        if stated not in OUTCOMES:
            raise ValueError(f"stated must be one of {OUTCOMES}, got {stated!r}")
        if not isinstance(test, Test):
            raise ValueError(f"test must be a verdict.Test, got {type(test).__name__}")
        if not isinstance(foil, Foil):
            raise ValueError(f"foil must be a verdict.Foil (the same test on a variant wrong by a stated margin), "
                             f"got {type(foil).__name__}")
        r = test(data)
        rf = test(foil.data)
        rc = test(control.data) if control is not None else None
        if r.ok:
            outcome = "reproduced"
        elif not existence and ((rc is not None and rc.ok) or paper_fails):
            outcome = "not reproduced"
        else:
            outcome = "inconclusive"
        rec = {"chapter": self.chapter, "id": claim_id, "document": document, "claim": claim,
               "expected": _plain(expected), "test": test.text,
               "measured": _plain(r.figure), "interval": _plain(r.interval), "interval_meaning": r.meaning,
               "detail": r.detail, "caveat": r.caveat, "passed": bool(r.ok),
               "foil": {"name": foil.name, "margin": foil.margin, "measured": _plain(rf.figure),
                        "interval": _plain(rf.interval), "passed": bool(rf.ok)},
               "control": None if rc is None else {"name": control.name, "measured": _plain(rc.figure),
                                                   "passed": bool(rc.ok)},
               "paper_fails": bool(paper_fails), "existence": bool(existence),
               "outcome": outcome, "stated": stated, "stated_by_size": by_size, "decide": decide, "note": note,
               "size": self.size}
        problems = []
        if rf.ok:
            problems.append(f"the foil '{foil.name}' passed the test, so the test cannot fail (measured {rf.figure})")
        if outcome != stated:
            problems.append(f"the text states '{stated}' but the measured outcome is '{outcome}' "
                            f"(measured {r.figure}, test: {test.text})")
        if outcome == "inconclusive" and not decide:
            problems.append("an inconclusive outcome must say what size would decide it (decide=...)")
        rec["agrees"] = not problems
        rec["problems"] = problems
        self.records = [x for x in self.records if x["id"] != claim_id] + [rec]
        self._write()
        _show(rec)
        if _strict():
            assert not problems, f"verdict {claim_id!r}: " + "; ".join(problems)
        # nothing returned (a returned record would echo as a raw dict under the card): see self.records[-1]

    def compare_paper(self, root=None):
        """Show this run's outcomes beside the committed paper-size record (``results/paper/<chapter>.json``, made
        by ``python -m diffnotes sweep --size paper`` and ``scripts/paper_records.py``) and any replicate record
        (``results/replicates/<chapter>.json``); return the ids whose paper-size outcome differs from this run's."""
        from .plotting import table
        root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
        recs = {}
        for kind in ("paper", "replicates"):
            f = root / "results" / kind / f"{self.chapter}.json"
            recs[kind] = json.loads(f.read_text()) if f.exists() else None
        paper = recs["paper"]
        if paper is None:
            print(f"No paper-size record of {self.chapter} yet (results/paper/{self.chapter}.json).")
            return []

        def counts(c, stated=None):
            if c is None:
                return "no record"
            return (counts_text(c) + f" ({agree_now(c, stated)} of {c.get('n', 0)} agree with the text)"
                    + (f"; measured {fmt(c['mean'])} ± {fmt(c['se'])}" if c.get("se") is not None else
                       f"; measured {fmt(c['measured'][0])}" if c.get("measured") else ""))

        rows, differ = [], []
        for r in self.records:
            pc = paper["claims"].get(r["id"])
            diff = pc is not None and differs(pc, r["outcome"])
            differ += [r["id"]] * diff
            st = r.get("stated_by_size") or {}
            row = [r["id"], f"{r['outcome']} (measured {fmt(r['measured'])})", counts(pc, st.get("paper")),
                   "yes" if diff else ""]
            if recs["replicates"] is not None:
                row.insert(3, counts(recs["replicates"]["claims"].get(r["id"]), st.get("ci")))
            rows.append(row)
        seeds, walls = paper.get("seeds", []), [x.get("wall_s") for x in paper.get("runs", []) if x.get("wall_s")]
        cap = (f"This run ({self.size} size) beside the committed paper-size record: {len(seeds)} seed(s), "
               + (("up to " if len(walls) > 1 else "") + f"{max(walls) / 60:.0f} min a run, " if walls else "")
               + ("the documented paper size" if paper.get("documented_paper_size", True) else
                  "not the documented paper size (differs in " + ", ".join(paper.get("differs_in", [])) + ")")
               + (f". {paper['note']}" if paper.get("note") else ""))
        head = ["claim", f"this run ({self.size})", "paper size"]
        if recs["replicates"] is not None:
            head.append(f"replicates ({len(recs['replicates'].get('seeds', []))} seeds)")
        table(head + ["differs"], rows, cap)
        return differ

    def _write(self):
        d = results_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{self.chapter}.json").write_text(json.dumps(
            {"chapter": self.chapter, "title": self.title, "claims": self.records}, indent=1))


def counts_text(claim):
    """``"reproduced x7, inconclusive x1"``: the outcome counts of an aggregated record (``diffnotes.sweep``)."""
    return ", ".join(f"{k} x{v}" for k, v in claim["outcome_counts"].items())


def differs(claim, outcome):
    """Whether an aggregated record's outcomes are anything but ``outcome`` (this run's) in every seed."""
    return set(claim["outcome_counts"]) != {outcome}


def agree_now(claim, stated=None):
    """How many seeds of an aggregated record (``diffnotes.sweep.aggregate``) agree with the outcome the chapter's
    text states *now* for that size (``stated``, from the current run's ``stated_by_size``); without it, the
    agreement recorded when the runs were made."""
    if stated is None or "outcomes" not in claim:
        return claim.get("agree", 0)
    return sum(o == stated for o in claim["outcomes"])


def fmt(v):
    """Short text for a figure or an interval."""
    v = _plain(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(u) for u in v) + "]"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt(u)}" for k, u in v.items())
    return str(v)


_COLOURS = {"reproduced": "#1a7f37", "not reproduced": "#cf222e", "inconclusive": "#9a6700"}


def card_html(rec):
    """The verdict card: document and claim, the pre-stated test, the figure with its interval, the foil and its
    result, the outcome."""
    e = lambda s: html.escape(str(s))  # noqa: E731
    iv = "" if rec["interval"] is None else f" &nbsp;<span title='{e(rec['interval_meaning'])}'>{e(fmt(rec['interval']))}</span>"
    rows = [("claim", f"{e(rec['claim'])}"), ("document says", e(fmt(rec["expected"]))),
            ("pre-stated test", e(rec["test"])),
            ("measured", f"<b>{e(fmt(rec['measured']))}</b>{iv} &nbsp;({'passes' if rec['passed'] else 'fails'})"
             + (f"<br><small>{e(rec['interval_meaning'])}</small>" if rec["interval_meaning"] else "")
             + (f"<br><small>{e(rec['detail'])}</small>" if rec["detail"] else ""))]
    f = rec["foil"]
    rows.append(("foil", f"{e(f['name'])}" + (f" ({e(f['margin'])})" if f["margin"] else "")
                 + f": {e(fmt(f['measured']))} &rarr; {'passes (test has no power!)' if f['passed'] else 'fails, as it must'}"))
    if rec["control"]:
        c = rec["control"]
        rows.append(("positive control", f"{e(c['name'])}: {e(fmt(c['measured']))} &rarr; "
                                         f"{'passes' if c['passed'] else 'fails'}"))
    if rec.get("caveat"):
        rows.append(("caveat", e(rec["caveat"])))
    if rec["decide"]:
        rows.append(("what would decide it", e(rec["decide"])))
    if rec["note"]:
        rows.append(("note", e(rec["note"])))
    for prob in rec.get("problems", []):
        rows.append(("<span style='color:#cf222e'>disagrees with the text</span>", e(prob)))
    col = _COLOURS[rec["outcome"]]
    body = "".join(f"<tr><th style='text-align:left;vertical-align:top;padding:2px 8px;white-space:nowrap'>{k}</th>"
                   f"<td style='text-align:left;padding:2px 8px'>{v}</td></tr>" for k, v in rows)
    return (f"<div class='diffnotes-verdict' style='border:1px solid {col};border-left:6px solid {col};"
            f"border-radius:4px;padding:6px 10px;margin:8px 0'>"
            f"<div style='font-weight:bold;color:{col}'>{e(rec['outcome'].upper())} &middot; {e(rec['document'])}"
            f" &middot; <code>{e(rec['id'])}</code></div>"
            f"<table style='border:none;margin:4px 0;font-size:90%'>{body}</table></div>")


def card_text(rec):
    f = rec["foil"]
    lines = [f"[{rec['outcome'].upper()}] {rec['document']}: {rec['claim']}",
             f"  test: {rec['test']}",
             f"  measured {fmt(rec['measured'])}" + (f" {fmt(rec['interval'])}" if rec["interval"] is not None else "")
             + f" -> {'passes' if rec['passed'] else 'fails'}",
             f"  foil {f['name']}: {fmt(f['measured'])} -> {'PASSES (no power)' if f['passed'] else 'fails'}"]
    if rec["control"]:
        lines.append(f"  control {rec['control']['name']}: {fmt(rec['control']['measured'])} -> "
                     f"{'passes' if rec['control']['passed'] else 'fails'}")
    return "\n".join(lines)


class _Card:
    def __init__(self, rec):
        self.rec = rec

    def _repr_html_(self):
        return card_html(self.rec)

    def __repr__(self):
        return card_text(self.rec)


def show(obj, text):
    """Display ``obj`` (its ``_repr_html_``) in IPython (a notebook, the book), else print ``text``."""
    try:
        from IPython import get_ipython
        from IPython.display import display
        if get_ipython() is not None:
            display(obj)
            return
    except ImportError:  # pragma: no cover
        pass
    print(text)


def _show(rec):
    show(_Card(rec), card_text(rec))
