"""OpenAI's /v1/chat/completions and /v1/completions requests, as the generation runner's
inputs, and its outputs as OpenAI's `chat.completion` / `text_completion` objects.

A request's body becomes one runner input per prompt (workers/runtime/generation.py's native
`{"messages": [...]}` / `{"prompt": ...}` with the sampling overrides). Every parameter OpenAI
has is either passed on, accepted at the one value that changes nothing (`n: 1`,
`logprobs: false`, `presence_penalty: 0` ...), or refused with a 400 naming it: the farm never
answers as if it had honoured a parameter it ignored. A parameter OpenAI does not have is
refused as OpenAI refuses it (`top_k` and `repetition_penalty`, the farm's own, excepted).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from workers.runtime.openai_errors import RequestError

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = (CHAT, COMPLETIONS)
#: prompts per /v1/completions request (a list of prompts answers one choice each)
MAX_PROMPTS = 64
#: OpenAI's default for /v1/completions (chat has none: the farm's default applies)
COMPLETIONS_MAX_TOKENS = 16

#: passed to the runner as they are; it checks their types and ranges
_SAMPLING = ("temperature", "top_p", "seed", "stop", "top_k", "repetition_penalty")
#: accepted whatever their value: they change nothing in the answer's text
_INERT = {
    "model", "user", "metadata", "service_tier", "parallel_tool_calls", "safety_identifier",
    "prompt_cache_key",
}  # fmt: skip


def _off(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == [] or value == {}


#: accepted only at the value that asks for nothing the farm cannot do
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v is None or v == 1,
    "best_of": lambda v: v is None or v == 1,
    "logprobs": _off,
    "top_logprobs": _off,
    "echo": _off,
    "suffix": lambda v: v is None or v == "",
    "presence_penalty": _off,
    "frequency_penalty": _off,
    "logit_bias": _off,
    "tools": _off,
    "tool_choice": lambda v: v is None or v == "none",
    "functions": _off,
    "function_call": lambda v: v is None or v == "none",
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v is None or v == ["text"],
    "audio": _off,
    "prediction": _off,
    "reasoning_effort": _off,
    "web_search_options": _off,
    "store": _off,
    "stream": _off,  # a batch line is never streamed; the synchronous route streams itself
    "stream_options": _off,
}
_CHAT_KEYS = {"messages", "max_tokens", "max_completion_tokens", *_SAMPLING, *_INERT}
_COMPLETION_KEYS = {"prompt", "max_tokens", *_SAMPLING, *_INERT}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _bad(code: str, message: str, param: str | None) -> RequestError:
    return RequestError(400, code, message, param)


def _check_keys(body: dict[str, Any], known: set[str]) -> None:
    for key, value in body.items():
        if key in known:
            continue
        neutral = _NEUTRAL.get(key)
        if neutral is None:
            raise _bad("unknown_parameter", f"unrecognized request argument: {key!r}", key)
        if not neutral(value):
            message = f"`{key}` = {value!r:.80} is not supported by this farm"
            raise _bad("unsupported_parameter", message, key)


def _content(index: int, content: Any) -> str:
    """A message's content: a string, or a list of text parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    param = f"messages[{index}].content"
    if not isinstance(content, list) or not content:
        raise _bad("invalid_messages", f"`{param}` must be a string or a list of parts", param)
    texts = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            message = f"`{param}[{number}]` is a {kind!r} part; only text parts are supported"
            raise _bad("unsupported_content", message, f"{param}[{number}]")
        texts.append(part["text"])
    return "\n".join(texts)


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise _bad("invalid_messages", "`messages` must be a non-empty list", "messages")
    messages = []
    for index, message in enumerate(raw):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad("invalid_messages", f"`{param}` must be an object", param)
        role = message.get("role")
        if role not in _ROLES:
            text = f"`{param}.role` {role!r} is not supported (system, developer, user, assistant)"
            raise _bad("unsupported_role" if isinstance(role, str) else "invalid_messages", text,
                       f"{param}.role")  # fmt: skip
        for key, value in message.items():
            if key not in ("role", "content") and value is not None:
                message_text = f"`{param}.{key}` is not supported by this farm"
                raise _bad("unsupported_parameter", message_text, f"{param}.{key}")
        if "content" not in message or message["content"] is None:
            raise _bad("invalid_messages", f"`{param}.content` is required", f"{param}.content")
        messages.append({"role": _ROLES[role], "content": _content(index, message["content"])})
    return messages


def _overrides(body: dict[str, Any], max_tokens: Any) -> dict[str, Any]:
    found = {key: body[key] for key in _SAMPLING if body.get(key) is not None}
    if max_tokens is not None:
        found["max_tokens"] = max_tokens
    return found


def runner_inputs(endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The runner's inputs for one request body: one for a chat, one per prompt otherwise."""
    if endpoint == CHAT:
        _check_keys(body, _CHAT_KEYS)
        limit, alias = body.get("max_completion_tokens"), body.get("max_tokens")
        if limit is not None and alias is not None and limit != alias:
            message = "give `max_completion_tokens` or `max_tokens`, not two different values"
            raise _bad("invalid_parameter", message, "max_tokens")
        overrides = _overrides(body, limit if limit is not None else alias)
        return [{"messages": _messages(body.get("messages")), **overrides}]
    _check_keys(body, _COMPLETION_KEYS)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if (
        not isinstance(prompts, list)
        or not 1 <= len(prompts) <= MAX_PROMPTS
        or not all(isinstance(p, str) for p in prompts)
    ):
        message = f"`prompt` must be a string or a list of 1 to {MAX_PROMPTS} strings"
        raise _bad("invalid_prompt", message, "prompt")  # token-id prompts included
    max_tokens = body.get("max_tokens")
    overrides = _overrides(body, COMPLETIONS_MAX_TOKENS if max_tokens is None else max_tokens)
    return [{"prompt": p, **overrides} for p in prompts]


#: the request field a runner's refusal points at
_PARAMS = {
    "context_length_exceeded": "messages",
    "invalid_messages": "messages",
    "template_error": "messages",
    "empty_input": "messages",
}


def param_of(endpoint: str, code: str) -> str | None:
    param = _PARAMS.get(code)
    return "prompt" if param and endpoint == COMPLETIONS else param


def completion_id(endpoint: str) -> str:
    return ("chatcmpl-" if endpoint == CHAT else "cmpl-") + uuid.uuid4().hex


def usage(outputs: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(int(o["usage"]["prompt_tokens"]) for o in outputs)
    completion = sum(int(o["usage"]["completion_tokens"]) for o in outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def response_body(endpoint: str, model: str, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's `chat.completion` or `text_completion` for the runner's outputs."""
    if endpoint == CHAT:
        choices: list[dict[str, Any]] = [
            {
                "index": index,
                "message": {"role": "assistant", "content": o["text"], "refusal": None},
                "logprobs": None,
                "finish_reason": o["finish_reason"],
            }
            for index, o in enumerate(outputs)
        ]
        kind = "chat.completion"
    else:
        choices = [
            {
                "index": index,
                "text": o["text"],
                "logprobs": None,
                "finish_reason": o["finish_reason"],
            }
            for index, o in enumerate(outputs)
        ]
        kind = "text_completion"
    return {
        "id": completion_id(endpoint),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(outputs),
        "system_fingerprint": None,
    }
