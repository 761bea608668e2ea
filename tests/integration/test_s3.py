"""ARTIFACT_ROOT on an S3-compatible server (moto's server mode, a real HTTP endpoint on
127.0.0.1): uploads, shards' part files, assembled results and model versions all live in the
bucket, and the worker's own disk holds no artifact, only its cache."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from app.local.embedded import free_port
from tests.factories import train_sklearn_classifier
from tests.farms import side_farm
from tests.helpers import all_pages, jsonl, read_lines, register_ready, run_job, upload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "modelfarm-test"
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server as a child process, with one empty bucket."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=url, **_boto_keys())
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }


def _keys(endpoint: str, prefix: str) -> dict[str, dict[str, Any]]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_keys())
    found: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = item
    return found


def test_the_store_streams_large_writes_as_multipart_uploads(s3_endpoint: str) -> None:
    """A write larger than a block goes up in parts (an ETag `<md5>-<parts>`), and reads back
    whole; the store never needed the whole file in memory."""
    from app.storage import ArtifactStore

    prefix = f"unit-{secrets.token_hex(3)}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS.items():
            env.setenv(name, value)
        store = ArtifactStore(
            f"s3://{BUCKET}/{prefix}",
            Path("unused-cache"),
            {"endpoint_url": s3_endpoint, "default_block_size": 5 * 1024 * 1024},
        )
        block = os.urandom(1024 * 1024)
        size, _ = store.write_stream(store.uri("big.bin"), iter([block] * 12), limit=None)
        assert size == store.size(store.uri("big.bin")) == 12 * len(block)
        assert sum(len(c) for c in store.iter_bytes(store.uri("big.bin"))) == size
    (item,) = _keys(s3_endpoint, prefix).values()
    assert item["ETag"].strip('"').endswith("-3"), item  # 5 MiB + 5 MiB + 2 MiB


def test_a_farm_on_s3_keeps_every_artifact_in_the_bucket(
    services: dict[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    prefix = f"farm-{secrets.token_hex(3)}"
    data_dir = tmp_path / "data"
    overrides = {
        **AWS,
        "MODELFARM_ARTIFACT_ROOT": f"s3://{BUCKET}/{prefix}",
        "MODELFARM_S3_ENDPOINT_URL": s3_endpoint,
        "MODELFARM_DATA_DIR": str(data_dir),
        # Its own Redis database: the session's workers never take this farm's messages.
        "MODELFARM_REDIS_URL": services["MODELFARM_REDIS_URL"].rsplit("/", 1)[0] + "/5",
    }
    with ExitStack() as stack:
        farm = stack.enter_context(side_farm(services, overrides, tmp_path / "logs"))
        client = stack.enter_context(farm.client())

        rows = [{"custom_id": i, "input": f"sentence number {i}"} for i in range(450)]
        job = run_job(client, "minilm", rows)  # SHARD_ITEMS=200: three shards
        assert job["status"] == "succeeded", job
        events = all_pages(client, f"/v1/jobs/{job['id']}/events")
        (planned,) = [e["data"] for e in events if e["type"] == "planned"]
        assert planned["shards"] == 3, events
        out = read_lines(client, job["output_file_id"])
        assert [r["custom_id"] for r in out] == list(range(450))
        assert all(len(r["output"]) == 384 for r in out)
        content = client.get(f"/v1/files/{job['output_file_id']}/content")
        assert content.status_code == 200 and content.content.count(b"\n") == 450

        model_path = tmp_path / "clf.skops"
        train_sklearn_classifier(model_path)
        file = upload(client, model_path.read_bytes(), purpose="model", name="clf.skops")
        name = f"clf-{secrets.token_hex(3)}"
        register_ready(client, {"name": name, "framework": "sklearn", "file_id": file["id"]})
        scored = run_job(client, name, jsonl([{"custom_id": "a", "input": [0.1, 0.2, 0.3, 0.4]}]))
        assert scored["status"] == "succeeded", scored
        (line,) = read_lines(client, scored["output_file_id"])
        assert line["output"]["label"] in {"low", "mid", "high"}, line

    keys = _keys(s3_endpoint, prefix)
    sharded = [k.split(f"/jobs/{job['id']}/", 1)[1] for k in keys if f"/jobs/{job['id']}/" in k]
    # Assembled in the bucket from the shards' part files there, which are cleared after.
    assert {k.rsplit("/", 1)[-1] for k in sharded} == {"output.jsonl", "errors.jsonl"}, sharded
    assert any(f"/jobs/{scored['id']}/" in k for k in keys), sorted(keys)
    assert any(k.endswith("/model.skops") and "/models/" in k for k in keys), sorted(keys)
    assert sum("/files/" in k for k in keys) == 3, sorted(keys)  # two inputs and the model
    # Nothing of the store was written on the worker's disk: only its cache may hold copies.
    assert not (data_dir / "artifacts").exists()
    cache = data_dir / "cache"
    assert [p for p in data_dir.rglob("*") if p.is_file() and cache not in p.parents] == []
