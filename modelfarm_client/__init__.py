"""A small Python client of the modelfarm API, with nothing of the server in it.

    from modelfarm_client import Client

    with Client("http://127.0.0.1:8000", "mf_...") as farm:
        file = farm.upload("sentences.jsonl")
        job = farm.create_job({"model": "minilm", "input": {"file_id": file["id"]}})
        job = farm.wait(job["id"], on_progress=lambda j: print(j["counts"]))

It imports httpx and the standard library only (tests/unit/test_client_package.py holds it to
that), so scripts and notebooks can use it without torch, SQLAlchemy or Celery.
"""

from __future__ import annotations

from modelfarm_client.client import JSON, MAX_SERVER_WAIT, TERMINAL_STATUSES, Client
from modelfarm_client.errors import ApiError, ClientError, FarmUnreachable

__all__ = [
    "JSON",
    "MAX_SERVER_WAIT",
    "TERMINAL_STATUSES",
    "ApiError",
    "Client",
    "ClientError",
    "FarmUnreachable",
]
