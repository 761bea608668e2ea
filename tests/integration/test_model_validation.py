"""Uploaded models are validated by a worker: `validating`, then `ready` or `failed`.

Real API, PostgreSQL, Redis, CPU worker and sweeper processes. A version whose message is
"lost" is made here by registering it through the service without publishing, which is what a
broker that dropped the message leaves behind.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from tests.factories import train_sklearn_classifier
from tests.helpers import (
    FarmProcess,
    assert_error,
    register_model,
    register_ready,
    run_job,
    submit,
    upload,
    wait_done,
    wait_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

ROW = [{"custom_id": "a", "input": [0.1, 0.2, 0.3, 0.4]}]


@pytest.fixture
def skops_file(client: httpx.Client, tmp_path: Path) -> str:
    path = tmp_path / "clf.skops"
    train_sklearn_classifier(path)
    return str(upload(client, path.read_bytes(), purpose="model", name="clf.skops")["id"])


@pytest.fixture
def lost(tenant_key: str) -> Iterator[object]:
    """Registers a version as the API does, minus the message: (name, file id) -> version id."""
    from app.schemas.models import ModelCreate
    from app.services.models import register_model as register
    from app.services.tenants import authenticate
    from app.unit_of_work import MESSAGES, session_scope

    def make(name: str, file_id: str) -> str:
        with session_scope() as session:
            tenant = authenticate(session, tenant_key)
            assert tenant is not None
            body = ModelCreate(name=name, framework="sklearn", file_id=file_id)
            version_id = register(session, tenant, body).id
            session.info.pop(MESSAGES)  # the validation's message, queued to go at the commit
            return version_id

    yield make


def _version(version_id: str) -> dict[str, object]:
    from app.models import ModelVersion
    from app.unit_of_work import session_scope

    with session_scope() as session:
        mv = session.get_one(ModelVersion, version_id)
        return {"status": mv.status, "error": mv.error, "attempts": mv.attempts, "uri": mv.uri}


def _plant(services: dict[str, str], version_id: str, attempt: int) -> Path:
    """What a killed attempt left behind in the artifact store: a half-written folder."""
    from app.models import Model, ModelVersion
    from app.unit_of_work import session_scope

    with session_scope() as session:
        mv = session.get_one(ModelVersion, version_id)
        model = session.get_one(Model, mv.model_id)
        tenant, name, number = model.tenant_id, model.name, mv.version
    models = Path(services["MODELFARM_DATA_DIR"]) / "artifacts" / "tenants" / tenant / "models"
    folder = models / name / f"v{number}-attempt{attempt}"
    folder.mkdir(parents=True)
    (folder / "model.skops").write_bytes(b"half of a file")
    return folder


def test_a_registered_model_validates_then_serves(client: httpx.Client, skops_file: str) -> None:
    name = f"clf-{secrets.token_hex(3)}"
    version = register_model(client, {"name": name, "framework": "sklearn", "file_id": skops_file})
    assert version["model"] == f"{name}@1" and version["task"] is None  # read from the file
    ready = wait_model(client, version)
    assert ready["status"] == "ready" and ready["task"] == "classification", ready
    assert ready["info"]["n_features"] == 4
    assert client.get(f"/v1/models/{name}").json()["latest_version"] == 1
    job = run_job(client, name, ROW)
    assert job["status"] == "succeeded" and job["model"] == f"{name}@1", job


def test_a_hostile_skops_file_fails_and_its_jobs_are_refused(
    client: httpx.Client, services: dict[str, str], tmp_path: Path
) -> None:
    x = np.abs(np.random.default_rng(0).normal(size=(60, 4)))
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression())
    path = tmp_path / "evil.skops"
    skops.io.dump(model.fit(x, (x[:, 0] > 0.8).astype(int)), str(path))
    file = upload(client, path.read_bytes(), purpose="model", name="evil.skops")
    name = f"evil-{secrets.token_hex(3)}"
    version = register_model(client, {"name": name, "framework": "sklearn", "file_id": file["id"]})
    failed = wait_model(client, version)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "untrusted_model"
    assert "numpy.log1p (FunctionNode)" in failed["error"]["message"]
    for ref in (name, f"{name}@1"):
        body = {"model": ref, "input": {"items": ROW}}
        error = assert_error(client.post("/v1/jobs", json=body), 422, "model_failed")
        assert "numpy.log1p" in error["message"]
    # Nothing of it is stored; the farm goes on serving.
    artifacts = Path(services["MODELFARM_DATA_DIR"]) / "artifacts"
    assert not list(artifacts.glob(f"tenants/*/models/{name}"))
    assert run_job(client, "minilm", [{"custom_id": 1, "input": "still here"}])["status"] == (
        "succeeded"
    )


def test_a_job_for_a_validating_version_is_refused_until_it_is_ready(
    client: httpx.Client, skops_file: str, lost: object, sweeper: object
) -> None:
    name = f"slow-{secrets.token_hex(3)}"
    first = register_ready(client, {"name": name, "framework": "sklearn", "file_id": skops_file})
    version_id = lost(name, skops_file)  # type: ignore[operator]
    # Its message is lost: it waits in `validating` until the sweeper sends it again.
    error = assert_error(
        client.post("/v1/jobs", json={"model": f"{name}@2", "input": {"items": ROW}}),
        409,
        "model_not_ready",
    )
    assert f"{name}@2" in error["message"]
    # `name` alone is the latest ready version.
    job = submit(client, {"model": name, "input": {"items": ROW}})
    assert job["model"] == first["model"] == f"{name}@1"
    assert wait_done(client, job["id"])["status"] == "succeeded"
    # The sweeper finds the version without a message and publishes it; a worker validates it.
    ready = wait_model(client, {"id": version_id, "name": name, "model": f"{name}@2"}, 60)
    assert ready["status"] == "ready", ready
    assert _version(version_id)["attempts"] == 1
    job = wait_done(client, submit(client, {"model": name, "input": {"items": ROW}})["id"])
    assert job["status"] == "succeeded" and job["model"] == f"{name}@2", job


def test_a_version_whose_worker_keeps_dying_fails_instead_of_waiting_forever(
    client: httpx.Client, services: dict[str, str], skops_file: str, lost: object, sweeper: object
) -> None:
    from sqlalchemy import update

    from app.db import utcnow
    from app.models import ModelVersion
    from app.unit_of_work import session_scope

    name = f"dying-{secrets.token_hex(3)}"
    version_id = lost(name, skops_file)  # type: ignore[operator]
    left = _plant(services, version_id, 3)
    # As if MAX_ATTEMPTS (3) workers had taken it and died: the last lease has run out.
    with session_scope() as session:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == version_id)
            .values(attempts=3, lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    failed = wait_model(client, {"id": version_id, "name": name, "model": f"{name}@1"}, 60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "validation_failed"
    assert "3 times" in failed["error"]["message"]
    assert _version(version_id)["uri"] is None
    assert not left.parent.exists()  # what the dead attempts stored is gone, and the name's folder


def _as_if_killed(version_id: str, owner: str, lease_seconds: float) -> None:
    """The version as an attempt left it when its process died: its lease, its owner."""
    from sqlalchemy import update

    from app.db import utcnow
    from app.models import ModelVersion
    from app.unit_of_work import session_scope

    with session_scope() as session:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == version_id)
            .values(
                attempts=1,
                lease_owner=owner,
                lease_expires_at=utcnow() + timedelta(seconds=lease_seconds),
            )
        )


def _dead_pid() -> int:
    """A pid on this host whose process has exited, as a killed one's has."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


@pytest.mark.parametrize("lease_seconds", [3600, -1], ids=["given-back-at-once", "lease-run-out"])
def test_a_validation_that_killed_its_process_is_refused_not_tried_again(
    client: httpx.Client,
    services: dict[str, str],
    skops_file: str,
    lost: object,
    cpu_worker: FarmProcess,
    lease_seconds: float,
) -> None:
    """A pool child killed mid-validation under a living worker (the OOM killer, most often)
    gives its message back at once (acks_late): the next attempt sees the lease's process is
    gone, its worker not, and without waiting it out refuses the version (issue 25: a hostile
    upload restarted its validation twice). One killed by the hard time limit has its message
    acknowledged; the sweeper's resend, once the lease ran out, refuses it the same way."""
    import psutil

    from app.broker.dispatch import publish_validation
    from workers.reliability import HOST

    worker = psutil.Process(cpu_worker.proc.pid)  # the pool children's parent
    owner = f"{HOST}:{_dead_pid()}:dead/{worker.pid}@{worker.create_time():.2f}"
    name = f"killed-{secrets.token_hex(3)}"
    version_id = lost(name, skops_file)  # type: ignore[operator]
    left = _plant(services, version_id, 1)
    _as_if_killed(version_id, owner, lease_seconds)
    assert publish_validation(version_id)  # the message the broker gave back
    failed = wait_model(client, {"id": version_id, "name": name, "model": f"{name}@1"}, 60)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "validation_killed", failed
    assert _version(version_id)["attempts"] == 2
    assert not left.exists()  # the killed attempt's half-written folder


def test_a_validation_whose_worker_stopped_is_validated_again(
    client: httpx.Client, services: dict[str, str], skops_file: str, lost: object
) -> None:
    """A validation lost with its whole worker (restarted by an operator, a deploy) says
    nothing against the upload: the message given back is validated again, and the version
    becomes ready (bounded by MAX_ATTEMPTS like any attempt that dies)."""
    from app.broker.dispatch import publish_validation
    from workers.reliability import HOST

    worker = _dead_pid()  # the worker the dead attempt ran under is gone too
    owner = f"{HOST}:{_dead_pid()}:dead/{worker}@1.00"
    name = f"restarted-{secrets.token_hex(3)}"
    version_id = lost(name, skops_file)  # type: ignore[operator]
    left = _plant(services, version_id, 1)
    _as_if_killed(version_id, owner, 3600)
    assert publish_validation(version_id)
    ready = wait_model(client, {"id": version_id, "name": name, "model": f"{name}@1"}, 60)
    assert ready["status"] == "ready", ready
    assert _version(version_id)["attempts"] == 2
    assert not left.exists()  # the dead attempt's folder; the new one's is the version's
