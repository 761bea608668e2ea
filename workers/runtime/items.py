"""Turning JSONL input lines into output and error lines, a chunk at a time.

No Celery and no database here: the task feeds chunks in and records what comes out.

Every input line is hostile until proven otherwise. Whatever goes wrong with one line (it is
not JSON, not UTF-8, nested too deep, too long, has an unusable custom_id, crashes the model)
becomes that line's error line; only `Stopped` leaves this module. Output is strict JSON:
never NaN or Infinity, always encodable UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import IO, Any

import orjson

from workers.runtime.base import ItemError, Runner, RunOptions, Stopped

#: A line longer than this many bytes is an error line, and is never held whole in memory.
DEFAULT_MAX_LINE_BYTES = 1024 * 1024
#: custom_id is null, a string of at most this many characters, or a JSON-safe integer.
MAX_CUSTOM_ID_CHARS = 512
MAX_CUSTOM_ID_INT = 2**53 - 1  # larger integers lose precision in JavaScript readers

#: (1-based line number, the raw bytes, or None when the line is over the byte limit)
Line = tuple[int, bytes | None]

_SKIP = 64 * 1024


@dataclass
class ChunkResult:
    outputs: list[bytes] = field(default_factory=list)  # JSONL lines, input order
    errors: list[bytes] = field(default_factory=list)
    tokens: int = 0  #: what the model read for these lines (text models; 0 otherwise)
    completion_tokens: int = 0  #: what it wrote for them (text generation; 0 otherwise)


def read_lines(
    stream: IO[bytes], first_line: int = 1, max_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | None, int]]:
    """Every line as (number, bytes or None if longer than max_bytes, bytes consumed).

    The consumed size lets the planner keep byte offsets exact, over-long lines included.
    """
    number = first_line
    while True:
        raw = stream.readline(max_bytes + 1)
        if not raw:
            return
        size = len(raw)
        if size > max_bytes and not raw.endswith(b"\n"):
            while True:  # skip the rest of the line without holding it
                rest = stream.readline(_SKIP)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None, size
        else:
            yield number, raw, size
        number += 1


def iter_lines(
    stream: IO[bytes], first_line: int = 1, max_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Line]:
    """Items with their line numbers; blank lines are not items, over-long lines are."""
    for number, raw, _ in read_lines(stream, first_line, max_bytes):
        if raw is None or raw.strip():
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


_BOM = "\ufeff".encode()
# The standard library's encoders, for what orjson will not write (lone surrogates, integers
# over 64 bits, keys that are not strings) and to tell a NaN from a null (below).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def parse_line(raw: bytes) -> Any:
    """Strict JSON in strict UTF-8, by orjson (several times faster than the json module):
    NaN, Infinity, numbers that overflow a double, invalid UTF-8 and lone surrogates, raw or
    escaped, are refused (a ValueError), so every number it returns is finite. A byte order
    mark, which some editors write, is allowed."""
    return orjson.loads(raw[len(_BOM) :] if raw.startswith(_BOM) else raw)


def dump_json(obj: Any) -> bytes:
    """`obj` as compact UTF-8 JSON. Raises ValueError for NaN or infinite floats."""
    try:
        data = orjson.dumps(obj)
    except TypeError:
        try:
            return _ENCODER.encode(obj).encode()
        except UnicodeEncodeError:
            # A lone surrogate (from a model's own config, say): escaped, the line stays valid.
            return _ASCII_ENCODER.encode(obj).encode()
    if b"null" in data:
        # orjson writes NaN and infinity as null; the standard encoder refuses them.
        _ENCODER.encode(obj)
    return data


def dump_line(obj: dict[str, Any]) -> bytes:
    """One JSONL line as UTF-8. Raises ValueError for NaN or infinite floats."""
    return dump_json(obj) + b"\n"


def output_line(custom_id: Any, output: Any) -> bytes:
    """`{"custom_id": ..., "output": ...}` as one line; the custom_id (null when absent) is
    written apart, so that only an output holding a null pays for the NaN check."""
    head = orjson.dumps(custom_id)  # checked by check_custom_id: a str, an int or None
    return b'{"custom_id":' + head + b',"output":' + dump_json(output) + b"}\n"


def too_large(size: int, options: RunOptions) -> tuple[str, str]:
    """(code, message) of an output line over the limit."""
    limit = options.max_output_bytes
    return "output_too_large", f"the output line is {size} bytes; the limit is {limit}"


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def json_error_words(number: int, exc: ValueError) -> str:
    """Where a line's JSON broke, in words a person can act on: 'line 3, column 7: not valid
    JSON (unexpected end of data)'. The decoder's own `line 1 column 7 (char 6)` counted
    within the one line, which read as a second, contradicting line number."""
    msg, column = getattr(exc, "msg", None), getattr(exc, "colno", None)
    if not isinstance(msg, str) or not isinstance(column, int):
        return f"line {number}: {_short(exc)}"
    what = "not valid UTF-8 text" if "UTF-8" in msg else "not valid JSON"
    return f"line {number}, column {column}: {what} ({msg[:200]})"


def error_line(custom_id: Any, code: str, message: str, line: int) -> bytes:
    # `line` (1-based) lets a user find the item even when it had no usable custom_id.
    return dump_line(
        {"custom_id": custom_id, "error": {"code": code, "message": message}, "line": line}
    )


def check_custom_id(value: Any) -> None:
    """Raises ItemError unless value is null, a short string or a JSON-safe integer."""
    if value is None:
        return
    if isinstance(value, str):
        if len(value) > MAX_CUSTOM_ID_CHARS:
            raise ItemError(
                "invalid_custom_id",
                f"custom_id has {len(value)} characters; the limit is {MAX_CUSTOM_ID_CHARS}",
            )
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ItemError(
                "invalid_custom_id", "custom_id holds a lone surrogate (not valid Unicode)"
            ) from None
        return
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_CUSTOM_ID_INT:
            raise ItemError(
                "invalid_custom_id", f"an integer custom_id must be within +-{MAX_CUSTOM_ID_INT}"
            )
        return
    raise ItemError("invalid_custom_id", "custom_id must be a string, an integer or null")


@dataclass
class _Item:
    number: int
    custom_id: Any
    value: Any


def _read_item(runner: Runner, number: int, raw: bytes | None, options: RunOptions) -> _Item:
    """Parse and validate one line; raises ItemError with the custom_id it could trust."""
    if raw is None:
        limit = options.max_line_bytes
        raise ItemError("line_too_long", f"line {number} is longer than {limit} bytes")
    try:
        item = parse_line(raw)
    except ValueError as exc:  # not JSON, not UTF-8, NaN, nested over 1024 deep, ...
        raise ItemError("invalid_json", json_error_words(number, exc)) from None
    if not isinstance(item, dict):
        raise ItemError("invalid_item", f"line {number}: not a JSON object")
    custom_id = item.get("custom_id")
    check_custom_id(custom_id)
    if "input" not in item:
        raise _Identified(custom_id, "missing_input", f"line {number} has no `input`")
    try:
        value = runner.prepare(item["input"], options)
    except ItemError as exc:
        raise _Identified(custom_id, exc.code, exc.message) from None
    except Stopped:
        raise
    except Exception as exc:  # a runner's check that broke: this item's fault, not the job's
        message = f"the input could not be read: {type(exc).__name__}: {_short(exc)}"
        raise _Identified(custom_id, "invalid_input", message) from None
    return _Item(number, custom_id, value)


class _Identified(ItemError):
    """An ItemError for a line whose custom_id was usable, so the error line carries it."""

    def __init__(self, custom_id: Any, code: str, message: str) -> None:
        super().__init__(code, message)
        self.custom_id = custom_id


def _model_failure(exc: Exception) -> ItemError:
    return ItemError("item_failed", f"the model failed on this input: {type(exc).__name__}")


@dataclass
class Counted:
    """A run's outputs in order, and each value's tokens as the runner's tokenizer made them:
    what the model read (`tokens`) and, for text generation, what it wrote (`completion`);
    0 for a model without a tokenizer, or for an item that broke."""

    outputs: list[Any]
    tokens: list[int]
    completion: list[int]

    def __iadd__(self, other: Counted) -> Counted:
        self.outputs += other.outputs
        self.tokens += other.tokens
        self.completion += other.completion
        return self


def run_isolated(runner: Runner, values: list[Any], options: RunOptions) -> Counted:
    """Outputs in order, and each value's token counts (`Counted`). When a batch breaks, its
    items run one by one, so only an item that breaks the model itself becomes an error (an
    ItemError stands in for its output, 0 for its tokens); the counts of a call that broke are
    dropped, so no text counts twice."""
    if not values:
        return Counted([], [], [])
    read: list[int] = []
    wrote: list[int] = []
    counting = replace(options, on_tokens=read.extend, on_completion_tokens=wrote.extend)
    zeros = [0] * len(values)
    try:
        outputs = runner.run(values, counting)
        return Counted(
            outputs,
            read if len(read) == len(values) else zeros,
            wrote if len(wrote) == len(values) else list(zeros),
        )
    except Stopped:
        raise
    except Exception as exc:
        if len(values) == 1:
            return Counted([_model_failure(exc)], [0], [0])
    found = Counted([], [], [])
    for value in values:
        found += run_isolated(runner, [value], options)
    return found


def run_chunk(runner: Runner, lines: list[Line], options: RunOptions) -> ChunkResult:
    """Parse and validate each line, run the good ones in one call, keep input order.

    A bad line becomes an error line and never stops the others.
    """
    good: list[_Item] = []
    errors: list[tuple[int, bytes]] = []
    outputs: list[bytes] = []
    for number, raw in lines:
        try:
            good.append(_read_item(runner, number, raw, options))
        except _Identified as exc:
            errors.append((number, error_line(exc.custom_id, exc.code, exc.message, number)))
        except ItemError as exc:
            errors.append((number, error_line(None, exc.code, exc.message, number)))
    counted = run_isolated(runner, [item.value for item in good], options)
    for item, output in zip(good, counted.outputs, strict=True):
        line: bytes | None = None
        if isinstance(output, ItemError):
            line = error_line(item.custom_id, output.code, output.message, item.number)
        else:
            try:
                written = output_line(item.custom_id, output)
            except (ValueError, TypeError):
                message = "the model produced a value that is not valid JSON (NaN or infinity)"
                line = error_line(item.custom_id, "invalid_output", message, item.number)
            else:
                if len(written) <= options.max_output_bytes:
                    outputs.append(written)
                else:  # one item's answer must not make a result file of any size
                    line = error_line(
                        item.custom_id, *too_large(len(written), options), item.number
                    )
        if line is not None:
            errors.append((item.number, line))
    errors.sort(key=lambda pair: pair[0])  # the error file keeps input order too
    return ChunkResult(
        outputs=outputs,
        errors=[line for _, line in errors],
        tokens=sum(counted.tokens),
        completion_tokens=sum(counted.completion),
    )
