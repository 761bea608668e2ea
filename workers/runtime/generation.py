"""Text generation: prompts and chats in, text out, decoded by workers/runtime/decoding.py.

A native item's `input` is a prompt string, `{"prompt": ..., overrides}` or
`{"messages": [{"role", "content"}, ...], overrides}` (rendered by the model's chat template in
a sandboxed child process, workers/runtime/chat_templates.py). Overrides are the sampling
parameters of workers/runtime/gen_params.py; the job's `params` hold their defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from workers.runtime.base import ItemError, ModelLoadError, RunOptions
from workers.runtime.chat_templates import TemplateError, render_chat
from workers.runtime.decoding import Engine, Request
from workers.runtime.gen_params import PARAM_NAMES, sampling
from workers.runtime.tokens import json_type

MAX_MESSAGES = 1024
ROLES = ("system", "user", "assistant", "developer", "tool")


class DecodingRunner:
    """What text generation and sequence to sequence share: the text of tokens, and run()."""

    backend = "torch"
    engine: Engine
    tokenizer: Any

    def _decode(self, ids: list[int]) -> str:
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def run(self, values: list[Request], options: RunOptions) -> list[dict[str, Any]]:
        requests = [replace(v, index=i) for i, v in enumerate(values)]
        generated = self.engine.generate(requests, options)
        if options.on_tokens is not None:
            options.on_tokens([g.prompt_tokens for g in generated])
        if options.on_completion_tokens is not None:
            options.on_completion_tokens([g.completion_tokens for g in generated])
        return [g.output() for g in generated]


class GenerationRunner(DecodingRunner):
    """A causal language model behind the Runner protocol."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        context_length: int,
        chat_template: str | None,
        eos_ids: set[int],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.chat_template = chat_template
        self.eos_ids = eos_ids
        pad = tokenizer.pad_token_id
        pad = next(iter(eos_ids), 0) if pad is None else pad
        self.engine = Engine(model, self._decode, eos_ids, int(pad), torch.device(device))
        # What a chat template may read besides the messages, as transformers passes it.
        self.specials = {
            k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)
        }

    def prepare(self, value: Any, options: RunOptions) -> Request:
        line: Mapping[str, Any] = {}
        if isinstance(value, str):
            prompt: str | None = value
        elif isinstance(value, dict):
            line = value
            unknown = sorted(set(value) - {"prompt", "messages", *PARAM_NAMES})
            if unknown:
                raise ItemError("invalid_parameter", f"unknown parameter `{unknown[0]}`")
            if ("prompt" in value) == ("messages" in value):
                raise ItemError(
                    "invalid_input_type", "input needs exactly one of `prompt` or `messages`"
                )
            prompt = value.get("prompt")
            if "prompt" in value and not isinstance(prompt, str):
                raise ItemError(
                    "invalid_input_type", f"`prompt` must be a string, not {json_type(prompt)}"
                )
        else:
            raise ItemError(
                "invalid_input_type",
                f"input must be a prompt string or an object, not {json_type(value)}",
            )
        params = sampling(options.params, line, options.max_new_tokens)
        if prompt is not None:
            text = check_text(prompt, options, "prompt")
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        else:
            text = self._render(line["messages"], options)
            # The rendered template holds the special tokens already (as transformers does).
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.context_length:
            raise ItemError(
                "context_length_exceeded",
                f"the prompt has {len(ids)} tokens; this model's context is "
                f"{self.context_length} tokens, and at least one must be left to generate",
            )
        room = self.context_length - len(ids)
        return Request(list(ids), replace(params, max_tokens=min(params.max_tokens, room)))

    def _render(self, messages: Any, options: RunOptions) -> str:
        if not isinstance(messages, list) or not messages:
            raise ItemError("invalid_messages", "`messages` must be a non-empty list")
        if len(messages) > MAX_MESSAGES:
            raise ItemError("invalid_messages", f"at most {MAX_MESSAGES} messages")
        total = 0
        for n, message in enumerate(messages):
            if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
                raise ItemError(
                    "invalid_messages",
                    f"message {n} must be an object with `role` and `content` (and `name`)",
                )
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise ItemError("invalid_messages", f"message {n}: unknown role {role!r}")
            if not isinstance(content, str):
                raise ItemError("invalid_messages", f"message {n}: `content` must be a string")
            total += len(content)
        if total > options.max_chars:
            raise ItemError(
                "input_too_long",
                f"the messages have {total} characters; the limit is {options.max_chars}",
            )
        if not self.chat_template:
            raise ItemError("template_error", "this model has no chat template; send a prompt")
        try:
            return render_chat(self.chat_template, messages, self.specials)
        except TemplateError as exc:
            raise ItemError("template_error", str(exc)) from None


def check_text(text: str, options: RunOptions, what: str) -> str:
    """`text` if it is something to generate from: not blank, within `max_chars`, encodable."""
    if not text.strip():
        raise ItemError("empty_input", f"the {what} is empty")
    if len(text) > options.max_chars:
        raise ItemError(
            "input_too_long",
            f"the {what} has {len(text)} characters; the limit is {options.max_chars}",
        )
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ItemError("invalid_input", f"the {what} holds a lone surrogate") from None
    return text


def load_generation_runner(path: str, device: str, precision: str = "fp32") -> GenerationRunner:
    """A transformers folder (config.json, safetensors, tokenizer) of a causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    root = Path(path)
    if not any(root.glob("*.safetensors")):
        raise ModelLoadError("the model has no *.safetensors weights; pickled weights are refused")
    dtype = torch.float32
    if precision == "mixed":  # the GPU pool: fp16 on CUDA, bf16 on a CPU standing in for one
        dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True, trust_remote_code=False)
    model: Any = AutoModelForCausalLM.from_pretrained(
        root, use_safetensors=True, local_files_only=True, trust_remote_code=False, dtype=dtype
    )
    config = model.config
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise ModelLoadError(f"attention layers of kinds {sorted(kinds)} are not supported")
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    if context < 2:
        raise ModelLoadError("config.json gives no usable max_position_embeddings")
    eos: set[int] = set()
    try:
        generation = GenerationConfig.from_pretrained(root, local_files_only=True)
        found = generation.eos_token_id
        eos |= set(found if isinstance(found, list) else [] if found is None else [found])
    except OSError:
        pass  # no generation_config.json: the tokenizer's EOS is the one
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    model = model.to(device).eval()
    return GenerationRunner(model, tokenizer, device, context, template, eos)
