"""scripts/paper_records.py and the results page's paper-size column, on a hand-made sweep folder."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(folder, seed, size, outcomes, agrees):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "stem": "01_pipeline", "params": {"size": size, "seed": seed}, "size": size, "seed": seed, "status": "ok",
        "wall_s": 1.5, "started": "t", "host": "h", "hardware": "cpu", "device": "cpu", "commit": "abc"}))
    (folder / "results").mkdir()
    claims = [{"id": k, "document": "d", "claim": "c", "outcome": o, "measured": 1.0 + seed, "agrees": a,
               "stated": "reproduced"} for (k, o), a in zip(outcomes.items(), agrees)]
    (folder / "results" / "01_pipeline.json").write_text(json.dumps({"chapter": "01_pipeline", "claims": claims}))


def test_paper_records_and_the_results_column(tmp_path):
    out = tmp_path / "sweep"
    _run(out / "01_pipeline" / "a", 0, "paper", {"x": "reproduced", "y": "inconclusive"}, [True, False])
    _run(out / "01_pipeline" / "b", 1, "paper", {"x": "reproduced", "y": "reproduced"}, [True, True])
    dest = tmp_path / "paper"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_records.py"), str(out), "--dest", str(dest)],
                   check=True, capture_output=True)
    rec = json.loads((dest / "01_pipeline.json").read_text())
    assert rec["seeds"] == [0, 1] and rec["runs"][0]["commit"] == "abc"
    assert rec["claims"]["x"]["outcome_counts"] == {"reproduced": 2} and rec["claims"]["x"]["agree"] == 2
    assert rec["claims"]["y"]["outcome_counts"] == {"inconclusive": 1, "reproduced": 1}
    assert rec["claims"]["y"]["agree"] == 1 and rec["claims"]["x"]["mean"] == 1.5
    # these runs set only the size: not the documented paper size, and the record says which parameters differ
    assert rec["documented_paper_size"] is False and "T_grid" in rec["differs_in"]
    # the results page: CI-size record beside the paper-size one
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "01_pipeline.json").write_text(json.dumps({"chapter": "01_pipeline", "title": "t", "claims": [
        {"id": k, "document": "d", "claim": "c", "expected": 1, "test": "t", "measured": 1.0, "interval": None,
         "foil": {"name": "f", "measured": 2.0, "passed": False}, "outcome": "reproduced", "agrees": True}
        for k in ("x", "y")]}))
    page = tmp_path / "results.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "results_page.py"), "--results", str(ci), "--out",
                    str(page), "--paper", str(dest)], check=True, capture_output=True)
    text = page.read_text()
    row_x = next(line for line in text.splitlines() if line.startswith("| d | c") and "reproduced x2" in line)
    assert "2 of 2 seeds agree" in row_x and "differs" not in row_x
    row_y = next(line for line in text.splitlines() if line.startswith("| d | c") and "inconclusive x1" in line)
    assert "**differs from CI size**" in row_y
    assert "`y`: reproduced at CI size, inconclusive x1, reproduced x1 at paper size" in text
    assert "**not the documented paper size**: it differs in `T_grid`" in text and "2 seed(s) [0, 1]" in text


def test_replicate_records_beside_the_paper_column(tmp_path):
    out = tmp_path / "sweep"
    for seed in range(3):
        _run(out / "01_pipeline" / f"r{seed}", seed, "custom", {"x": "reproduced"}, [True])
    dest = tmp_path / "replicates"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_records.py"), str(out), "--replicates", "--dest",
                    str(dest), "--note", "SMC sections only"], check=True, capture_output=True)
    rec = json.loads((dest / "01_pipeline.json").read_text())
    assert rec["size"] == "custom" and rec["seeds"] == [0, 1, 2] and rec["note"] == "SMC sections only"
    assert rec["claims"]["x"]["mean"] == 2.0 and rec["claims"]["x"]["agree"] == 3
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "01_pipeline.json").write_text(json.dumps({"chapter": "01_pipeline", "title": "t", "claims": [
        {"id": "x", "document": "d", "claim": "c", "expected": 1, "test": "t", "measured": 1.0, "interval": None,
         "foil": {"name": "f", "measured": 2.0, "passed": False}, "outcome": "reproduced", "agrees": True}]}))
    page = tmp_path / "results.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "results_page.py"), "--results", str(ci), "--out",
                    str(page), "--paper", str(tmp_path / "none"), "--replicates", str(dest)], check=True,
                   capture_output=True)
    text = page.read_text()
    assert "**replicates**: reproduced x3 over 3 seeds (3 agree with the text), measured 2 ± 0.5774" in text
    assert "Replicates: 3 seed(s) [0, 1, 2]" in text and "SMC sections only" in text
