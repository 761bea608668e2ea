"""The pure parts of tenant limits: Retry-After rounding, bursts, the CLI's values, usage
parameters, and failing open when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import date, timedelta

import pytest
import typer

from app import ratelimit
from app.cli.tenants import limits_given, parse_bytes, parse_duration, parse_number
from app.config import get_settings
from app.services.errors import InvalidRequest
from app.services.usage import date_range, parse_group_by


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert ratelimit.retry_after_seconds(0) == 1
    assert ratelimit.retry_after_seconds(1) == 1
    assert ratelimit.retry_after_seconds(1000) == 1
    assert ratelimit.retry_after_seconds(1001) == 2
    assert ratelimit.retry_after_seconds(9500) == 10


def test_the_burst_defaults_to_one_second_of_requests() -> None:
    assert ratelimit.burst_of(5.0, None) == 5
    assert ratelimit.burst_of(2.5, None) == 3
    assert ratelimit.burst_of(0.1, None) == 1
    assert ratelimit.burst_of(5.0, 20) == 20


def test_durations() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("90s") == parse_duration("90") == timedelta(seconds=90)
    for bad in ("", "soon", "-1d", "0s", "3w"):
        with pytest.raises(typer.BadParameter):
            parse_duration(bad)


def test_limit_values_and_none() -> None:
    assert parse_number("2.5", integer=False) == 2.5
    assert parse_number("10", integer=True) == 10
    assert parse_number("none", integer=True) is None
    assert parse_bytes("10GiB") == 10 * 1024**3
    assert parse_bytes("512M") == 512 * 1024**2
    assert parse_bytes("1000") == 1000
    assert parse_bytes("None") is None
    for bad in ("2.5", "-1", "many"):
        with pytest.raises(typer.BadParameter):
            parse_number(bad, integer=True)
    with pytest.raises(typer.BadParameter):
        parse_number("nan", integer=False)
    with pytest.raises(typer.BadParameter):
        parse_bytes("10 GB please")


def test_only_the_limits_given_change() -> None:
    assert limits_given(None, None, None, None, None) == {}
    assert limits_given("none", "5", None, "3", "1KiB") == {
        "rate_limit": None,
        "rate_burst": 5,
        "max_running_jobs": 3,
        "max_storage_bytes": 1024,
    }
    with pytest.raises(typer.BadParameter):
        limits_given("0", None, None, None, None)


def test_usage_groups_and_dates() -> None:
    assert parse_group_by(None) == ["day"]
    assert parse_group_by("model, job_type,model") == ["model", "job_type"]
    for bad in ("week", ",", "day,tenant"):
        with pytest.raises(InvalidRequest):
            parse_group_by(bad)
    assert date_range(date(2026, 1, 1), date(2026, 1, 31)) == (date(2026, 1, 1), date(2026, 1, 31))
    start, end = date_range(None, date(2026, 3, 30))
    assert (end - start).days == 29
    with pytest.raises(InvalidRequest):
        date_range(date(2026, 2, 1), date(2026, 1, 1))


def test_without_redis_each_process_limits_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never fail open (issue 25): with Redis away the bucket is kept in this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MODELFARM_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setattr(ratelimit, "_down_until", 0.0)
    monkeypatch.setattr(ratelimit, "_here", {})
    get_settings.cache_clear()
    try:
        assert ratelimit.mode() == "redis"
        decision = asyncio.run(ratelimit.take("ten_x", 1.0, 1))
        assert decision == ratelimit.OPEN  # the burst's one token
        assert ratelimit.mode() == "in-process"
        # Redis is left alone for a while: the next requests cost no connection attempt, and
        # the tenant's bucket, empty now, refuses.
        started = time.monotonic()
        refused = asyncio.run(ratelimit.take("ten_x", 1.0, 1))
        assert time.monotonic() - started < 0.05
        assert not refused.allowed and refused.retry_after == 1
        assert asyncio.run(ratelimit.take("ten_y", 1.0, 1)).allowed  # another tenant's own
        assert asyncio.run(ratelimit.take("ten_x", None, None)) == ratelimit.OPEN  # no limit
        assert ratelimit.bump_generation() is False
        monkeypatch.setenv("MODELFARM_REDIS_URL", "amqp://guest@127.0.0.1//")
        monkeypatch.setattr(ratelimit, "_down_until", 0.0)
        get_settings.cache_clear()
        assert not asyncio.run(ratelimit.take("ten_x", 1.0, 1)).allowed
        assert ratelimit.mode() == "in-process"
    finally:
        get_settings.cache_clear()
