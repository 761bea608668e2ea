"""The official `openai` client's chat completions and completions against a real farm, with
the builtin `smollm2`: plain, streamed, refused, and as a batch with a bad line among good ones."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai import OpenAI

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

MODEL = "smollm2"
ASK = [{"role": "user", "content": "List three colours, one per line."}]


@pytest.fixture
def oai(api_url: str, tenant_key: str) -> OpenAI:
    return OpenAI(base_url=f"{api_url}/openai/v1", api_key=tenant_key, max_retries=0, timeout=600)


def test_chat_plain_and_streamed_give_the_same_text(oai: OpenAI) -> None:
    plain = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)
    assert plain.object == "chat.completion" and plain.id.startswith("chatcmpl-")
    assert plain.model == MODEL
    (choice,) = plain.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = plain.usage
    assert usage is not None and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens > 5  # the chat template's tokens and the question's

    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=ASK,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(texts) == choice.message.content
    assert sum(1 for t in texts if t) >= 2  # it came in pieces, not in one piece at the end
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == choice.finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == usage  # include_usage's own chunk


def test_completions_answer_a_choice_per_prompt(oai: OpenAI) -> None:
    answer = oai.completions.create(
        model=MODEL, prompt=["The sky is", "Two plus two is"], max_tokens=4, temperature=0
    )
    assert answer.object == "text_completion"
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.text and c.finish_reason in ("stop", "length") for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens <= 8
    one = oai.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0)
    assert one.choices[0].text == answer.choices[0].text  # greedy: the same text alone
    streamed = oai.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == one.choices[0].text


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"stream": True, "n": 3}, "n"),  # refused before anything is streamed
    ],
)
def test_parameters_the_farm_cannot_honour_are_refused(
    oai: OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2, **extra)
    assert refused.value.param == param and param in refused.value.message


def test_images_and_non_generation_models_are_refused(oai: OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    content = [{"type": "text", "text": "What is this?"}, image]
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert refused.value.param == "messages[0].content[1]"
    with pytest.raises(openai.BadRequestError) as wrong_model:
        oai.completions.create(model="minilm", prompt="x")
    assert wrong_model.value.code == "model_not_supported"
    listed = {m.id: m.model_dump() for m in oai.models.list().data}
    assert listed[MODEL]["task"] == "text-generation"
    assert listed[MODEL]["context_length"] >= 2048
    assert listed["minilm"]["task"] == "feature-extraction"


def _line(custom_id: str, body: dict[str, Any], url: str = "/v1/chat/completions") -> str:
    request = {"custom_id": custom_id, "method": "POST", "url": url}
    return json.dumps({**request, "body": {"model": MODEL, "max_tokens": 6, **body}})


def test_a_chat_batch_with_a_bad_line_among_good_ones(oai: OpenAI) -> None:
    lines = [
        _line("a", {"messages": ASK, "temperature": 0}),
        _line("n", {"messages": ASK, "n": 2}),
        _line("b", {"messages": [{"role": "user", "content": "Say hi."}], "temperature": 0}),
        _line("empty", {"messages": []}),
        _line("c", {"prompt": "x"}, url="/v1/completions"),
    ]
    uploaded = oai.files.create(file=("chats.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    end = time.monotonic() + 300
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < end, batch
        time.sleep(0.3)
        batch = oai.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (5, 2, 3)

    out = [json.loads(x) for x in oai.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["a", "b"]
    plain = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=6, temperature=0)
    body = out[0]["response"]["body"]
    assert body["object"] == "chat.completion" and out[0]["response"]["status_code"] == 200
    assert body["choices"][0]["message"]["content"] == plain.choices[0].message.content
    assert plain.usage is not None
    assert body["usage"] == plain.usage.model_dump(exclude_none=True)
    used = [o["response"]["body"]["usage"] for o in out]
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in used)
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in used) > 0
    assert batch.usage.total_tokens == sum(u["total_tokens"] for u in used)

    errors = [json.loads(x) for x in oai.files.content(batch.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["n", "empty", "c"]
    assert [e["error"]["code"] for e in errors] == [
        "unsupported_parameter",
        "invalid_messages",
        "invalid_url",
    ]
    assert [e["response"]["body"]["error"]["param"] for e in errors] == ["n", "messages", "url"]
    assert {e["response"]["status_code"] for e in errors} == {400}
