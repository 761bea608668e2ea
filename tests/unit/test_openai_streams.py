"""How a stream ends from its job's answer: the text the deltas missed, the finish, usage."""

from __future__ import annotations

from typing import Any

import orjson

from app.api.openai.streams import _Stream

USAGE = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def _events(raw: list[bytes]) -> list[dict[str, Any]]:
    assert all(r.startswith(b"data: ") and r.endswith(b"\n\n") for r in raw)
    return [orjson.loads(r[6:]) for r in raw]


def _chat_answer(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": USAGE}


def test_a_chat_stream_sends_what_its_deltas_missed_then_finish_and_usage() -> None:
    stream = _Stream(None, "/v1/chat/completions", "smollm2", include_usage=True)  # type: ignore[arg-type]
    first = _events([stream.text(0, "Red")])[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "Red"}
    ending = _events(stream.ending(_chat_answer("Red, green")))
    assert [e["choices"] for e in ending] == [
        [{"index": 0, "delta": {"content": ", green"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
        [],
    ]
    assert "usage" not in ending[0] and ending[1]["usage"] == ending[2]["usage"] == USAGE
    assert len({e["id"] for e in [first, *ending]}) == 1


def test_a_completion_stream_heard_nothing_gets_the_whole_text() -> None:
    stream = _Stream(None, "/v1/completions", "m", include_usage=False)  # type: ignore[arg-type]
    answer = {
        "choices": [
            {"index": 0, "text": "blue", "finish_reason": "length"},
            {"index": 1, "text": "", "finish_reason": "stop"},
        ],
        "usage": USAGE,
    }
    ending = _events(stream.ending(answer))
    texts = [(c["index"], c["text"], c["finish_reason"]) for e in ending for c in e["choices"]]
    assert texts == [(0, "blue", None), (1, "", None), (0, "", "length"), (1, "", "stop")]
    assert [("usage" in e) for e in ending] == [False, False, False, True]


def test_text_decoded_again_differently_is_an_error_not_a_silent_splice() -> None:
    stream = _Stream(None, "/v1/chat/completions", "m", include_usage=False)  # type: ignore[arg-type]
    stream.text(0, "Once upon")
    (error,) = _events(stream.ending(_chat_answer("A different story")))
    assert error["error"]["code"] == "stream_diverged"
