"""Every command: bad arguments give one line ``error: ...`` on stderr and exit code 2, never a traceback."""

import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hf_recperc.commands import run_command

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (
    "pca_classification",
    "pca_figure",
    "alignment",
    "compare_runs",
    "push_to_hub",
    "push_metric",
    "pretrain",
)


# (script, argv with {tmp} for a fresh directory, text the error line must contain): an unknown flag, an
# invalid value or a missing file, for each script (each case starts a Python with torch: keep them few).
BAD_ARGUMENTS = [
    ("pca_classification", ["--output_dir", "{tmp}", "--epoch", "3"], "'--epoch'; did you mean '--epochs'"),
    ("pca_classification", ["--output_dir", "{tmp}", "--subspaces", "top:1.5"], "subspace 'top:1.5'"),
    ("pca_figure", ["--subspaces", "top:0.5", "bogus:1"], "subspace 'bogus:1'"),
    ("pca_figure", ["--num_images", "0"], "num_images"),
    ("pca_figure", ["--config", "{tmp}/missing.json"], "config: file"),
    ("alignment", ["--corruptions", "none", "blur:1"], "corruption 'blur:1'"),
    ("alignment", ["--tol", "small"], "argument --tol: invalid float value"),
    ("compare_runs", ["{tmp}/no_such_run"], "no_such_run"),
    ("compare_runs", ["{tmp}", "--titel", "x"], "unknown argument '--titel'"),
    ("push_to_hub", ["{tmp}/half"], "--hub_model_id"),
    ("push_to_hub", ["{tmp}/nowhere", "--hub_model_id", "someone/x"], "output_dir"),
]


@pytest.mark.parametrize("script, argv, expected", BAD_ARGUMENTS)
def test_script_bad_arguments_exit_2_with_one_error_line(script, argv, expected, tmp_path):
    (tmp_path / "half").mkdir()  # a directory that is not a finished run
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RECPERC_TRACEBACK", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{script}.py"), *argv],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    last_line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert done.returncode == 2, done.stderr
    assert last_line.startswith("error:") and expected in last_line, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["half"]  # nothing written


def test_run_command_exit_codes(capsys, monkeypatch):
    def bad(argv):
        raise ValueError("lr: expected a finite number > 0,\n got -1")

    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    assert run_command(bad, []) == 2
    assert capsys.readouterr().err == "error: lr: expected a finite number > 0, got -1\n"
    assert run_command(lambda argv: ["records"], []) == 0
    assert run_command(lambda argv: 1, []) == 1  # a command's own failure code passes through
    with pytest.raises(RuntimeError):  # not a usage error: the traceback is kept
        run_command(lambda argv: (_ for _ in ()).throw(RuntimeError("bug")), [])
    monkeypatch.setenv("RECPERC_TRACEBACK", "1")
    with pytest.raises(ValueError):
        run_command(bad, [])


def test_console_entry_points_name_the_commands():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in COMMANDS:
        assert scripts[f"recperc-{name.replace('_', '-')}"] == f"hf_recperc.commands.{name}:main"
        assert callable(importlib.import_module(f"hf_recperc.commands.{name}").main)
    # Written by the trainer and report work; declared here so that one pyproject lists every command.
    assert scripts["recperc-pretrain"] == "hf_recperc.commands.pretrain:main"
    assert scripts["recperc-report"] == "hf_recperc.commands.report:main"


@pytest.mark.parametrize("name", COMMANDS)
def test_scripts_are_thin(name):
    # The body lives in the package: the script only imports the command's main and exits with its code.
    text = (REPO / "scripts" / f"{name}.py").read_text()
    assert f"from hf_recperc.commands.{name} import main" in text and "sys.exit(main())" in text
    assert (
        len([line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]) < 20
    )
