"""Continuous batching: many sequences decode together over one KV cache; a sequence that ends
(EOS, a stop string, its max_tokens) leaves the batch and a waiting one takes its place.

Why our own loop rather than transformers' `generate` or its `generate_batch` (continuous
batching over a paged cache): measured on SmolLM2-135M on this project's 2-core CPU, its paged
loop reached 3.6x one prompt at a time, below plain padded batches (4.9x at 16, 7.9x at 32),
and padded batches wait for their longest member. Here rows are left-padded to a shared
length, so one forward pass per step serves every row (position ids and the attention mask
keep each row's own positions), rows leave and join a few at a time (docs/decisions/0011).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from workers.runtime.base import RunOptions, Stopped
from workers.runtime.gen_params import Sampling
from workers.runtime.gen_text import TextState
from workers.runtime.kv_cache import new_cache, regroup

#: Padded prompt tokens one prefill forward pass may take (a memory bound on activations).
PREFILL_TOKENS = 4096


@dataclass(frozen=True)
class Request:
    ids: list[int]  #: the prompt's tokens (an encoder-decoder's: the decoder's start token)
    sampling: Sampling  #: max_tokens already fits the context
    index: int = 0  #: the value's index in its run() call (on_text's first argument)
    #: an encoder-decoder model's input, read by its encoder (workers/runtime/seq2seq.py)
    source: tuple[int, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return len(self.source) if self.source else len(self.ids)


@dataclass(frozen=True)
class Generated:
    text: str
    finish_reason: str  #: "stop" | "length"
    prompt_tokens: int
    completion_tokens: int

    def output(self) -> dict[str, Any]:
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        return {"text": self.text, "finish_reason": self.finish_reason, "usage": usage}


class _Sequence:
    def __init__(self, request: Request, decode: Callable[[list[int]], str]) -> None:
        self.request = request
        self.state = TextState(decode, request.sampling.stop)
        self.finish: str | None = None
        seed = request.sampling.seed
        self.generator: torch.Generator | None = None
        if not request.sampling.greedy:
            self.generator = torch.Generator().manual_seed(
                secrets.randbits(63) if seed is None else seed % 2**64
            )
        self.count = 0  #: tokens generated, EOS included

    @property
    def reserved(self) -> int:
        """Cache columns this sequence may come to hold (an encoder-decoder's: its decoder's
        and, for cross-attention, its input's)."""
        request = self.request
        return len(request.ids) + len(request.source) + request.sampling.max_tokens


class Engine:
    """A causal LM's decoding loop over a batch of requests."""

    def __init__(
        self,
        model: Any,
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
        pad_id: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.decode = decode
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.device = device

    def generate(self, requests: list[Request], options: RunOptions) -> list[Generated]:
        with torch.inference_mode():
            return _Loop(self, requests, options).run()


class _Loop:
    def __init__(self, engine: Engine, requests: list[Request], options: RunOptions) -> None:
        self.e = engine
        self.options = options
        self.waiting = deque(_Sequence(r, engine.decode) for r in requests)
        self.results: dict[int, Generated] = {}
        self.rows: list[_Sequence] = []
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=engine.device)
        self.positions = torch.zeros(0, dtype=torch.long, device=engine.device)
        self.last = torch.zeros(0, dtype=torch.long, device=engine.device)
        self.width = max(1, options.max_rows)  #: most rows decoding together

    def run(self) -> list[Generated]:
        order = [s.request.index for s in self.waiting]
        while self.waiting or any(s.finish is None for s in self.rows):
            if self.options.should_stop is not None and self.options.should_stop():
                raise Stopped()
            live = sum(s.finish is None for s in self.rows)
            free = self.width - live
            if self.waiting and (live == 0 or free >= max(1, self.width // 8)):
                self._refill()
            elif len(self.rows) - live >= max(1, len(self.rows) // 4):
                self._refill()  # only drops the finished rows: they cost compute
            if any(s.finish is None for s in self.rows):
                self._step()
        return [self.results[i] for i in order]

    # -- rows leave and join ---------------------------------------------------------------

    def _admit(self) -> list[_Sequence]:
        """The waiting sequences that join now. The cache is one rectangle, every row padded
        to the longest, so what the budget bounds is rows x the largest reservation among them
        (a sum of the rows' own lengths would let one long prompt beside many short ones take
        many times the budget)."""
        kept = [s for s in self.rows if s.finish is None]
        budget = max(1, self.options.kv_tokens)
        widest = max((s.reserved for s in kept), default=0)
        joining: list[_Sequence] = []
        while self.waiting and len(kept) + len(joining) < self.width:
            nxt = self.waiting[0]
            rows = len(kept) + len(joining) + 1
            if (kept or joining) and rows * max(widest, nxt.reserved) > budget:
                break
            joining.append(self.waiting.popleft())
            widest = max(widest, nxt.reserved)
        return joining

    def _refill(self) -> None:
        keep = [i for i, s in enumerate(self.rows) if s.finish is None]
        joining = self._admit()
        rows = torch.tensor(keep, dtype=torch.long, device=self.e.device)
        mask = self.mask[rows]
        drop = 0
        if len(keep):  # columns no kept row uses any more (theirs were the rows that left)
            used = mask.any(dim=0).nonzero()
            drop = int(used[0]) if len(used) else mask.shape[1]
        mask, positions, last = mask[:, drop:], self.positions[rows], self.last[rows]
        if not keep:  # nothing left to keep: the joining rows start a cache of their own
            self.cache = None
            mask = mask[:, :0]
        elif self.cache is not None:
            regroup(self.cache, rows, drop, None)
        self.rows = [self.rows[i] for i in keep]
        start = 0
        while start < len(joining):
            group = _prefill_group(joining, start)
            start += len(group)
            cache, g_mask, g_pos, g_last = self._prefill(group)
            if self.cache is None:
                self.cache = cache
            else:
                regroup(self.cache, torch.arange(len(self.rows), device=self.e.device), 0, cache)
            width = max(mask.shape[1], g_mask.shape[1])
            mask = torch.cat([_pad_left(mask, width), _pad_left(g_mask, width)])
            positions = torch.cat([positions, g_pos])
            last = torch.cat([last, g_last])
            self.rows += group
        self.mask, self.positions, self.last = mask, positions, last
        if not self.rows:
            self.cache = None

    def _prefill(self, group: list[_Sequence]) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
        width = max(len(s.request.ids) for s in group)
        ids = torch.full((len(group), width), self.e.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            n = len(seq.request.ids)
            ids[row, width - n :] = torch.tensor(seq.request.ids, dtype=torch.long)
            mask[row, width - n :] = 1
        ids, mask = ids.to(self.e.device), mask.to(self.e.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache()
        out = self.e.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        tokens = self._choose(out.logits[:, -1, :], group)
        self._take(group, tokens)
        return cache, mask, positions[:, -1] + 1, torch.tensor(tokens, device=self.e.device)

    # -- one decode step --------------------------------------------------------------------

    def _step(self) -> None:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self.e.model(
            input_ids=self.last[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            cache=self.cache,
            use_cache=True,
        )
        self.positions = self.positions + 1
        tokens = self._choose(out.logits[:, -1, :], self.rows)
        self._take(self.rows, tokens)
        self.last = torch.tensor(tokens, dtype=torch.long, device=self.e.device)

    def _choose(self, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int]:
        logits = logits.float()
        chosen = logits.argmax(dim=-1).tolist()
        for row, seq in enumerate(seqs):
            s = seq.request.sampling
            if seq.finish is not None or (s.greedy and s.repetition_penalty == 1.0):
                continue
            chosen[row] = _pick(logits[row], seq, s)
        return chosen

    def _take(self, seqs: list[_Sequence], tokens: list[int]) -> None:
        """Each live sequence takes its next token; those that end hand in their result."""
        on_text = self.options.on_text
        for seq, token in zip(seqs, tokens, strict=True):
            if seq.finish is not None:
                continue
            seq.count += 1
            if token in self.e.eos_ids:
                seq.finish = "stop"
            else:
                seq.state.add(token)
                if seq.state.stopped:
                    seq.finish = "stop"
                elif seq.count >= seq.request.sampling.max_tokens:
                    seq.finish = "length"
            delta = seq.state.delta(final=seq.finish is not None)
            if delta and on_text is not None:
                on_text(seq.request.index, delta)
            if seq.finish is not None:
                self.results[seq.request.index] = Generated(
                    seq.state.text, seq.finish, seq.request.prompt_tokens, seq.count
                )


def _pick(logits: torch.Tensor, seq: _Sequence, s: Sampling) -> int:
    """One row's next token under its own penalty, temperature, top-k, top-p and seed."""
    if s.repetition_penalty != 1.0:
        seen = torch.tensor(seq.request.ids + seq.state.tokens, device=logits.device)
        scores = logits.gather(0, seen)
        scores = torch.where(
            scores < 0, scores * s.repetition_penalty, scores / s.repetition_penalty
        )
        logits = logits.scatter(0, seen, scores)
    if s.greedy:
        return int(logits.argmax())
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[0]:
        floor = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < floor, float("-inf"))
    probs = logits.softmax(dim=-1).cpu()  # the seeded generator lives on the CPU
    if s.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        before = ordered.cumsum(0) - ordered  # mass of the tokens ranked above each one
        ordered[before >= s.top_p] = 0.0  # the first token always stays
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=seq.generator))


def _prefill_group(joining: list[_Sequence], start: int) -> list[_Sequence]:
    """The sequences from `start` whose padded prompts fit one prefill pass (at least one)."""
    group: list[_Sequence] = []
    longest = 0
    for seq in joining[start:]:
        longest = max(longest, len(seq.request.ids))
        if group and longest * (len(group) + 1) > PREFILL_TOKENS:
            break
        group.append(seq)
    return group


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))
