"""Text as it is decoded, from the worker running a streamed request to the API process that
answers it: Redis pub/sub on a channel named after the job.

The worker publishes `{"i": choice index, "t": text delta}` messages as the runner decodes;
the API, subscribed before it submits the job, forwards them as server-sent events. Pub/sub
keeps no message for a late or absent listener, so the stream is only ever a head start: the
API ends every stream from the job's output line (app/api/openai/streams.py), which sends what
the messages missed and the `finish_reason` and usage. Without a Redis (RabbitMQ as broker and
no REDIS_URL) nothing is published and the stream comes whole at the job's end.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from app.config import get_settings

log = logging.getLogger(__name__)

_PREFIX = "modelfarm:stream:"
_clients: dict[str, Any] = {}


def channel(job_id: str) -> str:
    return _PREFIX + job_id


def redis_url() -> str | None:
    settings = get_settings()
    url = settings.redis_url or settings.broker_url
    return url if url and url.startswith(("redis://", "rediss://", "unix://")) else None


class Publisher:
    """The worker's side: deltas of one job, published in order on one connection (Redis
    delivers a connection's messages to a subscriber in the order they were sent)."""

    def __init__(self, job_id: str) -> None:
        self._channel = channel(job_id)
        url = redis_url()
        self._client = None if url is None else _client(url)

    def __call__(self, index: int, delta: str) -> None:
        if self._client is None or not delta:
            return
        try:
            self._client.publish(self._channel, orjson.dumps({"i": index, "t": delta}))
        except Exception:  # a lost delta costs the stream its head start, never the job
            log.warning("could not publish a stream delta on %s", self._channel, exc_info=True)
            self._client = None


def _client(url: str) -> Any:
    client = _clients.get(url)
    if client is None:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        _clients[url] = client
    return client


class Subscription:
    """The API's side: one request's channel, subscribed before its job is submitted."""

    def __init__(self, job_id: str) -> None:
        self._channel = channel(job_id)
        self._client: Any = None
        self._pubsub: Any = None

    async def __aenter__(self) -> Subscription:
        url = redis_url()
        if url is not None:
            import redis.asyncio

            try:
                self._client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=5)
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(self._channel)
            except Exception:
                log.warning("no stream subscription for %s", self._channel, exc_info=True)
                await self._close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        try:
            if self._pubsub is not None:
                await self._pubsub.aclose()
            if self._client is not None:
                await self._client.aclose()
        except Exception:
            log.debug("closing a stream subscription failed", exc_info=True)
        self._pubsub = self._client = None

    async def next(self, timeout: float) -> tuple[int, str] | None:
        """The next delta, or None when none came within `timeout` seconds."""
        if self._pubsub is None:
            import asyncio

            await asyncio.sleep(timeout)
            return None
        try:
            message = await self._pubsub.get_message(timeout=timeout)
        except Exception:
            log.warning("stream subscription %s broke", self._channel, exc_info=True)
            await self._close()
            return None
        if message is None or message.get("type") != "message":
            return None
        data = orjson.loads(message["data"])
        return int(data["i"]), str(data["t"])
