"""The CLI's expected failures, without any farm: a line or two on stderr, an exit code, no
traceback. Each case runs `python -m app.cli` as a user would, in a directory of its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def modelfarm(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELFARM_")}
    # A port where nothing listens, unless a case says otherwise: never someone's real farm.
    clean["MODELFARM_API_PORT"] = str(_closed_port())
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**clean, "MODELFARM_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=data_dir.parent,
    )


def assert_short_failure(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_no_farm_is_one_line_and_exit_3(data_dir: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    for args in (["status", "job_x"], ["jobs", "list", "--json"], ["models", "list"]):
        result = modelfarm(args, data_dir, MODELFARM_API_URL=url, MODELFARM_API_KEY="mf_x")
        assert_short_failure(result, 3, "cannot reach the farm", url)


def test_the_url_and_key_of_farm_json_are_used_when_none_is_set(data_dir: Path) -> None:
    """`modelfarm up` on a non-default port: another shell with the same DATA_DIR goes there."""
    port = _closed_port()
    data_dir.mkdir()
    state = {"api_url": f"http://127.0.0.1:{port}", "api_key": "mf_from_state"}
    (data_dir / "farm.json").write_text(json.dumps(state))
    assert_short_failure(modelfarm(["status", "job_x"], data_dir), 3, f"127.0.0.1:{port}")


def test_no_key_is_a_usage_error(data_dir: Path) -> None:
    assert_short_failure(modelfarm(["jobs", "list"], data_dir), 2, "no API key")


def test_a_missing_file_is_named(data_dir: Path) -> None:
    for args in (
        ["submit", "nowhere.jsonl", "--model", "minilm"],
        ["models", "register", "nowhere.skops", "--name", "m", "--framework", "sklearn"],
    ):
        result = modelfarm(args, data_dir, MODELFARM_API_KEY="mf_x")
        assert_short_failure(result, 2, "nowhere.", "does not exist")
    result = modelfarm(["results", "job_x", "-o", "nowhere/out.jsonl"], data_dir)
    assert_short_failure(result, 2, "no such directory: nowhere")


def test_bad_arguments_are_usage_errors(data_dir: Path) -> None:
    assert_short_failure(modelfarm(["jobs", "list", "--bogus"], data_dir), 2, "--bogus")
    assert_short_failure(modelfarm(["submit", "x.jsonl"], data_dir), 2)
    assert_short_failure(modelfarm(["jobs", "list", "--limit", "0"], data_dir), 2, "--limit")
    assert_short_failure(modelfarm(["worker", "--pool", "tpu"], data_dir), 2, "pool")


def test_server_commands_without_a_database_say_so(data_dir: Path) -> None:
    for args in (["keys", "create"], ["migrate"], ["api"]):
        assert_short_failure(modelfarm(args, data_dir), 2, "MODELFARM_DATABASE_URL")


def test_an_unreachable_database_is_exit_3(data_dir: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{_closed_port()}/none?connect_timeout=2"
    result = modelfarm(["keys", "create"], data_dir, MODELFARM_DATABASE_URL=url)
    assert_short_failure(result, 3, "cannot reach PostgreSQL")


def test_a_bad_setting_is_named(data_dir: Path) -> None:
    result = modelfarm(["status", "job_x"], data_dir, MODELFARM_API_PORT="eighty")
    assert_short_failure(result, 2, "MODELFARM_API_PORT")


def test_the_client_commands_import_nothing_of_the_server_side() -> None:
    """`modelfarm status` answers in a fraction of a second: the CLI module loads no database,
    broker or model library until a server command asks for one."""
    probe = "import json, sys, app.cli; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    heavy = {"sqlalchemy", "psycopg", "celery", "kombu", "torch", "transformers", "fastapi"}
    assert {m.split(".")[0] for m in json.loads(result.stdout)} & heavy == set()
