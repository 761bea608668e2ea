"""OpenAI batch lines in and out (workers/runtime/openai_lines.py), with a stand-in runner:
the line handling is under test here, the model in tests/integration/test_openai.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from workers.runtime.base import ItemError, RunOptions
from workers.runtime.openai_lines import EMBEDDINGS, PREDICTIONS, OpenAIRequests


class _Runner:
    """Embeds a text as [its length, 1.0]; one call per run, so batching is observable. Its
    texts have a token per word and two special ones, told as a text runner tells them."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def prepare(self, value: Any, options: RunOptions) -> str:
        if not isinstance(value, str):
            raise ItemError("invalid_input_type", "input must be a string")
        return value

    def run(self, values: list[str], options: RunOptions) -> list[Any]:
        self.calls.append(values)
        if options.on_tokens is not None:
            options.on_tokens([len(v.split()) + 2 for v in values])
        return [[float(len(v)), 1.0] for v in values]


def _line(custom_id: str, text: Any, **body: Any) -> bytes:
    request = {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS}
    return json.dumps({**request, "body": {"model": "minilm", "input": text, **body}}).encode()


def test_requests_run_in_one_call_and_answer_in_openai_shape() -> None:
    runner = _Runner()
    lines = [
        (1, _line("a", "one two")),
        (2, _line("b", ["x", "yy y"], encoding_format="base64")),
        (3, b"{nope"),
        (4, _line("c", "z", dimensions=3)),
        (5, _line("d", [1])),
        (6, None),
    ]
    result = OpenAIRequests(EMBEDDINGS, "minilm@1").run_chunk(runner, lines, RunOptions())
    assert runner.calls == [["one two", "x", "yy y", "z"]]  # every request's texts together
    assert result.tokens == 4 + 3 + 4 + 3  # what the model read, refused `dimensions` included
    out = [json.loads(x) for x in result.outputs]
    assert [o["custom_id"] for o in out] == ["a", "b"]
    first = out[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "list" and body["model"] == "minilm@1"
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": [7.0, 1.0]}]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    second = out[1]["response"]["body"]
    decoded = [
        np.frombuffer(base64.b64decode(e["embedding"]), dtype="<f4").tolist()
        for e in second["data"]
    ]
    assert decoded == [[1.0, 1.0], [4.0, 1.0]] and second["usage"]["prompt_tokens"] == 7

    errors = [json.loads(x) for x in result.errors]
    assert [(e["line"], e["custom_id"], e["error"]["code"]) for e in errors] == [
        (3, None, "invalid_json"),
        (4, "c", "invalid_dimensions"),
        (5, "d", "invalid_input_type"),
        (6, None, "line_too_long"),
    ]
    for e in errors:
        assert e["response"]["status_code"] == 400
        assert e["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_a_line_for_another_url_method_or_model_is_refused() -> None:
    good = json.loads(_line("a", "x"))
    cases = {
        "invalid_url": {**good, "url": "/v1/chat/completions"},
        "invalid_method": {**good, "method": "GET"},
        "model_mismatch": {**good, "body": {"model": "gpt-4o", "input": "x"}},
        "missing_input": {**good, "body": {"model": "minilm@1"}},
    }
    lines = [(i + 1, json.dumps(c).encode()) for i, c in enumerate(cases.values())]
    result = OpenAIRequests(EMBEDDINGS, "minilm@1").run_chunk(_Runner(), lines, RunOptions())
    assert result.outputs == []
    assert [json.loads(x)["error"]["code"] for x in result.errors] == list(cases)


def test_predictions_answer_the_models_output() -> None:
    line = {"custom_id": "p", "method": "POST", "url": PREDICTIONS}
    raw = json.dumps({**line, "body": {"model": "clf", "input": "hello"}}).encode()
    result = OpenAIRequests(PREDICTIONS, "clf@2").run_chunk(_Runner(), [(1, raw)], RunOptions())
    body = json.loads(result.outputs[0])["response"]["body"]
    assert body == {"object": "prediction", "model": "clf@2", "output": [5.0, 1.0]}
