"""Real services for the integration and e2e tiers; the unit tier asks for none of these.

PostgreSQL and Redis come from MODELFARM_TEST_DATABASE_URL / MODELFARM_TEST_REDIS_URL when set
(a fresh database is created on that server and dropped afterwards), and otherwise from
throwaway servers started here, so `make test` passes on a machine with nothing running.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from sqlalchemy.orm import Session

from tests.farms import fresh_database
from tests.helpers import FarmProcess, api_process


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI runner's cancel, `kill`, a closed terminal's supervisor) interrupts the
    suite as Ctrl-C does: pytest then tears the fixtures down, so the farm's processes and the
    throwaway PostgreSQL and Redis stop instead of running on as orphans."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    # Once: a second SIGTERM must not cut the teardown short (SIGKILL still ends everything;
    # the farm's children then end too, tests/helpers.py `die_with_parent`).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment that points this process and every child at one test farm."""
    with ExitStack() as stack:
        db_url = os.environ.get("MODELFARM_TEST_DATABASE_URL")
        redis_url = os.environ.get("MODELFARM_TEST_REDIS_URL")
        if not db_url or not redis_url:
            from app.local.embedded import throwaway_servers

            embedded_db, embedded_redis = stack.enter_context(throwaway_servers())
            db_url = db_url or embedded_db
            redis_url = redis_url or embedded_redis
        db_url = fresh_database(db_url, stack, prefix="modelfarm_test")
        data_dir = tmp_path_factory.mktemp("data")
        env = {
            "MODELFARM_DATABASE_URL": db_url,
            "MODELFARM_REDIS_URL": redis_url,
            "MODELFARM_DATA_DIR": str(data_dir),
            "MODELFARM_PRELOAD_MODELS": "minilm",
            "MODELFARM_CHUNK_ITEMS": "64",
            "MODELFARM_SHARD_ITEMS": "200",
            "MODELFARM_IMAGE_SHARD_ITEMS": "100",  # images come in smaller shards than text
            # Uploaded models are unpacked by the worker: a small cap keeps the bombs that
            # test_security sends cheap (the tiny test models are far below it).
            "MODELFARM_MODEL_MAX_UNPACKED_BYTES": str(32 * 1024 * 1024),
            # The receivers of the webhook tests listen on 127.0.0.1 (and only there).
            "MODELFARM_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "MODELFARM_WEBHOOK_RETRY_SCHEDULE": "0.5,0.5,1,1,2,2",
            "MODELFARM_WEBHOOK_TIMEOUT_SECONDS": "3",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        _reset_caches()
        from app.local.migrate import upgrade

        upgrade()
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _reset_caches()


def _reset_caches() -> None:
    from app import db
    from app.broker.dispatch import producer
    from app.config import get_settings
    from app.storage import get_store

    get_settings.cache_clear()
    get_store.cache_clear()
    producer.cache_clear()
    db.reset_engine()


@pytest.fixture(scope="session")
def api_url(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_process(services, tmp_path_factory.mktemp("logs") / "api.log") as url:
        yield url


@contextmanager
def _farm_process(
    args: list[str], env: dict[str, str], logs: pytest.TempPathFactory, ready: str
) -> Iterator[FarmProcess]:
    """A `modelfarm` command as a child process, yielded once its log says `ready`."""
    proc = FarmProcess.start(args, env, logs.mktemp("logs") / f"{'-'.join(args)}.log")
    try:
        proc.wait_for_log(ready)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def cpu_worker(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FarmProcess]:
    with _farm_process(["worker", "--pool", "cpu"], services, tmp_path_factory, "ready.") as p:
        yield p


@pytest.fixture(scope="session")
def sweeper(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FarmProcess]:
    env = {**services, "MODELFARM_SWEEP_INTERVAL_SECONDS": "0.5"}
    with _farm_process(["sweeper"], env, tmp_path_factory, "sweeper started") as p:
        yield p


@pytest.fixture(scope="session")
def webhook_worker(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FarmProcess]:
    args = ["worker", "--pool", "webhooks"]
    with _farm_process(args, services, tmp_path_factory, "ready.") as p:
        yield p


@pytest.fixture(scope="module")
def gpu_worker(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FarmProcess]:
    """The GPU pool's own code path, run on the CPU through the device override."""
    env = {**services, "MODELFARM_DEVICE_OVERRIDE": "cpu", "MODELFARM_GPU_COUNT": "1"}
    with _farm_process(["worker", "--pool", "gpu"], env, tmp_path_factory, "ready.") as p:
        yield p


@pytest.fixture
def session(services: dict[str, str]) -> Iterator[Session]:
    """A session on the test database whose work is rolled back at the end: rows a test writes
    (on a queue of its own, say) are never seen by another test."""
    from app.db import get_sessionmaker

    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@pytest.fixture
def tenant_key(services: dict[str, str]) -> str:
    """A fresh tenant per test: tests never see each other's files, models or jobs."""
    from app.services.tenants import create_api_key, get_or_create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        return create_api_key(session, get_or_create_tenant(session, f"t-{secrets.token_hex(6)}"))


@pytest.fixture
def client(api_url: str, tenant_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {tenant_key}"}, timeout=60
    ) as c:
        yield c


@pytest.fixture
def other_client(api_url: str, services: dict[str, str]) -> Iterator[httpx.Client]:
    from app.services.tenants import create_api_key, get_or_create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        key = create_api_key(session, get_or_create_tenant(session, f"o-{secrets.token_hex(6)}"))
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as c:
        yield c
