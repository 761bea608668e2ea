"""The image's Python part, built from exactly what the Dockerfile copies: the wheel is made
from a folder holding only those paths, installed in a fresh virtualenv, and its `modelfarm`
entry point must start. The third-party packages come from this test's own interpreter
(PYTHONPATH, where `.pth` files, and so this checkout's editable install, are not read): the
image installs the same ones from the index. Where a Docker daemon answers, the image is built
and its command run too."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def copied_paths() -> list[str]:
    """The sources the Dockerfile's COPY lines take from the checkout, up to the install."""
    paths: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = shlex.split(line)
        if words[:1] == ["COPY"]:
            assert not [w for w in words[1:] if w.startswith("--from")], line
            paths.extend(words[1:-1])
        if words[:3] == ["RUN", "pip", "install"] and "." in words:
            return paths
    raise AssertionError("the Dockerfile never installs the project (pip install .)")


def test_the_dockerfile_copies_what_it_installs() -> None:
    paths = copied_paths()
    assert {"pyproject.toml", "README.md", "app", "workers", "migrations"} <= set(paths)
    assert "modelfarm_client" in paths  # app.client re-exports it; the CLI imports it


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel built from the Dockerfile's copies only."""
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    context.mkdir()
    for name in copied_paths():
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(source, context / name)
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(context)],
        check=True, timeout=300,
    )  # fmt: skip
    target = base / "venv"
    venv.create(target, with_pip=False)
    (wheel,) = wheels.glob("modelfarm-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
         "--no-deps", "-q", str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    return target


def _run(target: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MODELFARM_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    env["PATH"] = f"{target / 'bin'}{os.pathsep}/usr/bin:/bin"
    return subprocess.run(
        list(argv), cwd=target, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_wheel_of_the_dockerfiles_copies_runs_its_commands(installed: Path) -> None:
    entry = installed / "bin" / "modelfarm"
    assert entry.exists()
    where = _run(installed, "python", "-c", "import app, modelfarm_client; print(app.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(installed)), where.stdout  # not this checkout
    for argv in (["--help"], ["migrate", "--help"], ["api", "--help"], ["submit", "--help"]):
        result = _run(installed, str(entry), *argv)
        assert result.returncode == 0, f"{argv}: {result.stderr[-2000:]}"
        assert "Usage" in result.stdout
    # The migrations ship as package data: alembic finds its script folder in the wheel.
    found = _run(
        installed, "python", "-c",
        "from alembic.script import ScriptDirectory; from app.local.migrate import alembic_config; "
        "print(ScriptDirectory.from_config(alembic_config()).dir)",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr[-2000:]
    scripts = Path(found.stdout.strip())
    assert scripts.is_relative_to(installed) and (scripts / "env.py").is_file(), found.stdout


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        answer = subprocess.run(["docker", "version"], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return answer.returncode == 0


@pytest.mark.skipif(not _docker_answers(), reason="no Docker daemon answers here")
def test_the_image_builds_and_runs_its_commands() -> None:
    subprocess.run(["docker", "build", "-t", "modelfarm:test", str(ROOT)], check=True, timeout=1800)
    for argv in (["modelfarm", "--help"], ["modelfarm", "migrate", "--help"]):
        result = subprocess.run(
            ["docker", "run", "--rm", "modelfarm:test", *argv], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-2000:]
    user = subprocess.run(
        ["docker", "run", "--rm", "modelfarm:test", "id", "-u"], capture_output=True, text=True
    )
    assert user.stdout.strip() not in ("", "0")
