"""The dashboard and /metrics against a hostile caller (issue 25, part 5).

Login attempts limited per client and per tenant, forms only from the dashboard's own pages,
pages that cannot be framed or run foreign scripts, /metrics behind a token without tenants'
model names, and webhook URLs with a port that is no port refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import api_process, assert_error

pytestmark = pytest.mark.integration

TOKEN = "scrape-me-9f2c"


@pytest.fixture(scope="module")
def guarded_url(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {
        **services,
        "MODELFARM_API_WORKERS": "1",
        "MODELFARM_UI_LOGIN_ATTEMPTS_PER_MINUTE": "3",
        "MODELFARM_UI_LOGINS_PER_TENANT_PER_MINUTE": "2",
        "MODELFARM_METRICS_TOKEN": TOKEN,
    }
    with api_process(env, tmp_path_factory.mktemp("guarded") / "api.log") as url:
        yield url


def test_pages_carry_a_csp_and_cannot_be_framed(guarded_url: str) -> None:
    page = httpx.get(f"{guarded_url}/ui/login")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "content-security-policy" not in httpx.get(f"{guarded_url}/healthz").headers


def test_a_form_posted_from_another_site_is_refused(guarded_url: str, tenant_key: str) -> None:
    evil = {"Origin": "https://evil.example"}
    refused = httpx.post(f"{guarded_url}/ui/logout", headers=evil)
    assert refused.status_code == 403
    refused = httpx.post(
        f"{guarded_url}/ui/login", data={"key": tenant_key}, headers={"Referer": "http://x.test/"}
    )
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    own = httpx.post(f"{guarded_url}/ui/logout", headers={"Origin": guarded_url})
    assert own.status_code == 303


def test_login_attempts_are_limited_per_client_and_logins_per_tenant(
    guarded_url: str, tenant_key: str
) -> None:
    # Guessing keys from one address: 3 a minute, then 429 with Retry-After, even for a good
    # key (the guesser cannot tell which of its tries would have worked). From an address of
    # its own (all of 127/8 is loopback): the buckets live in the suite's Redis, and the other
    # dashboard tests log in from 127.0.0.1.
    transport = httpx.HTTPTransport(local_address="127.0.0.3")
    with httpx.Client(base_url=guarded_url, transport=transport) as guesser:
        answers = [
            guesser.post("/ui/login", data={"key": f"mf_guess{i}"}).status_code for i in range(4)
        ]
        assert answers == [401, 401, 401, 429], answers
        limited = guesser.post("/ui/login", data={"key": tenant_key})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "Too many login attempts" in limited.text
    # Another address is not held back by the guesser's bucket.
    with httpx.Client(
        base_url=guarded_url, transport=httpx.HTTPTransport(local_address="127.0.0.4")
    ) as other:
        assert other.post("/ui/login", data={"key": tenant_key}).status_code == 303


def test_logins_are_limited_per_tenant(guarded_url: str, tenant_key: str) -> None:
    # 2 logins a minute for one tenant; the client's own bucket (3) still has room for the third.
    transport = httpx.HTTPTransport(local_address="127.0.0.5")
    with httpx.Client(base_url=guarded_url, transport=transport) as browser:
        answers = [browser.post("/ui/login", data={"key": tenant_key}) for _ in range(3)]
    assert [a.status_code for a in answers] == [303, 303, 429], answers
    assert "set-cookie" not in answers[2].headers


def test_metrics_need_the_token_and_hide_tenants_model_names(
    guarded_url: str, api_url: str, client: httpx.Client
) -> None:
    assert_error(httpx.get(f"{guarded_url}/metrics"), 401, "unauthorized")
    wrong = httpx.get(f"{guarded_url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    scraped = httpx.get(f"{guarded_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status_code == 200 and "modelfarm_jobs" in scraped.text
    from app.catalogue import BUILTIN_MODELS
    from app.services import farm_stats
    from app.unit_of_work import session_scope

    builtins = tuple(f"{name}@" for name in BUILTIN_MODELS)
    with session_scope() as session:
        named = farm_stats.items_processed(session, names=True)
        hidden = farm_stats.items_processed(session, names=False)
        hidden_tokens = farm_stats.tokens_processed(session, names=False)
    tenant_models = {m for m, _ in named if "@" in m and not m.startswith(builtins)}
    assert not tenant_models & {m for m, _ in hidden}, "a tenant's model name was shown"
    assert not tenant_models & set(hidden_tokens), "a tenant's model name was shown"
    for shown in [m for m, _ in hidden] + list(hidden_tokens):
        assert shown == farm_stats.TENANT_MODEL or shown.startswith(builtins), shown


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_webhook_url_with_a_port_that_is_no_port_is_422(client: httpx.Client, port: str) -> None:
    body = {
        "model": "minilm",
        "input": {"items": [{"input": "a"}]},
        "webhook": {"url": f"http://127.0.0.1:{port}/hook"},
    }
    refused = client.post("/v1/jobs", json=body)
    assert_error(refused, 422)
    assert "port" in refused.json()["error"]["message"].lower()
