"""`modelfarm_client` against the real API and a real CPU worker."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfarm_client import ApiError, Client
from tests.helpers import jsonl

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]


@pytest.fixture
def farm(api_url: str, tenant_key: str) -> Iterator[Client]:
    with Client(api_url, tenant_key) as client:
        yield client


def _items(count: int, bad: int = 0) -> bytes:
    rows = [{"custom_id": f"c{i}", "input": f"sentence {i}"} for i in range(count)]
    return jsonl(rows) + b"not json\n" * bad


def test_files_round_trip(farm: Client, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(_items(3))
    uploaded = farm.upload(source)
    assert uploaded["id"].startswith("file_") and farm.file(uploaded["id"])["id"] == uploaded["id"]
    assert farm.file_content(uploaded["id"]) == source.read_bytes()
    copy = farm.download(uploaded["id"], tmp_path / "copy.jsonl")
    assert copy.read_bytes() == source.read_bytes()
    from_bytes = farm.upload(b'{"input": "x"}\n', filename="b.jsonl")
    assert from_bytes["filename"] == "b.jsonl"

    farm.delete_file(uploaded["id"])
    with pytest.raises(ApiError) as gone:
        farm.file(uploaded["id"])
    assert gone.value.status == 404 and gone.value.code and gone.value.message


def test_a_job_from_submit_to_delete(farm: Client) -> None:
    file = farm.upload(_items(30, bad=1))
    job = farm.create_job({"model": "minilm", "input": {"file_id": file["id"]}})
    seen: list[dict[str, Any]] = []
    done = farm.wait(job["id"], timeout=120, poll=2, on_progress=seen.append)
    assert done["status"] == "succeeded" and done["counts"]["failed"] == 1
    assert seen[-1] == done  # the callback saw the final answer too
    assert len(farm.file_content(done["output_file_id"]).splitlines()) == 30

    events = list(farm.iter_events(job["id"], page_size=2))  # more than one page
    assert events[0]["type"] == "queued" and events[-1]["type"] == "succeeded"
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)

    retry = farm.retry_job(job["id"])
    assert retry["id"] != job["id"]
    assert farm.wait(retry["id"], timeout=120)["status"] in ("succeeded", "failed")

    with pytest.raises(ApiError) as conflict:
        farm.cancel_job(job["id"])
    assert (conflict.value.status, conflict.value.code) == (409, "job_finished")
    farm.delete_job(job["id"])
    with pytest.raises(ApiError, match="404"):
        farm.job(job["id"])


def test_list_pages_and_cancel(farm: Client) -> None:
    items = [{"custom_id": str(i), "input": "hello"} for i in range(3)]
    ids = [farm.create_job({"model": "minilm", "input": {"items": items}})["id"] for _ in range(3)]
    first = farm.jobs(limit=2)
    assert len(first["data"]) == 2 and first["has_more"] is True
    rest = farm.jobs(limit=2, after=first["last_id"])
    assert [j["id"] for j in first["data"] + rest["data"]] == ids[::-1]  # newest first
    assert [j["id"] for j in farm.iter_jobs(page_size=1)] == ids[::-1]

    big = farm.create_job(
        {"model": "minilm", "input": {"file_id": farm.upload(_items(2000))["id"]}}
    )
    assert farm.cancel_job(big["id"])["status"] in ("cancelling", "cancelled")
    assert farm.wait(big["id"], timeout=120)["status"] == "cancelled"
    assert big["id"] in [j["id"] for j in farm.iter_jobs(status="cancelled")]


def test_wait_times_out_with_the_status(farm: Client) -> None:
    # No GPU worker runs in this module: the job stays queued, however fast the CPU pool is
    # (2,000 short items may end within the half second).
    job = farm.create_job(
        {"model": "minilm", "device": "gpu", "input": {"file_id": farm.upload(_items(20))["id"]}}
    )
    with pytest.raises(TimeoutError, match=job["id"]):
        farm.wait(job["id"], timeout=0.5, poll=0.2)
    farm.cancel_job(job["id"])


def test_models_webhooks_and_usage(farm: Client, tmp_path: Path) -> None:
    from tests.factories import train_sklearn_classifier

    path = tmp_path / "clf.skops"
    train_sklearn_classifier(path)
    name = f"clf-{secrets.token_hex(3)}"
    version = farm.register_model(path, name=name, framework="sklearn")
    assert version["model"] == f"{name}@1"
    assert farm.model(name)["versions"][0]["model"] == f"{name}@1"
    assert {"minilm", name} <= {m["name"] for m in farm.models()}
    with pytest.raises(ApiError) as bad:
        farm.register_model(path, name=name, framework="caffe")
    assert bad.value.status == 422

    assert farm.webhook_secret().startswith("whsec_")
    try:
        usage = farm.usage(group_by="model")
    except ApiError as exc:  # GET /v1/usage is not on every farm yet (docs/api.md, step 8)
        assert exc.status == 404
    else:
        assert isinstance(usage["data"], list)


def test_a_wrong_key_is_a_401_api_error(api_url: str) -> None:
    with Client(api_url, "mf_wrong") as client, pytest.raises(ApiError) as raised:
        client.models()
    assert raised.value.status == 401
