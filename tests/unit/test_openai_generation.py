"""OpenAI chat and completion bodies as the generation runner's inputs: what is passed on,
what is accepted at its neutral value, and what is refused naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from workers.runtime.openai_errors import RequestError
from workers.runtime.openai_generation import (
    CHAT,
    COMPLETIONS,
    COMPLETIONS_MAX_TOKENS,
    response_body,
    runner_inputs,
)

USER = [{"role": "user", "content": "Hi"}]


def _chat(**body: Any) -> dict[str, Any]:
    return {"model": "smollm2", "messages": USER, **body}


def test_chat_passes_sampling_on_and_maps_roles_and_text_parts() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    (value,) = runner_inputs(
        CHAT,
        _chat(
            messages=messages,
            max_completion_tokens=8,
            temperature=0,
            stop=["\n"],
            seed=3,
            n=1,
            logprobs=False,
            presence_penalty=0,
            response_format={"type": "text"},
            user="u1",
            top_k=5,
        ),
    )
    assert value == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "a\nb"},
        ],
        "max_tokens": 8,
        "temperature": 0,
        "stop": ["\n"],
        "seed": 3,
        "top_k": 5,
    }


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "unsupported_parameter",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format", "unsupported_parameter"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
        ({"stream": True}, "stream", "unsupported_parameter"),
        ({"temprature": 0}, "temprature", "unknown_parameter"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens", "invalid_parameter"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
            "unsupported_content",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "unsupported_role"),
        (
            {"messages": [{"role": "user", "content": "x", "name": "bob"}]},
            "messages[0].name",
            "unsupported_parameter",
        ),  # fmt: skip
        ({"messages": []}, "messages", "invalid_messages"),
    ],
)
def test_chat_refuses_what_it_cannot_honour_naming_it(
    body: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(RequestError) as refused:
        runner_inputs(CHAT, _chat(**body))
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, param, code)
    assert param.partition("[")[0] in refused.value.message


def test_completions_default_max_tokens_and_prompt_lists() -> None:
    values = runner_inputs(COMPLETIONS, {"model": "m", "prompt": ["a", "b"], "temperature": 0.5})
    assert values == [
        {"prompt": "a", "temperature": 0.5, "max_tokens": COMPLETIONS_MAX_TOKENS},
        {"prompt": "b", "temperature": 0.5, "max_tokens": COMPLETIONS_MAX_TOKENS},
    ]
    for body, param in [
        ({"prompt": [1, 2, 3]}, "prompt"),  # token ids
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "suffix": "end"}, "suffix"),
        ({"prompt": "x", "messages": USER}, "messages"),
    ]:
        with pytest.raises(RequestError) as refused:
            runner_inputs(COMPLETIONS, {"model": "m", **body})
        assert refused.value.param == param


def test_response_bodies_are_openais_objects() -> None:
    outputs = [
        {
            "text": "Hello",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        },
        {
            "text": "x",
            "finish_reason": "length",
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        },
    ]
    chat = response_body(CHAT, "smollm2@1", outputs[:1])
    assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-")
    assert chat["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert chat["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    text = response_body(COMPLETIONS, "smollm2@1", outputs)
    assert text["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in text["choices"]] == [
        (0, "Hello", "stop"),
        (1, "x", "length"),
    ]
    assert text["usage"] == {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}
