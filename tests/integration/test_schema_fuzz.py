"""Schema fuzzing: every operation of the API's own OpenAPI schema, against the real API process.

Schemathesis generates valid and invalid requests (bodies, paths, queries, headers) for each
operation, sent with a real tenant's API key so the authenticated routes get past the key check.
A second test aims cases at objects the tenant really has (files, a job that has ended, the
builtin model and a registered one), so the routes also get past their lookups. Whatever
arrives, the API must never answer 5xx, every non-2xx answer must be {"error": {"code",
"message"}}, and the API must still be ready after.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.schemas import BaseSchema

from tests.factories import train_sklearn_classifier
from tests.helpers import jsonl, submit, upload, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def fuzz_key(services: dict[str, str]) -> str:
    """A tenant of the fuzz's own (`tenant_key` is function-scoped)."""
    from app.services.tenants import create_api_key, get_or_create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        return create_api_key(session, get_or_create_tenant(session, f"f-{secrets.token_hex(6)}"))


@dataclass(frozen=True)
class RealObjects:
    batch_file_id: str
    model_file_id: str
    job_id: str  # ended, so a fuzzed `Prefer: wait=N` answers at once
    models: tuple[str, ...]  # the builtin one and a registered scikit-learn classifier


@pytest.fixture(scope="module")
def real(api_url: str, fuzz_key: str, tmp_path_factory: pytest.TempPathFactory) -> RealObjects:
    """Objects the fuzz's tenant has, for cases aimed past the lookups."""
    path = tmp_path_factory.mktemp("fuzz") / "clf.skops"
    train_sklearn_classifier(path)
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=60) as client:
        batch = upload(client, jsonl([{"custom_id": "a", "input": "hello"}]))
        model_file = upload(client, path.read_bytes(), purpose="model", name="clf.skops")
        body = {"name": "fuzz-clf", "framework": "sklearn", "file_id": model_file["id"]}
        # 202 `validating`; a worker (if one of another module runs) makes it ready or not.
        registered = client.post("/v1/models", json=body)
        assert registered.status_code == 202, registered.text
        job = submit(client, {"model": "minilm", "input": {"file_id": batch["id"]}})
        # Cancelled while queued when no worker runs; finished, if one (of another module) does.
        client.post(f"/v1/jobs/{job['id']}/cancel")
        assert wait_done(client, job["id"])["status"] in ("cancelled", "succeeded")
    return RealObjects(batch["id"], model_file["id"], job["id"], ("minilm", "fuzz-clf"))


def _load_schema() -> BaseSchema:
    """The schema the API process serves at /openapi.json, built from the same app here: the
    operations have to be known at collection time, before any server runs. (A schema loaded
    from the live process through `schemathesis.pytest.from_fixture` would need no copy, but
    schemathesis 4.32's lazy schemas break on pytest 9.2: they set `Function._nodeid`.)"""
    from app.api.main import create_app

    config = schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_dict(create_app().openapi(), config=config)


# POST /openai/v1/embeddings waits for a worker to answer (none runs here); it is tested with
# one in tests/integration/test_openai.py.
schema = _load_schema().exclude(path="/openai/v1/embeddings", method="POST")


def test_the_served_schema_is_the_one_fuzzed(api_url: str) -> None:
    served = httpx.get(f"{api_url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == schema.raw_schema


def _describe(case: Case) -> str:
    try:
        return case.as_curl_command()
    except Exception:  # a case that cannot be shown as curl is still reported
        return repr(case)


def _call_and_check(case: Case, api_url: str, key: str) -> None:
    response = case.call(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    where = f"{response.status_code} for {_describe(case)}\n{response.content[:2000]!r}"
    assert response.status_code < 500, where
    if not 200 <= response.status_code < 300:
        body: Any = json.loads(response.content)
        assert isinstance(body, dict) and set(body) == {"error"}, where
        # The OpenAI-compatible surface answers OpenAI's error shape, the native one its own.
        shape = _OPENAI_ERROR if case.path.startswith("/openai/") else {"code", "message"}
        assert isinstance(body["error"], dict) and set(body["error"]) == shape, where
        assert isinstance(body["error"]["code"], str) and body["error"]["code"], where
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], where


_OPENAI_ERROR = {"message", "type", "param", "code"}


fuzz_settings = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # nothing written under the checkout
    suppress_health_check=list(HealthCheck),
)


@schema.parametrize()
@fuzz_settings
def test_no_server_errors(case: Case, api_url: str, fuzz_key: str) -> None:
    """Every operation, from schema examples, boundary cases (coverage) and random requests."""
    _call_and_check(case, api_url, fuzz_key)


def _aim_at_real_objects(case: Case, real: RealObjects, pick: int) -> None:
    """Put real ids (and a purpose the API knows) where the fuzz put random ones; every other
    part of the case stays as generated, valid or not."""
    path = case.path_parameters
    if path:
        path.update(
            {
                key: value
                for key, value in {
                    "file_id": (real.batch_file_id, real.model_file_id)[pick % 2],
                    "job_id": real.job_id,
                    "name": real.models[pick % 2],
                }.items()
                if key in path
            }
        )
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path == "/v1/files" and "purpose" in body:
        body["purpose"] = ("batch", "model", "training")[pick % 3]
    elif case.path == "/v1/models" and "file_id" in body:
        body["file_id"] = (real.model_file_id, real.batch_file_id)[pick % 2]
    elif case.path == "/v1/jobs":
        if body.get("type", "inference") == "inference" and pick % 4:
            body["model"] = real.models[pick % 2]
        # The schema cannot say "exactly one of input.file_id and input.items": give one.
        source = body.get("input")
        if isinstance(source, dict):
            if isinstance(source.get("items"), list) and source["items"] and pick % 3:
                source.pop("file_id", None)
            else:
                source.pop("items", None)
                source["file_id"] = real.batch_file_id
        webhook = body.get("webhook")
        if isinstance(webhook, dict) and "url" in webhook and pick % 2:
            webhook["url"] = "http://127.0.0.1:9/hook"  # the only host tests may call


@schema.include(path_regex=r"\{(file_id|job_id|name)\}|^/v1/(files|models|jobs)$").parametrize()
@schema.given(pick=st.integers(min_value=0, max_value=11))
# Generated cases only: the schema's examples run in the test above, and schemathesis cannot
# give them the extra `pick` this test draws.
@settings(fuzz_settings, phases=[p for p in Phase if p is not Phase.explicit])
def test_no_server_errors_on_real_objects(
    case: Case, pick: int, api_url: str, fuzz_key: str, real: RealObjects
) -> None:
    """Cases aimed at objects that exist, so the routes get past their lookups (generated
    only: schemathesis runs no boundary cases or schema examples for a test that draws more
    than `case`)."""
    _aim_at_real_objects(case, real, pick)
    _call_and_check(case, api_url, fuzz_key)


def test_api_is_still_ready_after_the_fuzz(api_url: str, fuzz_key: str) -> None:
    # Runs after the fuzz (pytest keeps file order): the API survived all of it.
    assert httpx.get(f"{api_url}/readyz", timeout=30).status_code == 200
    jobs = httpx.get(
        f"{api_url}/v1/jobs", headers={"Authorization": f"Bearer {fuzz_key}"}, timeout=30
    )
    assert jobs.status_code == 200, jobs.text
