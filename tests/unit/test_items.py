"""Input lines to shards and chunks to result lines: no services, real files and models."""

from __future__ import annotations

import base64
import json
from itertools import islice
from pathlib import Path

import pytest

from app.broker_scan import _task_key
from tests.factories import train_sklearn_classifier
from workers.runtime import ModelSpec, RunOptions, load_runner
from workers.runtime.items import iter_chunks, iter_lines, run_chunk
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
