"""Celery task messages for a Redis broker, built here and pushed many at once.

A submission batch publishes one plan message per job. Through Celery, each message costs a
`send_task` (task options, a kombu Producer, a message dict, a JSON dump and a Redis round
trip): about 1 ms of CPU here, more than the rest of a one-item submission. Built here, a
message costs a JSON dump and two uuids, and a batch goes to Redis as one LPUSH per queue.

The message is exactly what Celery 5 (task protocol 2, JSON serializer) and kombu's Redis
transport store for `send_task(name, args=args, queue=queue)` with this farm's settings: the
body `[args, {}, embed]`, base64-encoded; the headers Celery's `as_task_v2` writes; the
default exchange, with the queue as routing key; the priority given (app/broker/dispatch.py says
which of the queue's lists each goes to). tests/integration/test_task_messages.py compares it
with what Celery pushes and has a real worker run a job from it, so a Celery upgrade that
changes the format fails there.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _origin() -> str:
    # Celery's anon_nodename(): the producer as Flower shows it.
    return f"gen{os.getpid()}@{socket.gethostname()}"


# What Celery calls the app's thread_oid: where results would be replied to. This farm ignores
# results (task_ignore_result), but Celery always names one, so the message does too.
_REPLY_TO = str(uuid.uuid4())


def task_message(task: str, args: Sequence[Any], queue: str, priority: int = 0) -> str:
    """One message, as the JSON text kombu's Redis transport pushes onto the queue's list."""
    task_id = str(uuid.uuid4())
    args = list(args)
    body = json.dumps([args, {}, _EMBED]).encode()
    message = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),  # Celery's saferepr, for ids: the same text
            "kwargsrepr": "{}",
            "origin": _origin(),
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": _REPLY_TO,
            "delivery_mode": 2,  # persistent
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message)
