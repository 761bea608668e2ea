"""One `modelfarm up` per data directory.

A second `up` on the same directory would start a second embedded PostgreSQL on the same
files, fight over the API port, mint another key and rewrite farm.json without the URLs the
running farm's commands read. So `up` holds an exclusive lock on DATA_DIR/farm.lock for its
whole life, and a second one says at once who holds it and ends. The operating system drops
the lock when the holder dies, however it dies: a stale lock cannot keep a farm from starting.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = "farm.lock"


class FarmRunning(Exception):
    """Another `up` holds the directory: its PID (as it wrote it) and its API's URL."""

    def __init__(self, data_dir: Path, pid: str, api_url: str | None) -> None:
        where = f"API at {api_url}, " if api_url else ""
        super().__init__(
            f"a farm is already running in {data_dir} ({where}PID {pid or '?'}); "
            f"use it, or stop it first (Ctrl-C in its terminal, or kill {pid or 'its PID'})"
        )
        self.pid = pid


def hold(data_dir: Path, api_url: str | None = None) -> IO[str]:
    """Take the directory for this process (keep the returned file open while the farm runs),
    or raise FarmRunning naming the holder. `api_url` is what the holder wrote in farm.json."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip()
        handle.close()
        raise FarmRunning(data_dir, pid, api_url) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
