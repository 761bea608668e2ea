"""The Procfile and docker-compose.yml may only run commands the CLI really has, and keep the
properties that make them work: long-running Procfile lines, compose health checks, restart
policies, volumes and start order (Docker is not needed: the YAML is read as data)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

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


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = [line.split(":", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): shlex.split(command) for name, command in entries}


def procfile_commands() -> list[list[str]]:
    return list(procfile().values())


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def farm_services() -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in compose()["services"].items()
        if s.get("image", "").startswith("modelfarm") or "build" in s
    }


def compose_commands() -> list[list[str]]:
    return [s["command"] for s in farm_services().values()]


def test_procfile_names_cli_commands() -> None:
    commands = procfile_commands()
    assert {c[1] for c in commands} >= {"api", "worker", "sweeper", "flower"}
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


def test_every_procfile_line_runs_as_long_as_the_farm() -> None:
    """honcho stops everything when one line ends: no one-shot line (release, migrate), the
    GPU line idles without a GPU, and the processes that need the schema migrate first."""
    entries = procfile()
    assert "release" not in entries
    assert all(argv[1] != "migrate" for argv in entries.values())
    assert "--idle-without-gpu" in entries["worker-gpu"]
    for name, argv in entries.items():
        if argv[1] in ("api", "worker", "sweeper"):
            assert "--migrate" in argv, name


def test_compose_health_checks_and_start_order() -> None:
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["modelfarm", "migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in farm_services().items():
        if name == "migrate":
            continue
        needs = service["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully", name
        assert needs["redis"]["condition"] == "service_healthy", name
        assert service["restart"] == "unless-stopped", name
    for name in ("postgres", "redis"):
        assert services[name]["restart"] == "unless-stopped"


def test_every_long_running_compose_service_checks_its_health_and_restarts() -> None:
    """Only the one-shot `migrate` goes without: it ends by design. A worker's check pings the
    worker of its own pool in its own container (compose turns `$$` into `$`)."""
    services = compose()["services"]
    for name, service in services.items():
        if name == "migrate":
            continue
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) >= 2, name
        if name in farm_services() and test[0] == "CMD-SHELL":
            argv = shlex.split(test[1].replace("$$", "$"))
            _check(argv)
            command = service["command"]
            if command[1] == "worker":
                pool = command[command.index("--pool") + 1]
                worker = argv[argv.index("--worker") + 1]
                assert worker.startswith(pool) and worker.endswith("@$HOSTNAME"), name


def test_compose_keeps_its_data_in_volumes() -> None:
    document = compose()
    services = document["services"]
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    mounts = {
        name: {m.split(":")[1]: m.split(":")[0] for m in s.get("volumes", [])}
        for name, s in services.items()
    }
    assert mounts["redis"]["/data"] in document["volumes"]  # the append-only file
    assert mounts["postgres"]["/var/lib/postgresql/data"] in document["volumes"]
    assert mounts["api"]["/data"] in document["volumes"]  # artifacts, flower.db


def test_compose_flower_has_a_password_and_the_gpu_pool_a_profile() -> None:
    services = compose()["services"]
    auth = services["flower"]["environment"]["MODELFARM_FLOWER_BASIC_AUTH"]
    assert auth.startswith("${FLOWER_BASIC_AUTH:?")  # compose refuses to start without one
    assert services["worker-gpu"]["profiles"] == ["gpu"]


def test_dockerfile_runs_as_a_user_with_the_cpu_build_of_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "ARG TORCH=torch==2.13.0" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert text.index("${TORCH}") < text.index("pip install --no-cache-dir .")
