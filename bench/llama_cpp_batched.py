"""llama.cpp on `smollm2`'s GGUF: one sequence at a time against several decoding together
(continuous batching through llama.cpp's own multi-sequence batches), on bench/generation.py's
prompts: the measurement behind docs/decisions/0012-llama-cpp-for-gguf.md.

    .venv/bin/python bench/llama_cpp_batched.py [--slots 1 16] [--prompts 64]

Needs the optional extra (`pip install -e ".[llama]"`). Greedy, `max_tokens` 64, EOS ends a
sequence (no stop strings: the decoding speed is what is measured). A finished sequence's slot
is cleared and the next prompt's prefill goes into the next decode call beside the others'
steps, as a continuous-batching runner would do it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generation import MAX_TOKENS, gguf_path, make_prompts, no_repack  # noqa: E402

#: KV cells per slot: the longest bench prompt and its answer fit
SLOT_TOKENS = 1024


@dataclass
class Slot:
    seq: int
    ids: list[int] = field(default_factory=list)  # the prompt, then what was generated
    prompt_len: int = 0
    fed: int = 0  # tokens already in the KV cache
    row: int = -1  # this slot's logits row in the last decode call


def _tokenize(llama: Any, vocab: Any, text: str) -> list[int]:
    raw = text.encode()
    out = (llama.llama_token * (len(raw) + 8))()
    n = llama.llama_tokenize(vocab, raw, len(raw), out, len(out), False, True)
    assert n >= 0, "tokenize failed"
    return list(out[:n])


def measure(
    prompts: list[list[int]], slots: int, threads: int
) -> tuple[float, int, list[list[int]]]:
    """(seconds, generated tokens, each prompt's generated ids) with `slots` sequences at once."""
    import llama_cpp as llama

    model = llama.llama_model_load_from_file(
        str(gguf_path()).encode(), llama.llama_cpp.llama_model_default_params()
    )
    params = llama.llama_context_default_params()
    params.n_ctx = SLOT_TOKENS * slots
    params.n_batch = 2048
    params.n_ubatch = 512
    params.n_seq_max = slots
    params.n_threads = params.n_threads_batch = threads
    ctx = llama.llama_init_from_model(model, params)
    vocab = llama.llama_model_get_vocab(model)
    n_vocab = llama.llama_vocab_n_tokens(vocab)
    memory = llama.llama_get_memory(ctx)
    batch = llama.llama_batch_init(2048 + slots, 0, 1)
    waiting = list(range(len(prompts)))
    results: list[list[int]] = [[] for _ in prompts]
    active: dict[int, tuple[Slot, int]] = {}  # seq -> (slot, prompt number)
    generated = 0
    start = time.perf_counter()
    while waiting or active:
        for seq in range(slots):  # a free slot takes the next prompt
            if seq not in active and waiting:
                number = waiting.pop(0)
                llama.llama_memory_seq_rm(memory, seq, -1, -1)
                ids = list(prompts[number])
                active[seq] = (Slot(seq, ids, len(ids)), number)
        n = 0
        for slot, _ in active.values():
            todo = slot.ids[slot.fed :]
            for k, token in enumerate(todo):
                batch.token[n] = token
                batch.pos[n] = slot.fed + k
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq
                batch.logits[n] = k == len(todo) - 1
                n += 1
            slot.row = n - 1
            slot.fed += len(todo)
        batch.n_tokens = n
        assert llama.llama_decode(ctx, batch) == 0, "llama_decode failed"
        for seq, (slot, number) in list(active.items()):
            pointer = llama.llama_get_logits_ith(ctx, slot.row)
            logits = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), (n_vocab,)
            )
            token = int(logits.argmax())
            done = llama.llama_vocab_is_eog(vocab, token)
            if not done:
                slot.ids.append(token)
                generated += 1
            new = len(slot.ids) - slot.prompt_len
            if done or new >= MAX_TOKENS:
                results[number] = slot.ids[slot.prompt_len :]
                generated += 1 if done else 0  # EOS is a generated token, as usage counts it
                del active[seq]
    elapsed = time.perf_counter() - start
    llama.llama_batch_free(batch)
    llama.llama_free(ctx)
    llama.llama_model_free(model)
    return elapsed, generated, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import llama_cpp as llama
    from transformers import AutoTokenizer

    llama.llama_backend_init()
    no_repack()  # before any model loads: see bench/generation.py
    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = llama.llama_model_load_from_file(
        str(path).encode(), llama.llama_cpp.llama_model_default_params()
    )
    vocab = llama.llama_model_get_vocab(model)
    prompts = []
    for p in make_prompts(args.prompts):
        text = tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        prompts.append(_tokenize(llama, vocab, text))
    llama.llama_model_free(model)
    measure(prompts[:2], 1, args.threads)  # warm-up
    first: list[list[int]] | None = None
    for slots in args.slots:
        seconds, tokens, results = measure(prompts, slots, args.threads)
        same = (
            ""
            if first is None
            else f"  same ids as {args.slots[0]} slot(s): "
            + (f"{sum(a == b for a, b in zip(first, results, strict=True))}/{len(results)}")
        )
        first = results if first is None else first
        rate = tokens / seconds
        print(f"llama.cpp, {slots:2d} at once: {tokens:6d} tokens {rate:8.1f} tokens/s{same}")


if __name__ == "__main__":
    main()
