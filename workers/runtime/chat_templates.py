"""Rendering chat templates in a child process bounded in time and memory.

The child (workers/runtime/chat_sandbox.py) lives as long as its parent process and renders
one chat at a time: a round trip costs about a tenth of a millisecond, so a worker renders
thousands of chats a second. A template that runs past RENDER_SECONDS is killed with its
child (the next render starts a fresh one), one that allocates past MEMORY_BYTES fails with a
MemoryError inside the child: either way the item gets a `template_error` and the worker goes on.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RENDER_SECONDS = 2.0
#: how long a new child may take to say it is ready (an interpreter and jinja2 starting)
START_SECONDS = 60.0
MEMORY_BYTES = 768 * 1024 * 1024
_SCRIPT = Path(__file__).with_name("chat_sandbox.py")


class TemplateError(Exception):
    """The template failed, ran too long or used too much memory; the message says which."""


class _Child:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.buffer = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            # -I: no user site, no current directory on the path: nothing but jinja2 loads.
            self.proc = subprocess.Popen(
                [sys.executable, "-I", str(_SCRIPT), str(MEMORY_BYTES)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self.buffer = b""
            try:
                ready = self._read_line(self.proc, START_SECONDS)
            except TemplateError:
                raise TemplateError("the chat template's sandbox did not start") from None
            if json.loads(ready) != {"ready": True}:
                self._kill()
                raise TemplateError("the chat template's sandbox did not start")
        return self.proc

    def _read_line(self, proc: subprocess.Popen[bytes], seconds: float) -> bytes:
        """The child's next line, or TemplateError (the child killed) past `seconds`."""
        assert proc.stdout is not None
        deadline = time.monotonic() + seconds
        fd = proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self._kill()
                raise TemplateError(f"the chat template ran longer than {seconds:g} s")
            piece = os.read(fd, 1 << 20)
            if not piece:  # the child died (the kernel's OOM killer, a crash)
                self._kill()
                raise TemplateError("the chat template's sandbox died rendering it")
            self.buffer += piece
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def render(self, request: dict[str, Any], seconds: float) -> dict[str, Any]:
        with self.lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
            except BrokenPipeError:
                self._kill()
                raise TemplateError("the chat template's sandbox stopped") from None
            answer: dict[str, Any] = json.loads(self._read_line(proc, seconds))
            return answer


_child = _Child()


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    specials: dict[str, str],
    seconds: float = RENDER_SECONDS,
) -> str:
    """The chat as the model's template writes it, generation prompt added."""
    answer = _child.render(
        {"template": template, "messages": messages, "specials": specials}, seconds
    )
    if "error" in answer:
        raise TemplateError(f"the chat template failed: {answer['error']}")
    return str(answer["text"])
