from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import Settings
from app.db import sqlalchemy_url
from app.ids import new_id
from tests.helpers import wait_until


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELFARM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MODELFARM_API_PORT", "9001")
    monkeypatch.setenv("MODELFARM_DATABASE_URL", "postgresql://db/x")
    settings = Settings()
    assert settings.api_port == 9001
    assert settings.client_api_url == "http://127.0.0.1:9001"
    assert settings.database_url == "postgresql://db/x"


def test_state_file_fills_unset_urls_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELFARM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MODELFARM_DATABASE_URL", raising=False)
    monkeypatch.setenv("MODELFARM_REDIS_URL", "redis://explicit/0")
    Settings().write_state(
        {
            "database_url": "postgresql://embedded/x",
            "redis_url": "redis://embedded/0",
            "api_key": "mf_k",
        }
    )
    assert (tmp_path / "farm.json").stat().st_mode & 0o777 == 0o600
    settings = Settings()
    assert settings.database_url == "postgresql://embedded/x"
    assert settings.redis_url == "redis://explicit/0"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "mf_k"


def test_missing_urls_say_how_to_fix_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELFARM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MODELFARM_DATABASE_URL", raising=False)
    with pytest.raises(RuntimeError, match="MODELFARM_DATABASE_URL"):
        Settings().require_database_url()


def test_production_refuses_the_placeholder_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFARM_ENVIRONMENT", "production")
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Settings()
    monkeypatch.setenv("MODELFARM_SECRET_KEY", "a-real-secret")
    assert Settings().environment == "production"


def test_threads_share_the_cores() -> None:
    assert Settings(worker_concurrency=2).torch_threads(cores=8) == 4
    assert Settings(worker_concurrency=4).torch_threads(cores=2) == 1
    assert Settings(worker_threads=3).torch_threads(cores=2) == 3


def test_a_pinned_worker_counts_only_its_own_cores() -> None:
    """taskset (or a cpuset) gives the process fewer cores than the machine has."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        assert Settings(worker_concurrency=1).torch_threads() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert Settings(worker_concurrency=1).torch_threads() == len(allowed)


def test_sqlalchemy_url_picks_psycopg() -> None:
    assert sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_ids_are_prefixed_unique_and_time_ordered() -> None:
    ids = [new_id("job") for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(i.startswith("job_") and len(i) == 30 for i in ids)
    first, later = ids[0], new_id("job")
    import time

    now = time.time_ns() // 1_000_000  # the next millisecond, waited for on the clock itself
    wait_until(lambda: time.time_ns() // 1_000_000 > now, "the clock moved on", 1, every=0)
    assert new_id("job") > first and later > first


def test_the_broker_holds_a_task_longer_than_it_may_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A message comes back from the broker after the visibility timeout: if that were shorter
    than the hard time limit, a task still running would be handed to a second worker."""
    monkeypatch.setenv("MODELFARM_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.visibility_timeout_seconds >= settings.task_time_limit + 60
    assert settings.task_soft_time_limit < settings.task_time_limit
    monkeypatch.setenv("MODELFARM_TASK_TIME_LIMIT", str(settings.visibility_timeout_seconds))
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        Settings()


def test_the_fastapi_floor_has_the_features_used() -> None:
    """`Depends(..., scope="function")` (app/api/deps.py) came in FastAPI 0.121."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.match(r"fastapi>=([\d.]+)", d) for d in deps if d.startswith("fastapi"))
    assert floor is not None
    assert tuple(int(p) for p in floor.group(1).split(".")) >= (0, 121)


def test_the_restart_backoff_starts_at_one_second_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MODELFARM_RESTART_SECONDS", raising=False)
    assert Settings().restart_seconds == 1.0
    monkeypatch.setenv("MODELFARM_RESTART_SECONDS", "0.25")
    assert Settings().restart_seconds == 0.25
    monkeypatch.setenv("MODELFARM_RESTART_SECONDS", "0")
    with pytest.raises(ValueError, match="restart_seconds"):
        Settings()
