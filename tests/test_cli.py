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
