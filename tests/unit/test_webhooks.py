"""The pieces of webhook delivery that need no services: the guard, signing, retry timing."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks import Webhook

from app.config import Settings
from app.services.webhooks import next_delay, sign
from app.urlguard import Allowlist, RefusedURL, check_url, why_refused
from workers.tasks.webhooks import retry_after


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("100.64.0.1", "non-global"),
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 around 169.254.169.254
        ("fec0::1", "site-local"),
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert why_refused(ipaddress.ip_address(address)) == kind


def test_allowlist_by_network_and_by_name() -> None:
    nothing = Allowlist.parse("")
    with pytest.raises(RefusedURL, match="loopback"):
        check_url("http://127.0.0.1:8080/x", nothing)
    checked = check_url("http://127.0.0.1:8080/x", Allowlist.parse("127.0.0.0/8"))
    assert checked.addresses == ("127.0.0.1",) and checked.port == 8080
    with pytest.raises(RefusedURL, match="127.0.0.2"):
        check_url("http://127.0.0.2/x", Allowlist.parse("127.0.0.1"))  # one address, not /8
    assert check_url("https://LOCALHOST/x", Allowlist.parse("localhost")).port == 443
    with pytest.raises(RefusedURL, match="http or https"):
        check_url("gopher://127.0.0.1/", Allowlist.parse("127.0.0.1"))
    with pytest.raises(RefusedURL, match="credentials"):
        check_url("http://user:pw@127.0.0.1/", Allowlist.parse("127.0.0.1"))


def test_signature_verifies_with_standardwebhooks_for_each_secret() -> None:
    old, new = "whsec_" + "a" * 43 + "=", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"type":"job.succeeded","data":{"id":"job_1"}}'
    now = datetime.now(UTC)
    headers = sign([new, old], "msg_1", now, body)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers)["data"]["id"] == "job_1"
    with pytest.raises(Exception, match="signature"):
        Webhook(new).verify(body.replace("job_1", "job_2"), headers)


def test_retry_delays_follow_the_schedule_with_jitter() -> None:
    schedule = [5.0, 300.0, 1800.0]
    for attempt, base in enumerate(schedule, start=1):
        delays = {next_delay(attempt, schedule, None) for _ in range(50)}
        assert all(0.9 * base <= d <= 1.1 * base for d in delays)
        assert len(delays) > 1  # jittered, so receivers are not hit in lockstep
    assert next_delay(1, schedule, retry_after=42) == 42  # the receiver's word wins
    assert next_delay(1, schedule, retry_after=10**9) == 24 * 3600


def test_retry_after_header_forms() -> None:
    assert retry_after("120") == 120
    assert retry_after(None) is None and retry_after("soon") is None
    later = datetime.now(UTC) + timedelta(seconds=90)
    assert 80 <= (retry_after(format_datetime(later, usegmt=True)) or 0) <= 91


def test_schedule_setting_is_checked() -> None:
    assert Settings(webhook_retry_schedule="5, 300").retry_delays() == [5.0, 300.0]
    assert Settings(webhook_retry_schedule="").retry_delays() == []
    # The Standard Webhooks schedule: 8 attempts, the last 27 h 35 min 5 s after the first.
    # (The default is passed explicitly: the test farm's environment sets a short one.)
    default = Settings.model_fields["webhook_retry_schedule"].default
    delays = Settings(webhook_retry_schedule=default).retry_delays()
    assert len(delays) == 7 and sum(delays) == 27 * 3600 + 35 * 60 + 5
    with pytest.raises(ValueError, match="WEBHOOK_RETRY_SCHEDULE"):
        Settings(webhook_retry_schedule="5,soon")


@pytest.mark.parametrize("port", [0, 65536])
def test_a_webhook_port_that_is_no_port_is_refused(port: int) -> None:
    from app.urlguard import Allowlist, RefusedURL, check_url

    with pytest.raises(RefusedURL, match="bad port"):
        check_url(f"http://127.0.0.1:{port}/hook", Allowlist.parse("127.0.0.1"))
    assert check_url("http://127.0.0.1:1/hook", Allowlist.parse("127.0.0.1")).port == 1
