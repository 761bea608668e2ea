"""`stream: true` for chat completions and completions: server-sent events in OpenAI's chunk
format (`chat.completion.chunk` / `text_completion`), then `data: [DONE]`.

The request's job runs on a worker like any; its runner's text deltas come through Redis
pub/sub (app/streams.py) as they are decoded. The answer's headers wait for the first delta or
the job's end, so a request the worker refuses (a bad parameter, a prompt over the context)
is still a plain 400 that the client raises. The job's output line ends every stream: what the
deltas missed (a listener is never sure to hear them all) is sent from it, then each choice's
`finish_reason`, and the usage on the last chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import orjson
from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api import waits
from app.api.openai import sync
from app.api.submissions import group_commit
from app.models import Job, Tenant
from app.services import control
from app.services import jobs as job_service
from app.services.errors import Conflict
from app.streams import Subscription
from app.unit_of_work import run_retrying

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
#: how long one wait for a delta lasts before the job's end is looked at again
_TICK = 0.05

Event = tuple[int, str] | Job | None  # a delta, the ended job, or the wait ran out


class _Stream:
    def __init__(self, tenant: Tenant, endpoint: str, model: str, include_usage: bool) -> None:
        self.tenant, self.endpoint, self.model = tenant, endpoint, model
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if endpoint == CHAT else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.sent: dict[int, str] = {}  # the text sent so far, per choice

    def chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        kind = "chat.completion.chunk" if self.endpoint == CHAT else "text_completion"
        body = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "system_fingerprint": None,
        }
        if usage is not None:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def delta(self, index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        if self.endpoint != CHAT:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        delta: dict[str, Any] = {"content": text} if text or finish_reason is None else {}
        if index not in self.sent and finish_reason is None:
            delta["role"] = "assistant"  # the first chunk of a choice names its role
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def text(self, index: int, text: str) -> bytes:
        choice = self.delta(index, text)
        self.sent[index] = self.sent.get(index, "") + text
        return self.chunk([choice])

    def ending(self, body: dict[str, Any]) -> list[bytes]:
        """The chunks the job's answer adds: the text the deltas missed, the finish, usage."""
        out: list[bytes] = []
        choices = body.get("choices", [])
        for choice in choices:
            index = int(choice["index"])
            final = choice["message"]["content"] if self.endpoint == CHAT else choice["text"]
            sent = self.sent.get(index, "")
            if not final.startswith(sent):  # a redone run decoded other text: cannot take back
                return [
                    _error(
                        500,
                        "stream_diverged",
                        "the streamed text was decoded again differently after a worker was lost",
                    )
                ]
            if final[len(sent) :] or index not in self.sent:
                out.append(self.text(index, final[len(sent) :]))
        for number, choice in enumerate(choices):
            last = number == len(choices) - 1
            finish = self.delta(int(choice["index"]), "", choice["finish_reason"])
            out.append(self.chunk([finish], body.get("usage") if last else None))
        if self.include_usage:  # OpenAI's `stream_options.include_usage`: a chunk of its own
            out.append(self.chunk([], body.get("usage")))
        return out


def _error(status: int, code: str, message: str) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    error = {"message": message, "type": kind, "param": None, "code": code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def _cancel(tenant: Tenant, job_id: str) -> None:
    """Nobody reads the answer any more: its worker stops at its next decode step."""

    def cancel(session: Session) -> None:
        control.request_cancel(session, tenant, job_id)  # an assembly goes once it commits

    try:
        run_retrying(cancel)
    except Conflict:  # it ended meanwhile
        return
    except Exception:
        log.warning("could not cancel the abandoned stream's job %s", job_id, exc_info=True)


async def _next(
    tenant: Tenant, job_id: str, subscription: Subscription, ended: Any, deadline: float
) -> Event:
    last_read = time.monotonic()
    while time.monotonic() < deadline:
        delta = await subscription.next(_TICK)
        if delta is not None:
            return delta
        if ended.is_set() or time.monotonic() - last_read >= waits.SAFETY_POLL_SECONDS:
            ended.clear()
            job = await run_in_threadpool(sync.load, tenant, job_id)
            last_read = time.monotonic()
            if job.is_terminal:
                return job
    return None


async def respond(
    tenant: Tenant,
    submission: job_service.Submission,
    endpoint: str,
    model: str,
    include_usage: bool,
) -> Response:
    job_id = submission.job.id
    deadline = time.monotonic() + sync.WAIT_SECONDS
    stack = AsyncExitStack()
    try:
        # Both listening before the submission: nothing the worker says is said too early.
        subscription = await stack.enter_async_context(Subscription(job_id))
        ended = await stack.enter_async_context(waits.job_end(job_id))
        await run_in_threadpool(group_commit.submit, submission)
        first = await _next(tenant, job_id, subscription, ended, deadline)
        if first is None or isinstance(first, Job):
            await stack.aclose()
            if first is None:
                return sync.timed_out(job_id)
            status, body = await sync.answer(tenant, first)
            if status != 200:
                return JSONResponse(body, status_code=status)
    except BaseException:
        await stack.aclose()
        raise
    stream = _Stream(tenant, endpoint, model, include_usage)

    async def events() -> AsyncIterator[bytes]:
        event: Event = first
        async with stack:
            try:
                while isinstance(event, tuple):
                    yield stream.text(*event)
                    event = await _next(tenant, job_id, subscription, ended, deadline)
            finally:
                if not isinstance(event, Job):  # the client left, or the wait ran out
                    asyncio.get_running_loop().run_in_executor(None, _cancel, tenant, job_id)
            if event is None:
                yield _error(503, "timeout", f"no worker finished within {sync.WAIT_SECONDS:g} s")
        if isinstance(event, Job):
            status, body = await sync.answer(tenant, event)
            if status != 200:
                yield _error(status, body["error"].get("code") or "error", body["error"]["message"])
            else:
                for chunk in stream.ending(body):
                    yield chunk
        yield b"data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
