import json

import pytest

from diffnotes import params, verdict
from diffnotes.verdict import Control, Foil, Test, power_law_curve, rate


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


@pytest.fixture
def V(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFNOTES_RESULTS", str(tmp_path))
    monkeypatch.delenv("DIFFNOTES_STRICT", raising=False)
    return verdict.Verdicts("99_test", "a test")


def test_three_outcomes_and_the_record(V, tmp_path):
    t = verdict.at_most(1.0)
    V.check("a", document="d", claim="c", expected=1, test=t, data=0.5, foil=Foil("wrong", 1.5, "+50%"),
            stated="reproduced")
    V.check("b", document="d", claim="c", expected=1, test=t, data=2.0, foil=Foil("wrong", 1.5),
            control=Control("known good", 0.9), stated="not reproduced")
    V.check("c", document="d", claim="c", expected=1, test=t, data=2.0, foil=Foil("wrong", 1.5),
            stated="inconclusive", decide="n = 10^6")
    # a failing control gives no power; an existence claim unseen is never 'not reproduced'
    V.check("d", document="d", claim="c", expected=1, test=t, data=2.0, foil=Foil("wrong", 1.5),
            control=Control("also bad", 3.0), stated="inconclusive", decide="x")
    V.check("e", document="d", claim="c", expected=1, test=t, data=2.0, foil=Foil("wrong", 1.5),
            control=Control("good", 0.1), existence=True, stated="inconclusive", decide="x")
    V.check("f", document="d", claim="c", expected=1, test=t, data=2.0, foil=Foil("wrong", 1.5),
            paper_fails=True, stated="not reproduced")
    rec = json.loads((tmp_path / "99_test.json").read_text())
    got = {c["id"]: c["outcome"] for c in rec["claims"]}
    assert got == {"a": "reproduced", "b": "not reproduced", "c": "inconclusive", "d": "inconclusive",
                   "e": "inconclusive", "f": "not reproduced"}
    a = rec["claims"][0]
    assert a["foil"] == {"name": "wrong", "margin": "+50%", "measured": 1.5, "interval": None, "passed": False}
    assert a["test"] == "figure <= 1" and a["agrees"] is True


def test_the_assertions(V, monkeypatch):
    t = verdict.at_most(1.0)
    with pytest.raises(AssertionError, match="foil 'too close' passed"):
        V.check("a", document="d", claim="c", expected=1, test=t, data=0.5, foil=Foil("too close", 0.9),
                stated="reproduced")
    with pytest.raises(AssertionError, match="text states 'reproduced' but the measured outcome is 'inconclusive'"):
        V.check("b", document="d", claim="c", expected=1, test=t, data=2.0, foil=Foil("w", 1.5),
                stated="reproduced", decide="x")
    with pytest.raises(AssertionError, match="decide"):
        V.check("c", document="d", claim="c", expected=1, test=t, data=2.0, foil=Foil("w", 1.5),
                stated="inconclusive")
    with pytest.raises(ValueError, match="stated"):
        V.check("d", document="d", claim="c", expected=1, test=t, data=0.5, foil=Foil("w", 1.5), stated="yes")
    with pytest.raises(ValueError, match="foil"):
        V.check("e", document="d", claim="c", expected=1, test=t, data=0.5, foil=1.5, stated="reproduced")
    # not strict: recorded as disagreeing, not raised (a rerun at another size is not lost)
    monkeypatch.setenv("DIFFNOTES_STRICT", "0")
    assert V.check("g", document="d", claim="c", expected=1, test=t, data=2.0, foil=Foil("w", 0.5),
                   stated="reproduced", decide="x") is None
    rec = V.records[-1]
    assert rec["agrees"] is False and len(rec["problems"]) == 2


def test_stated_per_size(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFNOTES_RESULTS", str(tmp_path))
    t = verdict.at_most(1.0)
    st = {"smoke": "inconclusive", "ci": "reproduced"}
    verdict.Verdicts("x", size="smoke").check("a", document="d", claim="c", expected=1, test=t, data=2.0,
                                              foil=Foil("w", 1.5), stated=st, decide="ci size")
    verdict.Verdicts("x", size="ci").check("a", document="d", claim="c", expected=1, test=t, data=0.1,
                                           foil=Foil("w", 1.5), stated=st)
    with pytest.raises(ValueError, match="paper"):
        verdict.Verdicts("x", size="paper").check("a", document="d", claim="c", expected=1, test=t, data=0.1,
                                                  foil=Foil("w", 1.5), stated=st)
    with pytest.raises(ValueError, match="size"):
        verdict.Verdicts("x", size="huge")


def test_rate_test_resolves_a_quarter():
    T = [100, 200, 400, 800, 1600]
    for p in (1.0, 2.0, 0.5):
        for lp in (0.0, 3.0):
            exact = power_law_curve(T, [1.0] * 5, -p, lp)
            worse = power_law_curve(T, [1.0] * 5, -p + 0.25, lp)
            for kind in ("upper", "tight"):
                t = rate(p, log_power=lp, kind=kind)
                assert t(exact).ok and not t(worse).ok
            assert rate(p, log_power=lp, kind="tight")(power_law_curve(T, [1.0] * 5, -p - 0.25, lp)).ok is False
            assert rate(p, log_power=lp, kind="upper")(power_law_curve(T, [1.0] * 5, -p - 0.25, lp)).ok is True
    # the log correction matters: T^-1 log^3 T fails the plain 1/T test at these T but passes with log_power = 3
    c = power_law_curve(T, [1.0] * 5, -1, 3)
    assert not rate(1)(c).ok and rate(1, log_power=3)(c).ok
    r = rate(1, top=3)(power_law_curve(T, [1.0] * 5, -1))
    assert r.figure == pytest.approx(-1) and r.interval == (pytest.approx(-1), pytest.approx(-1))
    # judged at the top only: a pre-asymptotic start does not count
    T2 = [10, 20] + T
    err = [1.0, 0.9] + power_law_curve(T, [1.0] * 5, -1)[1]
    assert rate(1, top=3)((T2, err)).ok
    with pytest.raises(ValueError):
        rate(1)(([100, 200, 400], [1.0, 0.0, 0.5]))


def test_custom_test_forms():
    t = Test("x", lambda d: (d > 0, d))
    assert t(1).ok and not t(-1).ok
    with pytest.raises(TypeError):
        Test("x", lambda d: "yes")(1)


def test_every_call_needs_a_test_and_a_foil(V):
    with pytest.raises(TypeError):
        V.check("old", document="d", claim="c", expected=1, measured=1.0, ok=True, tolerance="t")


def test_rate_caveat_when_the_log_factor_hides_the_exponent():
    T = [400, 800, 1600]
    c = power_law_curve(T, [1.0] * 3, -1, 2)
    r = rate(1, log_power=2)(c)
    assert r.ok and "plain T^-0.75" in r.caveat
    assert rate(1)(power_law_curve(T, [1.0] * 3, -1)).caveat == ""


def test_compare_paper_flags_the_claims_whose_paper_outcome_differs(tmp_path, capsys):
    import json

    from diffnotes import verdict
    (tmp_path / "results" / "paper").mkdir(parents=True)
    claims = {"a": {"outcome_counts": {"reproduced": 2}, "agree": 2, "n": 2, "mean": 1.0, "se": 0.1},
              "b": {"outcome_counts": {"inconclusive": 1, "reproduced": 1}, "agree": 1, "n": 2, "measured": [1, 2]}}
    (tmp_path / "results" / "paper" / "ch.json").write_text(json.dumps(
        {"chapter": "ch", "seeds": [0, 1], "runs": [{"wall_s": 120.0}], "claims": claims}))
    V = verdict.Verdicts("ch", "t", "ci")
    V.records = [{"id": "a", "outcome": "reproduced", "measured": 1.1},
                 {"id": "b", "outcome": "reproduced", "measured": 1.0},
                 {"id": "c", "outcome": "inconclusive", "measured": 0.0}]
    assert V.compare_paper(root=tmp_path) == ["b"]
    out = capsys.readouterr().out
    assert "2 seed(s), 2 min a run" in out and "reproduced x2 (2 of 2 agree with the text); measured 1 ± 0.1" in out
    assert "no record" in out
    assert verdict.Verdicts("other", "t", "ci").compare_paper(root=tmp_path) == []
    assert "No paper-size record of other" in capsys.readouterr().out


def test_paper_agreement_is_judged_against_the_text_as_it_is_now(tmp_path, capsys, monkeypatch):
    """A record made when the text stated 'reproduced' at paper size (agree 0) agrees once the text states the
    paper-size outcome that was measured: agreement is recomputed from the run's stated_by_size."""
    import json

    from diffnotes import verdict
    from diffnotes.verdict import Foil, Test
    (tmp_path / "results" / "paper").mkdir(parents=True)
    rec = {"chapter": "ch", "seeds": [0], "runs": [], "claims": {"s": {
        "outcome_counts": {"inconclusive": 1}, "outcomes": ["inconclusive"], "agree": 0, "n": 1, "measured": [0.7]}}}
    (tmp_path / "results" / "paper" / "ch.json").write_text(json.dumps(rec))
    monkeypatch.setenv("DIFFNOTES_RESULTS", str(tmp_path / "out"))
    V = verdict.Verdicts("ch", "t", "ci")
    V.check("s", document="d", claim="c", expected=1, test=Test("x > 0.5", lambda x: (x > 0.5, x)), data=0.9,
            foil=Foil("0.4", 0.4, "0.5 lower"), stated={"smoke": "reproduced", "ci": "reproduced",
                                                          "paper": "inconclusive"}, decide="a larger grid")
    assert V.records[-1]["stated_by_size"]["paper"] == "inconclusive"
    capsys.readouterr()
    assert V.compare_paper(root=tmp_path) == ["s"]
    assert "inconclusive x1 (1 of 1 agree with the text)" in capsys.readouterr().out
