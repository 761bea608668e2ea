"""Which broker the farm talks to, and what the sweeper may assume of it (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.broker.dispatch import celery_config, live_task_keys, stale_after_seconds
from app.config import Settings


def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    monkeypatch.setenv("MODELFARM_DATA_DIR", str(tmp_path))
    for name in ("MODELFARM_REDIS_URL", "MODELFARM_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(f"MODELFARM_{name}", value)
    return Settings()


def test_redis_stays_the_broker_unless_broker_url_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings(monkeypatch, tmp_path, REDIS_URL="redis://r:6379/0")
    config = celery_config(settings)
    assert config["broker_url"] == "redis://r:6379/0"
    assert config["broker_transport_options"]["visibility_timeout"] == 4200
    assert stale_after_seconds(settings) == 4200  # the scan says what is lost; this is a backstop


def test_rabbitmq_confirms_publishes_and_the_sweeper_goes_by_the_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings(
        monkeypatch,
        tmp_path,
        REDIS_URL="redis://r:6379/0",
        BROKER_URL="amqp://u:p@rabbit:5672/farm",
        BROKER_REDELIVER_SECONDS="20",
    )
    config = celery_config(settings)
    assert config["broker_url"] == "amqp://u:p@rabbit:5672/farm"
    assert config["broker_transport_options"]["confirm_publish"] is True
    assert "visibility_timeout" not in config["broker_transport_options"]
    assert live_task_keys(settings) is None  # never reads Redis lists for an AMQP broker
    assert stale_after_seconds(settings) == 20


def test_no_broker_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="MODELFARM_BROKER_URL"):
        _settings(monkeypatch, tmp_path).require_broker_url()


def test_the_workers_queues_are_durable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.config import get_settings

    _settings(monkeypatch, tmp_path, BROKER_URL="amqp://u:p@rabbit:5672/farm")
    get_settings.cache_clear()
    try:
        from workers.celery_app import create_celery

        queues = create_celery().conf.task_queues
    finally:
        get_settings.cache_clear()
    assert {q.name for q in queues} == {"cpu", "gpu", "webhooks"}
    assert all(q.durable for q in queues)
