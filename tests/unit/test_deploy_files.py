"""The Procfile and docker-compose.yml may only run commands the CLI really has."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from app.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def _check(argv: list[str]) -> None:
    """Parse the command line as the CLI would, stopping at --help instead of running it."""
    assert argv[0] == "modelfarm", argv
    result = CliRunner().invoke(cli, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{argv}: {result.output}"


def procfile_commands() -> list[list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return [shlex.split(line.split(":", 1)[1]) for line in lines if line.strip()]


def compose_commands() -> list[list[str]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return [
        s["command"]
        for s in compose["services"].values()
        if s.get("image", "").startswith("modelfarm") or "build" in s
    ]


def test_procfile_names_cli_commands() -> None:
    commands = procfile_commands()
    assert {c[1] for c in commands} >= {"api", "worker", "flower", "migrate"}
    for argv in commands:
        _check(argv)


def test_compose_runs_the_same_cli_commands() -> None:
    commands = compose_commands()
    assert len(commands) >= 5
    for argv in commands:
        _check(argv)


def test_check_catches_an_unknown_command() -> None:
    with pytest.raises(AssertionError):
        _check(["modelfarm", "serve-everything"])
    with pytest.raises(AssertionError):
        _check(["modelfarm", "worker", "--pool", "cpu", "--turbo"])
