"""Input lines to shards and chunks to result lines: no services, real files and models."""

from __future__ import annotations

import base64
import json
from itertools import islice
from pathlib import Path

import pytest

from app.broker.scan import _task_key
from app.config import get_settings
from tests.factories import train_sklearn_classifier
from workers.runtime import ModelSpec, RunOptions, load_runner
from workers.runtime.items import iter_chunks, iter_lines, read_lines, run_chunk
from workers.tasks.inference import split_input


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return path.resolve().as_uri()


def test_shards_cover_every_item_once_and_seek_to_their_first_line(tmp_path: Path) -> None:
    lines = []
    for i in range(23):
        lines.append(json.dumps({"custom_id": i, "input": "é" * (i % 5)}))
        if i % 4 == 0:
            lines.append("   ")  # blank lines are not items
    uri = _write(tmp_path / "in.jsonl", lines)
    ranges = split_input(uri, shard_items=5)
    assert [(r.start_item, r.end_item) for r in ranges] == [
        (0, 5),
        (5, 10),
        (10, 15),
        (15, 20),
        (20, 23),
    ]
    seen = []
    with open(tmp_path / "in.jsonl", "rb") as f:
        for r in ranges:
            f.seek(r.start_offset)
            for number, raw in islice(iter_lines(f, r.start_line), r.end_item - r.start_item):
                item = json.loads(raw)
                assert lines[number - 1] == raw.decode().rstrip("\n")
                seen.append(item["custom_id"])
    assert seen == list(range(23))


def test_empty_input_has_no_shards(tmp_path: Path) -> None:
    assert split_input(_write(tmp_path / "e.jsonl", ["", "  "]), shard_items=5) == []


def test_chunks() -> None:
    lines = [(i, b"x") for i in range(7)]
    assert [len(c) for c in iter_chunks(iter(lines), 3)] == [3, 3, 1]


def test_run_chunk_keeps_order_and_explains_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "clf.skops"
    estimator, x = train_sklearn_classifier(path)
    runner = load_runner(
        ModelSpec(key="clf", framework="sklearn", task="classification", path=str(path))
    )
    good = [float(v) for v in x[0]]
    raw = [
        json.dumps({"custom_id": "a", "input": good}).encode(),
        b"{broken",
        json.dumps({"custom_id": "b", "input": [1.0]}).encode(),
        json.dumps({"custom_id": "c"}).encode(),
        json.dumps({"custom_id": "d", "input": good}).encode(),
    ]
    result = run_chunk(runner, list(enumerate(raw, start=10)), RunOptions())
    outputs = [json.loads(line) for line in result.outputs]
    errors = [json.loads(line) for line in result.errors]
    assert [o["custom_id"] for o in outputs] == ["a", "d"]
    assert outputs[0]["output"]["label"] == estimator.predict(x[:1])[0].item()
    assert [(e["custom_id"], e["error"]["code"], e["line"]) for e in errors] == [
        (None, "invalid_json", 11),
        ("b", "invalid_features", 12),
        ("c", "missing_input", 13),
    ]


@pytest.mark.parametrize("encoded", [True, False])
def test_broker_messages_are_read_for_their_task_and_args(encoded: bool) -> None:
    body = json.dumps([["job_1", 3], {}, {}])
    message = {
        "body": base64.b64encode(body.encode()).decode() if encoded else body,
        "headers": {"task": "modelfarm.run_shard"},
        "properties": {"body_encoding": "base64"} if encoded else {},
    }
    assert _task_key(message) == ("modelfarm.run_shard", ("job_1", 3))
    assert _task_key({"body": "garbage"}) is None


def _strict(line: bytes) -> dict[str, object]:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in output")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


HOSTILE = [
    (b"[" * 100_000 + b"]" * 100_000, None, "invalid_json"),  # RecursionError in json
    (b'{"custom_id": ' + b"9" * 5000 + b', "input": [1]}', None, "invalid_json"),  # > 4300 digits
    (b'{"custom_id": NaN, "input": [1,2,3,4]}', None, "invalid_json"),
    (b'{"custom_id": 1e999, "input": [1,2,3,4]}', None, "invalid_json"),  # overflows a double
    (b'{"custom_id": "\\ud800", "input": [1,2,3,4]}', None, "invalid_json"),  # not Unicode
    (b'{"custom_id": "' + b"x" * 600 + b'", "input": [1,2,3,4]}', None, "invalid_custom_id"),
    (b'{"custom_id": ' + b"9" * 20 + b', "input": [1,2,3,4]}', None, "invalid_custom_id"),
    (b'{"custom_id": {"a": 1}, "input": [1,2,3,4]}', None, "invalid_custom_id"),
    (b'{"custom_id": "s", "input": "\\ud800"}', None, "invalid_json"),
    (b'{"custom_id": "f", "input": [1e999, 1, 1, 1]}', None, "invalid_json"),
    (b"\xff\xfe not utf-8", None, "invalid_json"),
    (b'{"custom_id": "u", "note": "\xed\xa0\x80", "input": [1,2,3,4]}', None, "invalid_json"),
    (b'\xef\xbb\xbf{"custom_id": "bom", "input": [1,2,3]}', "bom", "invalid_features"),
    (b"[1, 2]", None, "invalid_item"),
]


def test_hostile_lines_each_become_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "clf.skops"
    _, x = train_sklearn_classifier(path)
    runner = load_runner(
        ModelSpec(key="clf", framework="sklearn", task="classification", path=str(path))
    )
    good = json.dumps({"custom_id": 7, "input": [float(v) for v in x[0]]}).encode()
    lines = [(i + 1, raw) for i, (raw, _, _) in enumerate(HOSTILE)]
    lines += [(len(lines) + 1, good), (len(lines) + 2, None)]  # None: over the byte limit
    result = run_chunk(runner, lines, RunOptions())
    outputs = [_strict(line) for line in result.outputs]
    errors = [_strict(line) for line in result.errors]
    assert [o["custom_id"] for o in outputs] == [7]
    expected = [(cid, code) for _, cid, code in HOSTILE] + [(None, "line_too_long")]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == expected  # type: ignore[index]
    assert [e["line"] for e in errors] == [n for n, _ in lines if n != len(HOSTILE) + 1]


class _Fragile:
    """A runner whose model breaks on one input and returns NaN for another; it tells ten
    tokens read per text, before it breaks, as a text runner tokenizes before its model runs,
    and three written per text once it ran, as a text-generation runner does."""

    def prepare(self, value: object, options: RunOptions) -> object:
        return value

    def run(self, values: list[object], options: RunOptions) -> list[object]:
        if options.on_tokens is not None:
            options.on_tokens([10] * len(values))
        if "boom" in values:
            raise RuntimeError("the model fell over")
        if options.on_completion_tokens is not None:
            options.on_completion_tokens([3] * len(values))
        return [float("nan") if v == "nan" else len(str(v)) for v in values]


def test_an_item_that_breaks_the_model_fails_alone() -> None:
    raw = [
        json.dumps({"custom_id": cid, "input": value}).encode()
        for cid, value in [("a", "x"), ("b", "boom"), ("c", "nan"), ("d", "yy")]
    ]
    result = run_chunk(_Fragile(), list(enumerate(raw, start=1)), RunOptions())  # type: ignore[arg-type]
    assert [_strict(line) for line in result.outputs] == [
        {"custom_id": "a", "output": 1},
        {"custom_id": "d", "output": 2},
    ]
    errors = [_strict(line) for line in result.errors]
    assert [(e["custom_id"], e["error"]["code"], e["line"]) for e in errors] == [  # type: ignore[index]
        ("b", "item_failed", 2),
        ("c", "invalid_output", 3),
    ]
    # The broken batch's count is dropped and its items counted as they ran again, one by one:
    # a, c and d read (and wrote) their tokens once; b broke the model and counts none.
    assert (result.tokens, result.completion_tokens) == (30, 9)


def test_an_over_long_line_is_skipped_without_being_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 5000 + b"\n" + b'{"b": 2}\n' + b"y" * 3000)
    with open(path, "rb") as f:
        assert list(read_lines(f, max_bytes=1000)) == [
            (1, b'{"a": 1}\n', 9),
            (2, None, 5001),
            (3, b'{"b": 2}\n', 9),
            (4, None, 3000),
        ]
    # The planner counts over-long lines as items, at the offsets the shard's reader uses.
    monkeypatch.setenv("MODELFARM_MAX_LINE_BYTES", "1000")
    get_settings.cache_clear()
    try:
        ranges = split_input(path.resolve().as_uri(), shard_items=2)
    finally:
        monkeypatch.delenv("MODELFARM_MAX_LINE_BYTES")
        get_settings.cache_clear()
    assert [(r.start_item, r.end_item, r.start_offset, r.start_line) for r in ranges] == [
        (0, 2, 0, 1),
        (2, 4, 9 + 5001, 3),
    ]
