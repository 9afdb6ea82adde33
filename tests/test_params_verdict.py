import json

import pytest

from diffnotes import params, verdict


def test_check_names_the_parameter():
    assert params.check("T", 5, int, lo=1) == 5
    assert params.check("eta", 1, float) == 1.0
    with pytest.raises(ValueError, match="'T'"):
        params.check("T", -1, int, lo=1)
    with pytest.raises(ValueError, match="'T'"):
        params.check("T", "10", int)
    with pytest.raises(ValueError, match="'T_grid\\[1\\]'"):
        params.check("T_grid", [10, 0], int, lo=1, each=True)
    with pytest.raises(ValueError, match="'variance'"):
        params.check("variance", "x", str, choices=["beta"])
    with pytest.raises(ValueError, match="device"):
        params.resolve_device("tpu-9")


def test_verdict_records_and_asserts(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFNOTES_RESULTS", str(tmp_path))
    V = verdict.Verdicts("99_test", "a test")
    V.check("a", document="002, Thm 1", claim="c", expected=-1, measured=-1.02, interval=(-1.1, -0.9),
            ok=True, tolerance="CI contains -1")
    with pytest.raises(AssertionError, match="verdict 'b' failed"):
        V.check("b", document="d", claim="c", expected=1, measured=2, ok=False, tolerance="t")
    rec = json.loads((tmp_path / "99_test.json").read_text())
    assert [c["id"] for c in rec["claims"]] == ["a", "b"] and rec["claims"][1]["ok"] is False
