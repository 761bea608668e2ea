"""Which task messages the broker still holds, so the sweeper re-publishes only lost work.

Redis only (the default broker): waiting messages are lists named after the queues, and
messages taken by a consumer but not yet acknowledged sit in the `unacked` hash. A message
held unacknowledged for longer than a lease belongs to a consumer that died without giving it
back (a live worker claims its work in PostgreSQL at once), so it does not count as live.
"""

from __future__ import annotations

import base64
import json
import time
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


def live_task_keys(
    redis_url: str, queues: tuple[str, ...], held_fresh_seconds: float
) -> set[TaskKey] | None:
    """Task keys the broker will still deliver; None when the broker cannot be inspected."""
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        messages: list[Any] = []
        for queue in queues:
            for name in [queue, *client.scan_iter(match=f"{queue}{PRIORITY_SEP}*")]:
                messages.extend(_loads(raw) for raw in client.lrange(name, 0, -1))
        cutoff = time.time() - held_fresh_seconds
        held: Any = client.zrange("unacked_index", 0, -1, withscores=True)
        for tag, score in held:
            entry = _loads(client.hget("unacked", tag) or b"null")
            # Held too long means its consumer is gone (a live worker claims work at once).
            if score >= cutoff and isinstance(entry, list) and entry:
                messages.append(entry[0])
        return {key for m in messages if (key := _task_key(m)) is not None}
    finally:
        client.close()
