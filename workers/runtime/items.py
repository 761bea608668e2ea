"""Turning JSONL input lines into output and error lines, a chunk at a time.

No Celery and no database here: the task feeds chunks in and records what comes out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from workers.runtime.base import ItemError, Runner, RunOptions

Line = tuple[int, bytes]  # (1-based line number in the input file, raw bytes)


@dataclass
class ChunkResult:
    outputs: list[str] = field(default_factory=list)  # JSONL lines, input order
    errors: list[str] = field(default_factory=list)


def iter_lines(stream: IO[bytes], first_line: int = 1) -> Iterator[Line]:
    """Non-blank lines with their line numbers; blank lines are not items."""
    for number, raw in enumerate(stream, start=first_line):
        if raw.strip():
            yield number, raw


def iter_chunks(lines: Iterable[Line], size: int) -> Iterator[list[Line]]:
    chunk: list[Line] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _error(custom_id: Any, code: str, message: str, line: int) -> str:
    # `line` (1-based) lets a user find the item even when it had no usable custom_id.
    return _dump(
        {"custom_id": custom_id, "error": {"code": code, "message": message}, "line": line}
    )


def run_chunk(runner: Runner, lines: list[Line], options: RunOptions) -> ChunkResult:
    """Parse and validate each line, run the good ones in one call, keep input order.

    A bad line becomes an error line and never stops the others.
    """
    result = ChunkResult()
    good_ids: list[Any] = []
    good_values: list[Any] = []
    for number, raw in lines:
        try:
            item = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            result.errors.append(_error(None, "invalid_json", f"line {number}: {exc}", number))
            continue
        if not isinstance(item, dict):
            result.errors.append(
                _error(None, "invalid_item", f"line {number}: not a JSON object", number)
            )
            continue
        custom_id = item.get("custom_id")
        if "input" not in item:
            result.errors.append(
                _error(custom_id, "missing_input", f"line {number} has no `input`", number)
            )
            continue
        try:
            good_values.append(runner.prepare(item["input"], options))
        except ItemError as exc:
            result.errors.append(_error(custom_id, exc.code, exc.message, number))
        else:
            good_ids.append(custom_id)
    if good_values:
        outputs = runner.run(good_values, options)
        result.outputs = [
            _dump({"custom_id": cid, "output": out})
            for cid, out in zip(good_ids, outputs, strict=True)
        ]
    return result
