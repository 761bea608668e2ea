"""A retry's lines keep the numbers they had in the file the tenant uploaded.

A retry runs over an input of its own: the failed lines of the job it retries, one after the
other. Numbered against that input, its error lines would point at lines of a file the tenant
never wrote. So the planner that makes the retry's input also writes, beside it in the retry's
job folder (`control.retry_lines_uri`), each of its lines' original number: 8 bytes a line, in
order. Whoever reads the retry's input (a shard, an expired batch's assembly) turns the numbers
back with `LineMap`, reading only the block it needs; a retry of a retry looks its source's
numbers up the same way, so the numbers stay the first file's along the whole chain.

A job without such a file (not a retry, or one made before the file existed) keeps its own
numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import IO, Any

from app.storage import get_store
from workers.runtime.items import Line
from workers.tasks.results import ResultWriter

_ENTRY = struct.Struct("<Q")
_BLOCK = 4096  #: entries read at once


class LineMap:
    """The original number of each line of a retry's input (1-based both sides); a line past
    the map's end, or any line without a map, keeps its own number."""

    def __init__(self, uri: str | None) -> None:
        self._file: IO[Any] | None = None
        if uri is not None:
            try:
                self._file = get_store().open(uri, "rb")
            except FileNotFoundError:
                self._file = None
        self._start = 0
        self._block: tuple[int, ...] = ()

    def __call__(self, number: int) -> int:
        if self._file is None:
            return number
        index = number - 1
        if not self._start <= index < self._start + len(self._block):
            self._start = index - index % _BLOCK
            self._file.seek(self._start * _ENTRY.size)
            data = self._file.read(_BLOCK * _ENTRY.size)
            self._block = tuple(v for (v,) in _ENTRY.iter_unpack(data[: len(data) // 8 * 8]))
        offset = index - self._start
        return self._block[offset] if 0 <= offset < len(self._block) else number

    def lines(self, lines: Iterable[Line]) -> Iterator[Line]:
        """`lines` with their original numbers."""
        if self._file is None:
            yield from lines
            return
        for number, raw in lines:
            yield self(number), raw

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> LineMap:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class LineMapWriter(ResultWriter):
    """Writes a retry input's original numbers, durable once closed (as a result file)."""

    def __init__(self, uri: str) -> None:
        super().__init__(get_store(), uri)

    def add(self, original: int) -> None:
        self.write_bytes(_ENTRY.pack(original), 1)

    def __enter__(self) -> LineMapWriter:
        return self
