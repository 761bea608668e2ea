"""A hostile tenant against a real farm: every attack answers in the error shape, leaves
nothing behind, and the farm keeps serving."""

from __future__ import annotations

import gzip
import io
import json
import re
import secrets
import select
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from tests.helpers import (
    all_pages,
    api_process,
    assert_error,
    read_lines,
    register_model,
    register_ready,
    run_job,
    submit,
    upload,
    wait_done,
    wait_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

MB = 1024 * 1024
# A separate API process with small limits, so floods stay cheap to send. (Model archives are
# unpacked by the worker, under MODEL_MAX_UNPACKED_BYTES of the test farm: tests/conftest.py.)
SMALL = {
    "MODELFARM_MAX_REQUEST_BYTES": str(1 * MB),
    "MODELFARM_MAX_UPLOAD_BYTES": str(2 * MB),
    "MODELFARM_MODEL_MAX_UNPACKED_BYTES": str(4 * MB),
}
ABSOLUTE_PATH = re.compile(r"(^|[\s'\"(])/(tmp|work|root|home|var|usr|etc|data)\b")


@pytest.fixture(scope="module")
def small_api(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "small-api.log"
    with api_process({**services, **SMALL}, log) as url:
        yield url


@pytest.fixture
def small(small_api: str, tenant_key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {tenant_key}"}
    with httpx.Client(base_url=small_api, headers=headers, timeout=60) as c:
        yield c


def _farm_still_serves(client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
    job = run_job(client, "minilm", [{"custom_id": "after", "input": "still here"}])
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 1, job


def _no_paths(message: str) -> None:
    assert not ABSOLUTE_PATH.search(message), message


def _refused(client: httpx.Client, content: bytes, framework: str, name: str) -> dict[str, Any]:
    """Register an upload (202, `validating`); the worker's verdict must be `failed`: its error."""
    file = upload(client, content, purpose="model", name="model.bin")
    body = {"name": name, "framework": framework, "file_id": file["id"]}
    version = wait_model(client, register_model(client, body))
    assert version["status"] == "failed", version
    return dict(version["error"])


# -- uploaded models ----------------------------------------------------------------------------


def test_a_model_that_would_run_code_is_refused(client: httpx.Client, tmp_path: Path) -> None:
    x = np.abs(np.random.default_rng(0).normal(size=(60, 4)))
    y = (x[:, 0] > 0.8).astype(int)
    # The shape of the reported exploit: a pipeline that calls library functions on load/run.
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(x, y)
    path = tmp_path / "evil.skops"
    skops.io.dump(model, str(path))
    error = _refused(client, path.read_bytes(), "sklearn", "evil")
    assert error["code"] == "untrusted_model"
    assert "numpy.log1p (FunctionNode)" in error["message"]
    assert "FunctionTransformer" in error["message"]
    _no_paths(error["message"])
    job = {"model": "evil", "input": {"items": [{"custom_id": 1, "input": [1, 2, 3, 4]}]}}
    assert_error(client.post("/v1/jobs", json=job), 422, "model_failed")
    _farm_still_serves(client)


def _tar_gz(members: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """(name, data for a file / None, link target for a symlink)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _bomb() -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tf:
            tf.addfile(_sized("config.json", 2), io.BytesIO(b"{}"))
            tf.addfile(_sized("model.safetensors", 64 * MB), io.BytesIO(b"\0" * 64 * MB))
    return raw.getvalue()


def _sized(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


@pytest.mark.parametrize(
    "archive, words",
    [
        (lambda: _tar_gz([("config.json", b"{}", None), ("w", None, "/etc/passwd")]), "is a link"),
        (lambda: _tar_gz([("../../escape.json", b"{}", None)]), "points outside"),
        (_bomb, "unpacks to more than"),
        (
            lambda: _tar_gz([("config.json", b"{}", None), ("model.bin", b"\x80\x04", None)]),
            "pickled",
        ),
    ],
    ids=["symlink", "escape", "bomb", "pickle"],
)
def test_hostile_archives_are_refused_and_leave_nothing(
    small: httpx.Client, services: dict[str, str], archive: object, words: str
) -> None:
    content = archive()  # type: ignore[operator]
    assert len(content) < 1 * MB  # a small download, whatever it unpacks to
    name = f"arc-{secrets.token_hex(4)}"
    error = _refused(small, content, "transformers", name)
    assert error["code"] == "invalid_archive" and words in error["message"]
    _no_paths(error["message"])
    data_dir = Path(services["MODELFARM_DATA_DIR"])
    assert not list((data_dir / "artifacts").glob(f"tenants/*/models/{name}"))
    assert list((data_dir / "tmp").iterdir()) == []
    assert not (data_dir / "escape.json").exists()
    _farm_still_serves(small)


# -- request bodies -----------------------------------------------------------------------------


FILE_PART = (
    b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
)


def _flood(
    url: str, path: str, key: str, content_type: str, total: int, prefix: bytes
) -> tuple[int, int]:
    """Send a chunked body (prefix, then `total` bytes) until the server answers or hangs up.

    Returns (HTTP status, bytes sent before that)."""
    where = urlparse(url)
    sock = socket.create_connection((where.hostname, where.port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode() + b"%x\r\n%s\r\n" % (len(prefix), prefix))
    chunk = b"x" * (64 * 1024)
    sent = 0
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came: stop sending, as a client would
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(30)
    answer = b""
    try:
        while b"\r\n" not in answer:
            part = sock.recv(4096)
            if not part:
                break
            answer += part
    finally:
        sock.close()
    return int(answer.split(b" ", 2)[1]), sent


@pytest.mark.parametrize(
    "path, content_type, prefix",
    [
        ("/v1/jobs", "application/json", b'{"model": "minilm", "metadata": {"a": "'),
        ("/v1/files", "multipart/form-data; boundary=b", FILE_PART),
    ],
    ids=["json", "upload"],
)
def test_chunked_bodies_are_cut_at_the_limit(
    small_api: str, tenant_key: str, path: str, content_type: str, prefix: bytes
) -> None:
    total = 400 * MB
    started = time.monotonic()
    status, sent = _flood(small_api, path, tenant_key, content_type, total, prefix)
    assert status == 413
    # Limits are 1-2 MB; socket buffers on loopback hold a few MB more, never 400.
    assert sent < 64 * MB, sent
    assert time.monotonic() - started < 30


def test_an_upload_over_the_limit_without_content_length_is_413(small: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield FILE_PART
        for _ in range(64):
            yield b"y" * (64 * 1024)
        yield b"\r\n--b--\r\n"

    response = small.post(
        "/v1/files",
        content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 413, "payload_too_large")
    _farm_still_serves(small)


# -- text the database cannot store -------------------------------------------------------------


def test_lone_surrogates_and_nul_answer_422(client: httpx.Client) -> None:
    lone = '"\\ud800"'  # JSON text for a lone surrogate
    items = '{"items": [{"input": "x"}]}'
    bodies = [
        '{"model": "minilm", "input": {"items": [{"custom_id": ' + lone + ', "input": "x"}]}}',
        '{"model": "minilm", "input": {"items": [{"input": ' + lone + "}]}}",
        '{"model": "minilm", "input": {"file_id": ' + lone + "}}",
        '{"model": ' + lone + ', "input": ' + items + "}",
        '{"model": "minilm", "input": ' + items + ', "metadata": {"a": "\\u0000"}}',
    ]
    for body in bodies:
        response = client.post(
            "/v1/jobs", content=body.encode(), headers={"Content-Type": "application/json"}
        )
        assert_error(response, 422)
    # An emoji written as an escaped surrogate pair is valid and accepted.
    pair = (
        '{"model": "minilm", "input": {"items": [{"custom_id": "\\ud83d\\ude00", "input": "x"}]}}'
    )
    response = client.post(
        "/v1/jobs", content=pair.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    assert wait_done(client, response.json()["id"])["status"] == "succeeded"
    not_utf8 = client.post(
        "/v1/jobs", content=b'{"model": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert_error(not_utf8, 422)
    for url in ["/v1/jobs?after=%ff%fe", "/v1/jobs/job_%00", "/v1/files/%ed%a0%80"]:
        assert_error(client.get(url), 422)
    _farm_still_serves(client)


# -- input lines ----------------------------------------------------------------------------------


def _not_json(name: str) -> None:
    raise AssertionError(f"{name} written to a result file")


def test_hostile_lines_never_fail_the_job(client: httpx.Client) -> None:
    lines = [
        json.dumps({"custom_id": "ok", "input": "fine"}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"custom_id": ' + b"7" * 5000 + b', "input": "x"}',
        b'{"custom_id": NaN, "input": "x"}',
        b'{"custom_id": 1e999, "input": "x"}',
        b'{"custom_id": "\\ud800", "input": "x"}',
        b'{"custom_id": "s", "input": "\\udc00 lone"}',
        json.dumps({"custom_id": "ok2", "input": "also fine"}).encode(),
    ]
    job = run_job(client, "minilm", b"\n".join(lines) + b"\n")
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"total": 8, "succeeded": 2, "failed": 6}
    for file_id in (job["output_file_id"], job["error_file_id"]):
        text = client.get(f"/v1/files/{file_id}/content").content.decode("utf-8")
        for line in text.splitlines():
            json.loads(line, parse_constant=_not_json)  # strict: no NaN or Infinity
    assert [o["custom_id"] for o in read_lines(client, job["output_file_id"])] == ["ok", "ok2"]
    errors = read_lines(client, job["error_file_id"])
    assert [(e["line"], e["error"]["code"]) for e in errors] == [
        (2, "invalid_json"),
        (3, "invalid_json"),
        (4, "invalid_json"),
        (5, "invalid_json"),  # 1e999 overflows a double: not a number JSON can carry
        (6, "invalid_json"),  # escaped lone surrogates are not Unicode: strict JSON refuses
        (7, "invalid_json"),
    ]
    assert all(e["custom_id"] is None for e in errors)


# -- training parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hyperparameters, words",
    [
        ({"n_estimators": 10**30}, "'n_estimators' must be from 1 to 2000"),
        ({"max_depth": 10**6}, "'max_depth' must be from 1 to 200"),
        ({"random_state": 10**30}, "'random_state' must be from"),
    ],
)
def test_training_bounds(client: httpx.Client, hyperparameters: dict[str, int], words: str) -> None:
    file = upload(client, b'{"input": [1, 2], "label": "a"}\n', purpose="training")
    body = {
        "type": "training",
        "framework": "sklearn",
        "input": {"file_id": file["id"]},
        "params": {"estimator": "random_forest", "hyperparameters": hyperparameters},
        "output_model": "bounded",
    }
    error = assert_error(client.post("/v1/jobs", json=body), 422, "invalid_params")
    assert words in error["message"], error
    _no_paths(error["message"])


def test_a_k_neighbors_model_trains_with_brute_force_and_serves(client: httpx.Client) -> None:
    rows = [{"input": [float(i % 7), float(i % 3)], "label": "ab"[i % 2]} for i in range(40)]
    file = upload(client, "".join(json.dumps(r) + "\n" for r in rows).encode(), "training")
    body = {
        "type": "training",
        "framework": "sklearn",
        "input": {"file_id": file["id"]},
        "params": {"estimator": "k_neighbors", "hyperparameters": {"n_neighbors": 3}},
        "output_model": "knn",
    }
    job = wait_done(client, submit(client, body)["id"])
    assert job["status"] == "succeeded", job
    assert job["params"]["hyperparameters"]["algorithm"] == "brute"
    served = run_job(client, job["result"]["model"], [{"custom_id": 1, "input": [1.0, 2.0]}])
    assert served["status"] == "succeeded" and served["counts"]["succeeded"] == 1, served


def test_a_graph_planted_in_a_model_archive_is_never_loaded(
    client: httpx.Client, services: dict[str, str], tmp_path: Path
) -> None:
    """The farm exports and checks ONNX graphs itself, outside the folder an archive fills: a
    tenant's own `model.onnx` (here garbage, with a runner.json that lies) is ignored."""
    from tests.factories import make_tiny_text_classifier
    from workers.runtime.onnx import GRAPH_NAME

    model_dir = make_tiny_text_classifier(tmp_path / "tiny", ["neg", "pos"])
    planted = model_dir / "onnx" / GRAPH_NAME
    planted.mkdir(parents=True)
    (planted / "model.onnx").write_bytes(b"not a graph: a parser's first test")
    (planted / "runner.json").write_text(json.dumps({"kind": "embedding", "max_length": 8}))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir, arcname="model")
    name = f"planted-{secrets.token_hex(3)}"
    file = upload(client, buffer.getvalue(), purpose="model", name="m.tar.gz")
    body = {"name": name, "framework": "transformers", "task": "text-classification"}
    register_ready(client, {**body, "file_id": file["id"]})
    job = run_job(client, name, [{"custom_id": 1, "input": "a fine film"}])
    assert job["status"] == "succeeded", job
    assert read_lines(client, job["output_file_id"])[0]["output"]["label"] in {"neg", "pos"}
    events = all_pages(client, f"/v1/jobs/{job['id']}/events")
    assert {"backend": "onnx"} in [e["data"] for e in events if e["type"] == "inference_backend"]
    artifacts = Path(services["MODELFARM_DATA_DIR"]) / "artifacts"
    (graph,) = artifacts.glob(f"tenants/*/models/{name}/*-onnx/{GRAPH_NAME}/model.onnx")
    assert graph.read_bytes() != b"not a graph: a parser's first test"
