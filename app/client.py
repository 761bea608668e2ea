"""A small HTTP client of the public API, used by the CLI and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            raise ApiError(response.status_code, error["code"], error["message"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(response.status_code, "http_error", response.text[:200]) from None

    def upload(self, path: Path, purpose: str = "batch") -> dict[str, Any]:
        with path.open("rb") as f:
            files = {"file": (path.name, f)}
            return self._check(
                self.http.post("/v1/files", files=files, data={"purpose": purpose})
            ).json()

    def create_job(
        self, body: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/v1/jobs", json=body, headers=headers)).json()

    def job(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        headers = {"Prefer": f"wait={wait:g}"} if wait else {}
        return self._check(
            self.http.get(f"/v1/jobs/{job_id}", headers=headers, timeout=wait + 30)
        ).json()

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 5) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id, wait=poll)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']}")

    def file_chunks(self, file_id: str) -> Iterator[bytes]:
        with self.http.stream("GET", f"/v1/files/{file_id}/content") as response:
            if not response.is_success:
                response.read()
                self._check(response)
            yield from response.iter_bytes()
