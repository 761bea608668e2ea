"""Quotas that count everything stored (issue 25, part 3), with the probe's inputs.

Inline items, unpacked model versions, result files and job metadata count against
`max_storage_bytes`; metadata follows
OpenAI's limits on both surfaces; a model name keeps a bounded number of versions. (An output
line over its limit: tests/unit/test_output_limit.py.)
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import assert_error, register_ready, submit, upload, wait_done

pytestmark = pytest.mark.integration


def _tenant_client(api_url: str, **limits: Any) -> httpx.Client:
    from app.services.keys import create_api_key
    from app.services.tenants import create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        key = create_api_key(session, create_tenant(session, f"q-{secrets.token_hex(5)}", limits))
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({f"k{i}": "v" for i in range(17)}, "16"),
        ({"k" * 5000: "v"}, "64"),  # the probe's 5,000-character key
        ({"big": "v" * (2 * 1024**2)}, "512"),  # and its 2 MiB values
    ],
)
def test_metadata_follows_openais_limits_on_both_surfaces(
    client: httpx.Client, metadata: dict[str, str], says: str
) -> None:
    items = {"items": [{"input": "a"}]}
    native = client.post("/v1/jobs", json={"model": "minilm", "input": items, "metadata": metadata})
    assert says in assert_error(native, 422)["message"]
    file = upload(client, b'{"custom_id": "1", "method": "POST", "url": "/v1/embeddings"}\n')
    batch = client.post(
        "/openai/v1/batches",
        json={
            "input_file_id": file["id"],
            "endpoint": "/v1/embeddings",
            "completion_window": "24h",
            "metadata": metadata,
        },
    )
    assert batch.status_code in (400, 422), batch.text
    assert says in batch.json()["error"]["message"]


def test_inline_items_count_against_the_storage_quota(api_url: str) -> None:
    with _tenant_client(api_url, max_storage_bytes=4000) as tenant:
        items = [{"input": "x" * 900} for _ in range(10)]  # about 9 KB once written
        refused = tenant.post("/v1/jobs", json={"model": "minilm", "input": {"items": items}})
        assert "limit of 4000 bytes" in assert_error(refused, 413, "quota_exceeded")["message"]
        assert tenant.get("/v1/usage").is_success
        small = submit(tenant, {"model": "minilm", "input": {"items": items[:2]}})
        assert small["status"] in ("queued", "running", "succeeded")


@pytest.mark.usefixtures("cpu_worker")
def test_an_unpacked_model_version_counts_against_the_storage_quota(
    api_url: str, tmp_path: Path
) -> None:
    from app.services.tenants import storage_used
    from app.unit_of_work import session_scope
    from tests.factories import train_sklearn_classifier

    train_sklearn_classifier(tmp_path / "m.skops")
    content = (tmp_path / "m.skops").read_bytes()
    with _tenant_client(api_url, max_storage_bytes=len(content) + 1000) as tenant:
        tenant_id = _tenant_id(tenant)
        file = upload(tenant, content, purpose="model", name="m.skops")
        version = register_ready(
            tenant, {"name": "counted", "framework": "sklearn", "file_id": file["id"]}
        )
        with session_scope() as session:
            used = storage_used(session, tenant_id)
        assert used == 2 * len(content), (used, version)  # the upload and the version's copy
        refused = tenant.post(
            "/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"}
        )
        assert_error(refused, 413, "quota_exceeded")


def _tenant_id(tenant: httpx.Client) -> str:
    from app.services.tenants import authenticate
    from app.unit_of_work import session_scope

    key = tenant.headers["Authorization"].removeprefix("Bearer ")
    with session_scope() as session:
        found = authenticate(session, key)
        assert found is not None
        return found.id


def test_a_model_name_keeps_a_bounded_number_of_versions(client: httpx.Client) -> None:
    from app.schemas.models import ModelCreate
    from app.services import models as model_service
    from app.services.errors import Conflict
    from app.unit_of_work import session_scope

    file = upload(client, b"not really a model", purpose="model", name="m.skops")
    tenant_id = _tenant_id(client)
    body = ModelCreate(name=f"many-{secrets.token_hex(3)}", framework="sklearn", file_id=file["id"])
    with session_scope() as session:
        from app.models import Tenant

        tenant = session.get_one(Tenant, tenant_id)
        for _ in range(3):
            model_service.register_model(session, tenant, body, max_versions=3)
        with pytest.raises(Conflict, match="keeps 3 versions"):
            model_service.register_model(session, tenant, body, max_versions=3)
        session.rollback()  # nothing of this stays: no worker is asked to validate them


@pytest.mark.usefixtures("cpu_worker")
def test_job_metadata_and_result_files_count_against_the_storage_quota(api_url: str) -> None:
    from sqlalchemy import func, select

    from app.models import File, Tenant
    from app.ratelimit import bump_generation
    from app.services.tenants import metadata_bytes, set_limits, storage_used
    from app.unit_of_work import session_scope

    # The most OpenAI's limits allow, in two-byte characters: about 16 KB a job.
    metadata = {f"key-{i:02d}": "é" * 512 for i in range(16)}
    size = metadata_bytes(metadata)
    assert size > 16 * 1024
    with _tenant_client(api_url) as tenant:
        tenant_id = _tenant_id(tenant)
        body = {"model": "minilm", "input": {"items": [{"input": "a"}]}, "metadata": metadata}
        done = wait_done(tenant, submit(tenant, body)["id"])
        assert done["status"] == "succeeded" and done["metadata"] == metadata

        with session_scope() as session:
            used = storage_used(session, tenant_id)
            files = session.scalar(select(func.sum(File.bytes)).where(File.tenant_id == tenant_id))
            output = session.get_one(File, done["output_file_id"]).bytes
        assert output > 0 and files is not None and files > output  # the results and the input
        assert used == files + size, (used, files, size)

        # Room for less than one more such job: its metadata is refused, as a file would be.
        with session_scope() as session:
            limits = {"max_storage_bytes": used + size - 1}
            set_limits(session, session.get_one(Tenant, tenant_id), limits)
        assert bump_generation()  # as `modelfarm tenants set` does: the API reads it at once
        refused = tenant.post("/v1/jobs", json=body)
        message = assert_error(refused, 413, "quota_exceeded")["message"]
        assert "metadata" in message and f"stores {used} bytes" in message
        smaller = {**body, "metadata": {"k": "v"}}
        assert submit(tenant, smaller)["status"] in ("queued", "running", "succeeded")


@pytest.mark.usefixtures("cpu_worker")
def test_a_deleted_version_makes_room_and_frees_its_storage(api_url: str, tmp_path: Path) -> None:
    """At most N versions "unless deleted": DELETE /v1/models/{name}/versions/{n} frees the
    version's place and its stored copy; its number is not given again."""
    from app.models import ModelVersion, Tenant
    from app.schemas.models import ModelCreate
    from app.services import models as model_service
    from app.services.errors import Conflict
    from app.services.tenants import storage_used
    from app.storage import get_store
    from app.unit_of_work import session_scope
    from tests.factories import train_sklearn_classifier

    train_sklearn_classifier(tmp_path / "m.skops")
    content = (tmp_path / "m.skops").read_bytes()
    name = f"kept-{secrets.token_hex(3)}"
    with _tenant_client(api_url) as tenant:
        tenant_id = _tenant_id(tenant)
        file = upload(tenant, content, purpose="model", name="m.skops")
        body = {"name": name, "framework": "sklearn", "file_id": file["id"]}
        ready = register_ready(tenant, body)
        assert ready["status"] == "ready"
        with session_scope() as session:
            assert storage_used(session, tenant_id) == 2 * len(content)  # upload and copy
            with pytest.raises(Conflict, match="keeps 1 versions"):
                model_service.register_model(
                    session, session.get_one(Tenant, tenant_id), ModelCreate(**body), 1
                )

            stored = get_store().local_path(session.get_one(ModelVersion, ready["id"]).uri or "")
        assert stored.exists()

        assert_error(tenant.delete(f"/v1/models/{name}/versions/9"), 404)
        deleted = tenant.delete(f"/v1/models/{name}/versions/1")
        assert deleted.status_code == 204, deleted.text
        assert not stored.exists()
        assert tenant.get(f"/v1/models/{name}").json()["versions"] == []
        items = {"items": [{"input": [0.1, 0.2, 0.3, 0.4]}]}
        assert_error(tenant.post("/v1/jobs", json={"model": f"{name}@1", "input": items}), 404)
        assert_error(tenant.delete(f"/v1/models/{name}/versions/1"), 404)  # once
        with session_scope() as session:
            assert storage_used(session, tenant_id) == len(content)  # the upload alone
            again = model_service.register_model(
                session, session.get_one(Tenant, tenant_id), ModelCreate(**body), 1
            )
            assert again.version == 2
            session.rollback()  # nothing of this stays: no worker is asked to validate it
