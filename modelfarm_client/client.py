"""A synchronous client of the farm's `/v1` API: files, jobs, models, webhooks and usage.

Answers are the API's JSON as plain dicts (the shapes docs/api.md documents), so the client never
lags behind a field the server adds. Every failure is an ApiError or a FarmUnreachable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from modelfarm_client.errors import ApiError, ClientError, FarmUnreachable

JSON = dict[str, Any]

#: statuses a job never leaves
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

#: the API answers `Prefer: wait=N` for at most this long (its MAX_WAIT_SECONDS default)
MAX_SERVER_WAIT = 60.0
PROGRESS_EVERY = 1.0  # seconds: how often wait() calls on_progress at least


class Client:
    """`Client(url, key)`; use it as a context manager (or call close) to free its connections.

    `http` is the underlying httpx.Client (base URL and key set), for calls not covered here.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """httpx's transport errors become FarmUnreachable, naming the URL the user set."""
        try:
            yield
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise FarmUnreachable(self.base_url, reason) from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._transport_errors():
            response = self.http.request(method, path, **kwargs)
        return _checked(response)

    def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        body: JSON = self._request(method, path, **kwargs).json()
        return body

    def _pages(self, path: str, params: JSON, page_size: int) -> Iterator[JSON]:
        """Every item of a list that pages with `limit`, `after`, `has_more`, `last_id`."""
        query = {k: v for k, v in params.items() if v is not None}
        query["limit"] = page_size
        while True:
            page = self._json("GET", path, params=query)
            yield from page["data"]
            if not page["has_more"] or page.get("last_id") is None:
                return
            query["after"] = page["last_id"]

    # -- files -----------------------------------------------------------------------------

    def files(self, purpose: str | None = None, limit: int = 20, after: str | None = None) -> JSON:
        """One page of the tenant's files, newest first: `{"data", "has_more", "last_id"}`."""
        params = {"purpose": purpose, "limit": limit, "after": after}
        return self._json(
            "GET", "/v1/files", params={k: v for k, v in params.items() if v is not None}
        )

    def iter_files(self, purpose: str | None = None, page_size: int = 100) -> Iterator[JSON]:
        """Every file of the tenant (of one purpose), newest first, page after page."""
        return self._pages("/v1/files", {"purpose": purpose}, page_size)

    def upload(
        self, source: str | Path | bytes, purpose: str = "batch", filename: str | None = None
    ) -> JSON:
        """POST /v1/files from a path or from bytes; `purpose` is batch, training or model."""
        if isinstance(source, bytes):
            return self._upload(filename or "input.jsonl", source, purpose)
        path = Path(source)
        with path.open("rb") as f:
            return self._upload(filename or path.name, f, purpose)

    def _upload(self, name: str, content: bytes | BinaryIO, purpose: str) -> JSON:
        files = {"file": (name, content)}
        return self._json("POST", "/v1/files", files=files, data={"purpose": purpose})

    def file(self, file_id: str) -> JSON:
        return self._json("GET", f"/v1/files/{file_id}")

    def file_chunks(self, file_id: str) -> Iterator[bytes]:
        """The file's bytes as they arrive: a large output never has to fit in memory."""
        with self._transport_errors():
            with self.http.stream("GET", f"/v1/files/{file_id}/content") as response:
                if not response.is_success:
                    response.read()
                    _checked(response)
                yield from response.iter_bytes()

    def file_content(self, file_id: str) -> bytes:
        return b"".join(self.file_chunks(file_id))

    def download(self, file_id: str, path: str | Path) -> Path:
        """Stream the file into `path`; a failed download leaves no partial file behind."""
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        try:
            with partial.open("wb") as out:
                for chunk in self.file_chunks(file_id):
                    out.write(chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def delete_file(self, file_id: str) -> None:
        self._request("DELETE", f"/v1/files/{file_id}")

    # -- jobs ------------------------------------------------------------------------------

    def naming_upload(self, file_id: str, send: Callable[[], JSON]) -> JSON:
        """`send()`, a request that names the upload `file_id`; when the farm refuses it (no
        such model, a quota, a bad field), the upload is deleted before the refusal is raised:
        left behind, it would only count against the tenant's storage."""
        try:
            return send()
        except ApiError:
            with suppress(ClientError):
                self.delete_file(file_id)
            raise

    def create_job(self, body: JSON, idempotency_key: str | None = None) -> JSON:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def job(self, job_id: str, wait: float = 0) -> JSON:
        """GET /v1/jobs/{id}; with `wait`, the API holds the answer up to that many seconds
        (`Prefer: wait`, at most MAX_SERVER_WAIT) until the job has finished."""
        if not wait:
            return self._json("GET", f"/v1/jobs/{job_id}")
        headers = {"Prefer": f"wait={wait:g}"}
        # The answer may take `wait` seconds by design: the read timeout must cover it.
        return self._json("GET", f"/v1/jobs/{job_id}", headers=headers, timeout=wait + self.timeout)

    def jobs(
        self,
        status: str | None = None,
        type: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> JSON:
        """One page, newest first: `{"data": [Job], "has_more", "last_id"}`."""
        params = {"status": status, "type": type, "limit": limit, "after": after}
        return self._json(
            "GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None}
        )

    def iter_jobs(
        self, status: str | None = None, type: str | None = None, page_size: int = 100
    ) -> Iterator[JSON]:
        """Every job (of that status and type), newest first, fetching pages as needed."""
        return self._pages("/v1/jobs", {"status": status, "type": type}, page_size)

    def cancel_job(self, job_id: str) -> JSON:
        """The job, `cancelling` (workers stop at their next micro-batch) or `cancelled`."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def retry_job(self, job_id: str) -> JSON:
        """A new job over just the failed items of a finished batch job."""
        return self._json("POST", f"/v1/jobs/{job_id}/retry")

    def delete_job(self, job_id: str) -> None:
        """A finished job and its result files (409 while it runs: cancel it first)."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str, limit: int = 20, after: int | None = None) -> JSON:
        """One page of the job's event log, oldest first."""
        params: JSON = {"limit": limit} if after is None else {"limit": limit, "after": after}
        return self._json("GET", f"/v1/jobs/{job_id}/events", params=params)

    def iter_events(self, job_id: str, page_size: int = 100) -> Iterator[JSON]:
        return self._pages(f"/v1/jobs/{job_id}/events", {}, page_size)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 5,
        on_progress: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Block until the job ends and return it; TimeoutError after `timeout` seconds.

        Each request long-polls (`Prefer: wait=poll`), so a job that ends is seen at once, not
        at the next poll; `on_progress(job)` is called with every answer, the last one included,
        and at least once a second (a running job's counts and `progress`, with its
        `items_per_second` and `eta_seconds`, move that often).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if on_progress is not None:
            poll = min(poll, PROGRESS_EVERY)
        while True:
            hold = min(poll, MAX_SERVER_WAIT)
            if deadline is not None:
                hold = max(0.1, min(hold, deadline - time.monotonic()))
            job = self.job(job_id, wait=hold)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:g} s")

    # -- models, webhooks, usage -----------------------------------------------------------

    def models(self) -> list[JSON]:
        """Every model this tenant can name (builtin ones too), with its versions."""
        data: list[JSON] = self._json("GET", "/v1/models")["data"]
        return data

    def model(self, name: str) -> JSON:
        return self._json("GET", f"/v1/models/{name}")

    def register_model(
        self, source: str | Path, name: str, framework: str, task: str | None = None
    ) -> JSON:
        """Upload a model file (purpose `model`) and register it as a new version of `name`
        (a registration the farm refuses deletes the upload).

        The version answered may still be `validating` where the farm validates in a worker:
        `model(name)` shows when it is `ready`.
        """
        uploaded = self.upload(source, purpose="model")
        body: JSON = {"name": name, "framework": framework, "file_id": uploaded["id"]}
        if task is not None:
            body["task"] = task
        return self.naming_upload(
            uploaded["id"], lambda: self._json("POST", "/v1/models", json=body)
        )

    def wait_model(self, name: str, version: int, timeout: float = 300, poll: float = 0.5) -> JSON:
        """Block until version `version` of `name` is validated: the version, `ready` or
        `failed` (with its `error`); TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            versions: list[JSON] = self.model(name).get("versions") or []
            found = next((v for v in versions if v.get("version") == version), None)
            if found is not None and found.get("status") != "validating":
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name}@{version} is still being validated after {timeout:g} s")
            time.sleep(poll)

    def webhook_secret(self) -> str:
        """The tenant's `whsec_...` signing secret, for verifying webhook requests."""
        key: str = self._json("GET", "/v1/webhooks/secret")["key"]
        return key

    def usage(
        self, start: str | None = None, end: str | None = None, group_by: str | None = None
    ) -> JSON:
        """GET /v1/usage (`from`/`to` dates, `group_by` day, model or job_type).

        A farm older than the usage endpoint answers 404, raised as ApiError like any other.
        """
        params = {"from": start, "to": end, "group_by": group_by}
        return self._json(
            "GET", "/v1/usage", params={k: v for k, v in params.items() if v is not None}
        )


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    retry_after = _seconds(response.headers.get("Retry-After"))
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        # Not the API's error shape: a proxy in between, or not a modelfarm API at all.
        code, message = "http_error", response.text[:200] or response.reason_phrase
    raise ApiError(response.status_code, code, message, retry_after)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the farm sends seconds, so this is someone else's answer
