"""CI runs what contributors run: `.ci/run` is `make lint` (ruff and mypy), then `make test`
(the whole suite), and the README says so. Read from the files and from `make -n`, which prints
the commands a target would run without running them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _commands(script: Path) -> list[list[str]]:
    lines = [line.strip() for line in script.read_text().splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def test_ci_runs_lint_then_the_whole_suite() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    makes = [c[1:] for c in _commands(script) if c[0] == "make"]
    assert makes == [["lint"], ["test"]]
    assert ["set", "-euo", "pipefail"] in _commands(script)  # a failing step fails CI


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_make_targets_ci_calls_run_ruff_mypy_and_every_test() -> None:
    # The install steps (pip) are printed too, not run: only the tools' lines are read.
    printed = subprocess.run(
        ["make", "-n", "-B", "lint", "test"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    tools = [shlex.split(line) for line in printed if line.startswith(".venv/bin/")]
    assert [".venv/bin/ruff", "check", "."] in tools
    assert [".venv/bin/mypy"] in tools
    # pytest with no path runs `testpaths` (every tier), and nothing deselects a marker.
    # (--durations only reports the slowest tests.)
    assert [".venv/bin/python", "-m", "pytest", "--durations=25"] in tools
    assert not [t for t in tools if "pytest" in t and t[3:] != ["--durations=25"]]
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests"]
    assert "-m" not in shlex.split(options.get("addopts", ""))


def test_the_readme_says_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "`.ci/run`: `make lint` (ruff and mypy), then `make test`" in readme
