import json

import pytest

from diffnotes import cli


def test_list_params_reads_the_parameters_cell(capsys):
    assert cli.main(["run", "01_pipeline", "--list-params"]) == 0
    out = capsys.readouterr().out
    assert "T_grid" in out and "list" in out and "seed" in out


def test_parameters_are_checked_before_execution(capsys):
    path = cli.resolve_notebook("01_pipeline")
    p = cli.build_parameters(path, "smoke", [("seed", "3"), ("T_grid", "[10, 20, 40]")])
    assert p["seed"] == 3 and p["T_grid"] == [10, 20, 40] and p["d"] == 4      # d from the smoke file
    with pytest.raises(ValueError, match="unknown parameter 'sed'"):
        cli.build_parameters(path, "ci", [("sed", "3")])
    with pytest.raises(ValueError, match="parameter 'seed' must be of type int"):
        cli.build_parameters(path, "ci", [("seed", "three")])
    with pytest.raises(ValueError, match=r"parameter 'T_grid\[1\]' must be of type int"):
        cli.build_parameters(path, "ci", [("T_grid", "[10, x]")])
    assert cli.main(["run", "01_pipeline", "-p", "nope", "1"]) == 2
    assert "unknown parameter" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not found"):
        cli.resolve_notebook("99_nothing")


# ---- the rerun command (issue 18): where runs land, one folder per run, an unusable --out, the notebook's checks
def _fake_run(calls):
    def run(path, params, folder):
        calls.append((path, params, folder))
        (folder / "marker").write_text("a run")
        return 0
    return run


def test_relative_out_is_resolved_against_the_invocation_directory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "run", _fake_run(calls))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "01_pipeline", "--size", "smoke", "--out", "rel", "--name", "first"]) == 0
    folder = calls[0][2]
    assert folder.is_absolute() and folder == tmp_path / "rel" / "01_pipeline" / "first"


def test_each_run_gets_its_own_folder_and_a_used_one_is_refused(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "run", _fake_run(calls))
    args = ["run", "01_pipeline", "--size", "smoke", "--out", str(tmp_path)]
    assert cli.main(args) == 0 and cli.main(args) == 0              # two timestamped folders, never the same
    assert calls[0][2] != calls[1][2] and calls[0][2].parent == calls[1][2].parent == tmp_path / "01_pipeline"
    assert cli.main(args + ["--name", "x"]) == 0
    (tmp_path / "01_pipeline" / "x" / "stale.png").write_text("old")
    assert cli.main(args + ["--name", "x"]) == 2                     # a non-empty folder: refused, untouched
    assert "already holds a run" in capsys.readouterr().err and len(calls) == 3
    assert (tmp_path / "01_pipeline" / "x" / "stale.png").exists()
    assert cli.main(args + ["--name", "x", "--force"]) == 0          # replaced: no old file left beside the new
    assert sorted(p.name for p in (tmp_path / "01_pipeline" / "x").iterdir()) == ["marker"]


def test_unusable_out_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "run", _fake_run(calls))
    f = tmp_path / "a_file"
    f.write_text("")
    for out in (f, f / "below"):
        assert cli.main(["run", "01_pipeline", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out:") and "is a file" in err and err.count("\n") == 1
    assert not calls


@pytest.mark.parametrize("name, value, message", [
    ("d", "-4", r"parameter 'd' must be >= 1"),
    ("T_grid", "[]", r"parameter 'T_grid' must be a non-empty list"),
    ("T_grid", "[10, 20, 40]", r"at least 3 values >= 200"),          # the notebook's own `if ...: raise`
    ("device", "tpu", r"device"),
])
def test_values_the_notebook_rejects_fail_before_execution(name, value, message, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "run", _fake_run(calls))
    assert cli.main(["run", "01_pipeline", "-p", name, value]) == 2
    assert not calls
    import re
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("stem", sorted(p.stem for p in cli.NOTEBOOKS.glob("*.md")))
def test_the_notebook_checks_accept_every_documented_size(stem):
    path = cli.resolve_notebook(stem)
    assert cli.check_statements(path), f"{stem}: no parameter checks found after the parameters cell"
    for size in ("smoke", "ci", "paper"):
        cli.check_values(path, cli.build_parameters(path, size, []))


def test_size_is_passed_and_custom_when_other_parameters_change():
    path = cli.resolve_notebook("01_pipeline")
    assert cli.build_parameters(path, "smoke", [("seed", "2")])["size"] == "smoke"
    assert cli.build_parameters(path, "ci", [])["size"] == "ci"
    assert cli.build_parameters(path, "smoke", [("d", "5")])["size"] == "custom"
    assert cli.build_parameters(path, "smoke", [("d", "5"), ("size", "smoke")])["size"] == "smoke"


def test_a_real_run_lands_where_it_says_with_cell_timing(tmp_path, monkeypatch, capfd):
    """End to end at smoke size: the verdict records are in the printed folder (not under notebooks/), each
    code cell's time is printed as it ends, and the kernel ran non-strict at the run's size."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "01_pipeline", "--size", "smoke", "-p", "seed", "1", "--name", "r"]) == 0
    out, err = capfd.readouterr()
    folder = tmp_path / "runs" / "01_pipeline" / "r"
    assert f"verdicts: {folder / 'results'}" in out
    rec = json.loads((folder / "results" / "01_pipeline.json").read_text())
    assert {c["size"] for c in rec["claims"]} == {"smoke"}
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "ok" and run["wall_s"] > 0 and run["host"] and run["figures"] >= 1
    assert (folder / "01_pipeline.out.ipynb").is_file() and not list(cli.NOTEBOOKS.rglob("runs"))
    assert "cell  1/" in err and " s  import" in err


@pytest.mark.parametrize("stem", sorted(p.stem for p in cli.NOTEBOOKS.glob("*.md")))
def test_papermill_sees_every_parameter(stem, caplog):
    """papermill's own inspector (`papermill --help-notebook`, and its "Passed unknown parameter" warning) parses
    the parameters cell line by line and gives up on a line with more than one '=': every parameter must be
    visible to it, or a papermill user gets a false warning for a real parameter."""
    import logging

    import jupytext
    from papermill.translators import PythonTranslator

    path = cli.NOTEBOOKS / f"{stem}.md"
    cell = next(c for c in jupytext.read(path).cells if "parameters" in c.metadata.get("tags", []))
    with caplog.at_level(logging.WARNING, logger="papermill"):
        seen = {p.name for p in PythonTranslator.inspect(cell)}
    assert seen == set(cli.read_parameters(path)), set(cli.read_parameters(path)) ^ seen
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]


def test_kernels_keep_freed_blocks_instead_of_page_faulting():
    """RUN_ENV's glibc settings: chapter 02's grid-law loop (600 x 600 kernels a step) page-faults about once per
    4 KiB of every step's temporaries without them (freed blocks unmapped or trimmed, then mapped and zero-filled
    again) and hardly at all with them."""
    import os
    import subprocess
    import sys

    code = ("import resource, torch\n"
            "from diffnotes import convergence as C, schedules as sc\n"
            "from diffnotes.targets import GaussianMixture\n"
            "mix = GaussianMixture(torch.tensor([0.6, 0.4]), torch.tensor([[-1.0], [1.5]]),\n"
            "                      torch.tensor([[[0.15]], [[0.05]]]))\n"
            "xs = torch.linspace(-7, 7, 600, dtype=torch.float64)\n"
            "C.stochastic_mixture_errors('ddpm', mix, sc.theory(20, 1.0, 6.0), xs)\n"
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "C.stochastic_mixture_errors('ddpm', mix, sc.theory(200, 1.0, 6.0), xs)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)\n")

    def faults(extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "1", **extra},
                             capture_output=True, text=True, check=True, cwd=cli.ROOT)
        return int(out.stdout)

    plain, kept = faults({}), faults(cli.MALLOC_ENV)
    assert plain > 200 * 100, plain              # hundreds of faults per step
    assert kept < 0.1 * plain, (plain, kept)
    assert all(cli.RUN_ENV[k] == v for k, v in cli.MALLOC_ENV.items())


@pytest.mark.parametrize("stem", sorted(p.stem for p in cli.NOTEBOOKS.glob("*.md")))
def test_one_code_cell_language_per_notebook(stem):
    """jupytext warns (and the kernel's language becomes ambiguous) when a MyST notebook mixes `{code-cell} python`
    and `{code-cell} ipython3`."""
    import re
    langs = set(re.findall(r"^```\{code-cell\}\s*(\S*)", (cli.NOTEBOOKS / f"{stem}.md").read_text(), re.M))
    assert len(langs) == 1, langs
