"""Which task messages the broker still holds, so the sweeper re-publishes only lost work.

Redis only (the default broker): waiting messages are lists named after the queues, and
messages taken by a consumer but not yet acknowledged sit in the `unacked` hash. A message
held unacknowledged for longer than a lease belongs to a consumer that died without giving it
back (a live worker claims its work in PostgreSQL at once), so it does not count as live.
"""

from __future__ import annotations

import base64
import json
from typing import Any

TaskKey = tuple[str, tuple[Any, ...]]  # (task name, args)
PRIORITY_SEP = "\x06\x16"  # kombu's separator for per-priority queue lists


def _task_key(message: Any) -> TaskKey | None:
    try:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(message["headers"]["task"]), tuple(args)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _loads(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


PAGE = 1000  #: messages read per round trip
MAX_MESSAGES = 200_000  #: past this many, the scan gives up (memory and time stay bounded)


class _TooMany(Exception):
    pass


def live_task_keys(
    redis_url: str, queues: tuple[str, ...], held_fresh_seconds: float
) -> set[TaskKey] | None:
    """Task keys the broker will still deliver; None when the broker cannot be inspected (or
    holds more than MAX_MESSAGES: the sweeper then falls back to the visibility timeout)."""
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    keys: set[TaskKey] = set()
    seen = 0

    def take(messages: list[Any]) -> None:
        nonlocal seen
        seen += len(messages)
        if seen > MAX_MESSAGES:
            raise _TooMany
        keys.update(k for m in messages if (k := _task_key(m)) is not None)

    try:
        for queue in queues:
            for name in [queue, *client.scan_iter(match=f"{queue}{PRIORITY_SEP}*")]:
                start = 0
                while page := client.lrange(name, start, start + PAGE - 1):
                    take([_loads(raw) for raw in page])
                    start += PAGE
        # Held too long means its consumer is gone (a live worker claims work at once).
        # Redis's clock, not this host's: every sweeper judges by the same one, whatever its
        # host's drift (kombu scores a message by its consumer's clock: that one is not ours).
        seconds, micros = client.time()
        cutoff = seconds + micros / 1e6 - held_fresh_seconds
        start = 0
        while True:
            tags: list[Any] = list(
                client.zrangebyscore("unacked_index", cutoff, "+inf", start=start, num=PAGE)
            )
            if not tags:
                break
            entries = [_loads(raw or b"null") for raw in client.hmget("unacked", tags)]
            take([e[0] for e in entries if isinstance(e, list) and e])
            start += PAGE
        return keys
    except _TooMany:
        return None
    finally:
        client.close()
