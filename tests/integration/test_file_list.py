"""GET /v1/files: the tenant's files, newest first, a page at a time, one purpose or all."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import upload

pytestmark = pytest.mark.integration


def test_files_are_listed_newest_first_by_page_and_purpose(
    client: httpx.Client, other_client: httpx.Client
) -> None:
    batch = [upload(client, b'{"input": "x"}\n', name=f"b{i}.jsonl")["id"] for i in range(3)]
    training = upload(client, b'{"input": "x", "label": "a"}\n', "training")["id"]
    upload(other_client, b'{"input": "theirs"}\n')  # another tenant's: never listed

    every = client.get("/v1/files").json()
    assert [f["id"] for f in every["data"]] == [training, *reversed(batch)]
    assert every["has_more"] is False and every["last_id"] == batch[0]

    first = client.get("/v1/files", params={"purpose": "batch", "limit": 2}).json()
    assert [f["id"] for f in first["data"]] == [batch[2], batch[1]] and first["has_more"]
    rest = client.get(
        "/v1/files", params={"purpose": "batch", "limit": 2, "after": first["last_id"]}
    ).json()
    assert [f["id"] for f in rest["data"]] == [batch[0]] and rest["has_more"] is False
    assert rest["data"][0]["filename"] == "b0.jsonl" and rest["data"][0]["purpose"] == "batch"

    assert client.get("/v1/files", params={"purpose": "pickles"}).status_code == 422
    missing = client.get("/v1/files", params={"after": "file_nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
