"""Text generation in-process, on a tiny random LlamaForCausalLM: the decoding loop against
transformers' own `generate`, parameters, stop strings, limits, cancels and precision."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.catalogue import BUILTIN_MODELS
from tests.factories import make_tiny_causal_lm
from workers.runtime import builtin_path
from workers.runtime.base import ItemError, RunOptions, Stopped
from workers.runtime.chat_templates import TemplateError, render_chat
from workers.runtime.generation import GenerationRunner, load_generation_runner
from workers.runtime.gguf_models import check_gguf

PROMPTS = [
    "the quick brown fox",
    "Once upon a time there lived a king and a queen in a castle by the sea",
    "a",
    "hello world, how are you today? I am fine",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), context=256)


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> GenerationRunner:
    return load_generation_runner(str(model_dir), "cpu")


def _options(**params: Any) -> RunOptions:
    return RunOptions(params=params, max_rows=2, kv_tokens=4096)


def _reference(runner: GenerationRunner, ids: list[int], max_tokens: int) -> list[int]:
    """transformers' own greedy decoding of one prompt, unpadded."""
    tensor = torch.tensor([ids])
    out = runner.model.generate(
        input_ids=tensor,
        attention_mask=torch.ones_like(tensor),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=sorted(runner.eos_ids),
        pad_token_id=runner.engine.pad_id,
    )
    generated: list[int] = out[0, len(ids) :].tolist()
    return generated


@pytest.mark.slow  # loads a real model: `make test`, not test-fast
def test_greedy_text_equals_transformers_generate_while_rows_leave_and_join(
    runner: GenerationRunner,
) -> None:
    # Two rows decode at once over five prompts of different lengths and max_tokens, so rows
    # finish at different steps and waiting ones join a running batch.
    lines = [{"prompt": p, "max_tokens": 3 + 4 * i} for i, p in enumerate(PROMPTS)]
    options = _options(temperature=0)
    deltas: dict[int, list[str]] = {}
    streaming = RunOptions(
        params=options.params,
        max_rows=2,
        kv_tokens=4096,
        on_text=lambda i, d: deltas.setdefault(i, []).append(d),
    )
    requests = [runner.prepare(line, options) for line in lines]
    outputs = runner.run(requests, streaming)
    for index, (line, request, output) in enumerate(zip(lines, requests, outputs, strict=True)):
        expected = _reference(runner, request.ids, int(line["max_tokens"]))
        assert output["usage"] == {
            "prompt_tokens": len(request.ids),
            "completion_tokens": len(expected),
        }
        ended = expected[-1] in runner.eos_ids
        assert output["finish_reason"] == ("stop" if ended else "length")
        text = runner.tokenizer.decode(
            [t for t in expected if t not in runner.eos_ids], skip_special_tokens=True
        )
        assert output["text"] == text
        assert "".join(deltas.get(index, [])) == output["text"]


def test_a_chat_is_rendered_by_the_models_template(runner: GenerationRunner) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    request = runner.prepare({"messages": messages}, _options())
    expected = runner.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert request.ids == list(expected)
    assert runner.tokenizer.decode(request.ids).endswith("<|im_start|>assistant\n")


def test_a_stop_string_ends_the_text_before_it(runner: GenerationRunner) -> None:
    options = _options(temperature=0, max_tokens=40)
    free = runner.run([runner.prepare(PROMPTS[1], options)], options)[0]
    assert len(free["text"]) > 6
    stop = free["text"][3:6]  # a piece the unconstrained text holds
    stopped_options = _options(temperature=0, max_tokens=40, stop=[stop, "never there"])
    stopped = runner.run([runner.prepare(PROMPTS[1], stopped_options)], stopped_options)[0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == free["text"][: free["text"].index(stop)]
    assert stopped["usage"]["completion_tokens"] < free["usage"]["completion_tokens"]


def test_line_values_override_the_jobs_and_max_tokens_fits_the_context(
    runner: GenerationRunner,
) -> None:
    options = _options(temperature=0, max_tokens=5)
    assert runner.prepare("hello", options).sampling.max_tokens == 5
    assert runner.prepare({"prompt": "hello", "max_tokens": 2}, options).sampling.max_tokens == 2
    long_prompt = "the quick brown fox " * 20
    request = runner.prepare({"prompt": long_prompt, "max_tokens": 10_000}, options)
    assert len(request.ids) + request.sampling.max_tokens == runner.context_length


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("the quick brown fox " * 80, "context_length_exceeded"),
        ({"prompt": "hi", "temperature": -1}, "invalid_parameter"),
        ({"prompt": "hi", "top_p": 0}, "invalid_parameter"),
        ({"prompt": "hi", "max_tokens": "many"}, "invalid_parameter"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "invalid_parameter"),
        ({"prompt": "hi", "n": 2}, "invalid_parameter"),
        ({"messages": []}, "invalid_messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "invalid_messages"),
        ({"messages": [{"role": "user", "content": ["image"]}]}, "invalid_messages"),
        ({"prompt": "hi", "messages": []}, "invalid_input_type"),
        (42, "invalid_input_type"),
        ("   ", "empty_input"),
    ],
)
def test_bad_lines_are_item_errors(runner: GenerationRunner, value: Any, code: str) -> None:
    with pytest.raises(ItemError) as caught:
        runner.prepare(value, _options())
    assert caught.value.code == code


def test_a_bad_job_level_parameter_fails_each_line(runner: GenerationRunner) -> None:
    with pytest.raises(ItemError, match="repetition_penalty"):
        runner.prepare("hello", _options(repetition_penalty=0))


@pytest.mark.slow  # loads a real model: `make test`, not test-fast
def test_seeded_sampling_repeats_and_does_not_depend_on_the_batch(
    runner: GenerationRunner,
) -> None:
    options = _options(temperature=1.0, top_p=0.9, top_k=50, repetition_penalty=1.1)
    lines = [{"prompt": p, "seed": 11 + i, "max_tokens": 12} for i, p in enumerate(PROMPTS)]
    first = runner.run([runner.prepare(line, options) for line in lines], options)
    again = runner.run([runner.prepare(line, options) for line in lines], options)
    alone = runner.run([runner.prepare(lines[3], options)], options)
    assert first == again
    assert alone[0] == first[3]
    other_seed = runner.run([runner.prepare({**lines[3], "seed": 99}, options)], options)
    assert other_seed[0]["text"] != first[3]["text"]


def test_a_stop_request_ends_generation_within_a_few_decode_steps(
    runner: GenerationRunner,
) -> None:
    asked = 0

    def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > 3

    options = RunOptions(params={"max_tokens": 200, "temperature": 0}, should_stop=should_stop)
    with pytest.raises(Stopped):
        runner.run([runner.prepare(PROMPTS[0], options)], options)
    assert asked == 4  # asked before every step: three steps ran, the fourth never did


def test_half_precision_runs_the_same_loop(model_dir: Path) -> None:
    # The GPU pool's path (fp16 on CUDA), on a CPU standing in for it: bf16.
    half = load_generation_runner(str(model_dir), "cpu", precision="mixed")
    assert half.model.dtype == torch.bfloat16
    options = _options(temperature=0, max_tokens=4)
    output = half.run([half.prepare(p, options) for p in PROMPTS[:2]], options)
    assert [o["usage"]["completion_tokens"] for o in output] == [
        len(_reference(half, half.prepare(p, options).ids, 4)) for p in PROMPTS[:2]
    ]


def test_hostile_templates_fail_in_bounded_time_and_the_renderer_goes_on() -> None:
    chat = [{"role": "user", "content": "hi"}]
    began = time.monotonic()
    with pytest.raises(TemplateError, match="longer than"):
        render_chat(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            chat,
            {},
            seconds=1.0,
        )
    with pytest.raises(TemplateError, match="memory"):
        render_chat("{{ 'x' * 10**10 }}", chat, {})
    with pytest.raises(TemplateError, match="SecurityError|unsafe|attribute"):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", chat, {})
    assert time.monotonic() - began < 30
    assert render_chat("{{ messages[0]['content'] }}!", chat, {}) == "hi!"


def test_the_builtin_gguf_passes_the_header_checks_and_matches_the_catalogue() -> None:
    info = check_gguf(Path(builtin_path("smollm2")))
    assert info["architecture"] == "llama"
    assert info["context_length"] == BUILTIN_MODELS["smollm2"].context_length
    assert 100_000_000 < info["parameters"] < 200_000_000  # SmolLM2-135M


def test_the_kv_budget_counts_every_row_at_the_longest_rows_length(
    runner: GenerationRunner,
) -> None:
    """The cache pads every row to the longest: one long prompt beside many short ones must
    not let rows x longest grow past the budget (the sum of their own lengths would)."""
    from workers.runtime.decoding import _Loop

    options = RunOptions(params={"max_tokens": 1}, max_rows=32, kv_tokens=1000)
    long = runner.prepare("the quick brown fox jumps " * 30, options)
    requests = [long] + [runner.prepare("a", options) for _ in range(31)]
    loop = _Loop(runner.engine, requests, options)
    joining = loop._admit()
    longest = max(s.reserved for s in joining)
    assert longest > 100  # the long prompt is among them
    assert len(joining) * longest <= options.kv_tokens
    assert 1 < len(joining) < 32


def _gguf_file(path: Path, meta: dict[str, Any], tensors: dict[str, list[int]]) -> Path:
    """A GGUF (v3) of F32 tensors, zeros: string and uint32 metadata only."""
    import struct

    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value.encode())) + value.encode()

    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, value in meta.items():
        kind, raw = (8, text(value)) if isinstance(value, str) else (4, struct.pack("<I", value))
        head += text(key) + struct.pack("<I", kind) + raw
    offset, data = 0, b""
    for name, shape in tensors.items():
        head += text(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
        head += struct.pack("<IQ", 0, offset)
        size = 4 * int(np.prod(shape))
        data += bytes(size) + bytes(-size % 32)
        offset += size + (-size % 32)
    path.write_bytes(head + bytes(-len(head) % 32) + data)
    return path


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"llama.block_count": 100_000}, "block_count is 100000"),
        ({"llama.block_count": 1, "llama.embedding_length": 65_536}, "embedding_length"),
    ],
)
def test_a_gguf_header_must_describe_the_tensors_it_holds(
    tmp_path: Path, meta: dict[str, Any], message: str
) -> None:
    """transformers builds the model from the header's numbers and makes up missing weights:
    a small file declaring a huge model is refused before anything is built."""
    from workers.runtime.gguf_models import GGUFRefused

    tensors = {"token_embd.weight": [8, 16], "blk.0.ffn_up.weight": [8, 24]}
    path = _gguf_file(tmp_path / "m.gguf", {"general.architecture": "llama", **meta}, tensors)
    with pytest.raises(GGUFRefused, match=message):
        check_gguf(path)
    honest = {"llama.block_count": 1, "llama.embedding_length": 8, "llama.feed_forward_length": 24}
    path = _gguf_file(tmp_path / "ok.gguf", {"general.architecture": "llama", **honest}, tensors)
    assert check_gguf(path)["parameters"] == 8 * 16 + 8 * 24
