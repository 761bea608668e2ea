"""Every shell and Python example in README.md and docs/ runs against a live farm, as a reader
would paste it: the blocks of one page in order, in one folder holding examples/, with the key
`make up` would have printed in $KEY. A block that cannot run (a synopsis, processes for many
machines) says why on the line before it: `<!-- not run: why -->`.

What the harness changes, and only this: the farm's address (the README's 127.0.0.1:8000 is
the test farm's), the key in the Python examples ("mf_..."), `.venv/bin/modelfarm` (this
checkout's CLI), and `curl -s` fails on an error answer (`--fail-with-body`), so a request
the API refuses (a JSON body without its content type, say) fails the test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FarmProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
SKIP = re.compile(r"<!-- not run[^:]*: (.+?) -->\s*$")
RUNNABLE = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, why it is not run or None) of every shell and Python block."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        language = RUNNABLE.get(match.group(1))
        if language is None:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.match(before)
        found.append((language, match.group(2), skip.group(1) if skip else None))
    return found


def test_every_page_with_examples_is_read_and_few_are_not_run() -> None:
    every = [b for page in PAGES for b in blocks(page)]
    assert len(every) >= 10
    skipped = [why for _, _, why in every if why is not None]
    # Few, and each says why (most name the test that runs the same thing another way).
    assert len(skipped) <= 10 and all(why.strip() for why in skipped), skipped
    readme = blocks(ROOT / "README.md")
    assert [lang for lang, _, why in readme if why is None] == [
        *["sh", "python", "sh"],  # the command line; images: the folders, train, classify
        *["sh", "python", "python"],  # curl, the Python client, the openai client
        *["sh", "python"],  # a chat batch: the command line, the openai client's Batch API
    ]


def test_the_harness_fails_a_refused_request(tmp_path: Path, api_url: str, tenant_key: str) -> None:
    """A check that can fail: `curl -s` alone exits 0 on a 422; as the harness runs it, not.
    (The README's curl before this step: a JSON body without its content type.)"""
    code = (
        'curl -s -H "Authorization: Bearer $KEY" -d \'{"model": "minilm", "input": '
        '{"items": [{"input": "x"}]}}\' http://127.0.0.1:8000/v1/jobs\n'
    )
    env = {**os.environ, "KEY": tenant_key}
    result = _run("sh", code, tmp_path, env, api_url, tenant_key)
    assert result.returncode == 22, result  # curl: the server answered an error status
    assert "Content-Type: application/json" in result.stdout  # the 422 names the header


def _prepare(code: str, api_url: str, key: str) -> str:
    code = code.replace("http://127.0.0.1:8000", api_url)
    code = code.replace('"mf_..."', repr(key))
    return re.sub(r"\bcurl -s ", "curl -sS --fail-with-body ", code)


def _run(
    language: str, code: str, folder: Path, env: dict[str, str], api_url: str, key: str
) -> subprocess.CompletedProcess[str]:
    code = _prepare(code, api_url, key)
    argv = ["bash", "-euo", "pipefail", "-c", code] if language == "sh" else [
        sys.executable, "-c", code
    ]  # fmt: skip
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A reader's folder: examples/ and a .venv/bin/modelfarm that is this checkout's CLI."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    cli = bin_dir / "modelfarm"
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m app.cli "$@"\n')
    cli.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_examples_of_a_page_run(
    page: Path,
    workspace: Path,
    api_url: str,
    tenant_key: str,
    services: dict[str, str],
    cpu_worker: FarmProcess,
) -> None:
    runnable = [(lang, code) for lang, code, why in blocks(page) if why is None]
    if not runnable:
        pytest.skip(f"{page.name} has no example to run")
    env = {
        **os.environ,
        **services,
        "KEY": tenant_key,
        "MODELFARM_API_URL": api_url,
        "MODELFARM_API_KEY": tenant_key,
        "MODELFARM_DATA_DIR": str(workspace / "data"),
        "PYTHONPATH": str(ROOT),
    }
    for number, (language, code) in enumerate(runnable, 1):
        started = time.monotonic()
        result = _run(language, code, workspace, env, api_url, tenant_key)
        print(f"{page.name} example {number}: {time.monotonic() - started:.1f} s")
        assert result.returncode == 0, (
            f"{page.name}, example {number} ({language}):\n{code}\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-3000:]}"
        )
