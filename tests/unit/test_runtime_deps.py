"""`make up` installs the farm's own dependencies, not the test toolchain, and they are enough:
every third-party module that app/, workers/ and modelfarm_client/ import comes with a
distribution that the runtime requirements (followed through their own requirements, as pip
would) install. Read from pyproject.toml, the installed metadata and `make -n`."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
OWN = {"app", "workers", "modelfarm_client", "migrations"}
TOOLCHAIN = {"pytest", "mypy", "ruff", "playwright", "moto", "schemathesis", "hypothesis"}


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _runtime_closure() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        extras = set(req.extras) or {""}
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = _name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return seen


def _imported_top_levels() -> set[str]:
    found = set()
    for package in ("app", "workers", "modelfarm_client"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - OWN - set(sys.stdlib_module_names)


def test_the_runtime_requirements_cover_every_import_and_no_test_tool() -> None:
    closure = _runtime_closure()
    owners = metadata.packages_distributions()
    missing = {
        module: owners.get(module)
        for module in _imported_top_levels()
        if not {_name(d) for d in owners.get(module, [])} & closure
    }
    assert not missing, f"imported, but not installed by `make up`: {missing}"
    assert not TOOLCHAIN & closure, TOOLCHAIN & closure


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_up_installs_the_runtime_and_make_test_the_toolchain_too() -> None:
    def installs(target: str) -> list[list[str]]:
        printed = subprocess.run(
            ["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        return [shlex.split(line) for line in printed if " pip install " in line]

    up = installs("up")
    assert ["-e", "."] in [argv[-2:] for argv in up]
    assert not [argv for argv in up if any("[dev]" in word for word in argv)]
    assert [argv for argv in installs("test") if argv[-1] == ".[dev]"]
