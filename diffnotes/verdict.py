"""Verdicts: a claim's measured figure, asserted against the document with a stated tolerance, and recorded.

Each chapter makes one :class:`Verdicts` and ends every claim with ``V.check(...)``.  The record (one JSON file
per chapter under ``_build/results/``, or ``$DIFFNOTES_RESULTS``) feeds the "results at a glance" page; the
assertion makes the notebook, and so ``make test``, fail if the figure does not meet the pre-stated form.

A claim that does not reproduce is recorded honestly with ``reproduced=False``: its ``ok`` is then the
assertion of what *was* observed and explained in the text (e.g. "the gap is below the estimator's error").
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = ["Verdicts", "results_dir"]


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
    """JSON-friendly floats (tensors and numpy scalars included)."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    return v


class Verdicts:
    def __init__(self, chapter, title=""):
        self.chapter, self.title, self.records = chapter, title, []

    def check(self, claim_id, *, document, claim, expected, measured, ok, tolerance, interval=None,
              reproduced=True, note=""):
        """Record a claim and assert ``ok``.

        document: e.g. ``"002, Theorem 1"``; claim: one line; expected: the document's figure or exponent;
        measured: the figure (number or string); interval: ``(lo, hi)`` if any; tolerance: the pre-stated form of
        the test, in words; ok: the outcome of that test."""
        ok = bool(ok)
        rec = {"chapter": self.chapter, "id": claim_id, "document": document, "claim": claim,
               "expected": _plain(expected), "measured": _plain(measured), "interval": _plain(interval),
               "tolerance": tolerance, "ok": ok, "reproduced": bool(reproduced), "note": note}
        self.records = [r for r in self.records if r["id"] != claim_id] + [rec]
        self._write()
        status = ("PASS" if ok else "FAIL") + ("" if reproduced else " (claim does not reproduce; see text)")
        iv = f" {interval}" if interval is not None else ""
        print(f"[{status}] {document}: {claim}\n  expected {expected}; measured {_fmt(measured)}{iv}; "
              f"test: {tolerance}")
        assert ok, f"verdict {claim_id!r} failed: measured {measured}{iv}, expected {expected} ({tolerance})"
        return rec

    def _write(self):
        d = results_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{self.chapter}.json").write_text(json.dumps(
            {"chapter": self.chapter, "title": self.title, "claims": self.records}, indent=1))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(_plain(v))
