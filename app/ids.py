"""Public ids: a type prefix plus a time-ordered random part, so ids sort newest-last.

Monotonic within a process, as a ULID's monotonic mode: an id made in the same millisecond as
the one before (or while the clock stands still or steps back) is that one's random part plus
one, so a batch built in one process (a group commit's submissions, app/api/submissions.py)
lists newest first in the order it was made, not in the order of its random parts.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_RANDOM_BITS = 80

_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random part) of the last id made here


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _next(millis: int) -> tuple[int, int]:
    """The (milliseconds, random part) after the last: fresh randomness in a new millisecond;
    else the last plus one, carried into the milliseconds when the random part is spent."""
    global _last
    with _lock:
        last_millis, last_rand = _last
        if millis > last_millis:
            _last = (millis, int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big"))
        elif last_rand + 1 < 1 << _RANDOM_BITS:
            _last = (last_millis, last_rand + 1)
        else:
            _last = (last_millis + 1, 0)
        return _last


def new_id(prefix: str) -> str:
    """``prefix_`` + 10 chars of milliseconds + 16 chars (80 bits): random, or one more than the
    last id's in the same millisecond."""
    millis, rand = _next(time.time_ns() // 1_000_000)
    return f"{prefix}_{_encode(millis, 10)}{_encode(rand, 16)}"
