"""Sequence to sequence (`text2text-generation`): summarisation, translation and other text in,
text out, by an encoder-decoder model transformers implements itself (T5, BART, Marian, ...).

Items, parameters and output are text generation's (workers/runtime/generation.py): an item is a
text or `{"text": ..., overrides}`, the sampling parameters those of gen_params.py, the output
`{"text", "finish_reason", "usage": {"prompt_tokens", "completion_tokens"}}`.

Decoding shares the loop of workers/runtime/decoding.py (its sampling, stop strings, seeds,
streaming, `should_stop` and KV budget), in waves (docs/decisions/0019): the encoder reads the
inputs of a wave once (right-padded, in passes of at most PREFILL_TOKENS padded tokens), then
every row of the wave decodes from the model's start token, one forward pass per step; the
cross-attention keys and values are computed at the first step and kept; every step applies
what the model's generation config asks of it (StepRules: suppressed and forced tokens, least
lengths, no repeated n-grams), as generate does with one beam; a row that ends
leaves the batch (its cache rows dropped) and the next wave starts when the last row of this
one has ended. Rows of a wave always hold decoders of the same length, which is what BART's
and Marian's absolute decoder positions need (they count from the cache's length, one for
every row); joining rows mid-wave, as the decoder-only loop does, would give them wrong
positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from workers.runtime.base import ItemError, ModelLoadError, RunOptions
from workers.runtime.decoding import PREFILL_TOKENS, Engine, Generated, Request, _Loop
from workers.runtime.gen_params import PARAM_NAMES, sampling
from workers.runtime.generation import DecodingRunner, check_text
from workers.runtime.kv_cache import new_cache, regroup
from workers.runtime.tokens import json_type

#: Input tokens when the config names no limit (T5's relative positions have none).
DEFAULT_MAX_INPUT = 512


@dataclass(frozen=True)
class StepRules:
    """What a model's generation config asks of every decoding step besides sampling, as
    `generate` applies it (with one beam): tokens never written, a forced first and last
    token, no end of text before a length, no n-gram written twice."""

    suppressed: tuple[int, ...] = ()  #: never written (suppress_tokens, one-token bad words)
    forced_bos: int | None = None  #: the first token (mBART's and BART-large's)
    forced_eos: int | None = None  #: the last token a row's limit leaves room for (BART's)
    min_length: int = 0  #: no end of text while the decoder holds fewer tokens, start included
    min_new_tokens: int = 0  #: no end of text before this many tokens are written
    no_repeat_ngram_size: int = 0  #: no n-gram of this size twice in the decoder's tokens

    @classmethod
    def of(cls, generation: Any) -> StepRules:
        suppressed = [int(t) for t in generation.suppress_tokens or []]
        # generate's bad words of one token are never chosen (Marian's padding is one).
        suppressed += [int(w[0]) for w in generation.bad_words_ids or [] if len(w) == 1]

        def token(value: Any) -> int | None:
            if isinstance(value, list):  # forced_eos_token_id may list several; the first
                value = value[0] if value else None
            return None if value is None else int(value)

        min_length = int(generation.min_length or 0)
        min_new_tokens = getattr(generation, "min_new_tokens", None)
        if min_new_tokens is not None:  # generate lets it stand for min_length, even at 0
            min_length = 0
        return cls(
            suppressed=tuple(sorted(set(suppressed))),
            forced_bos=token(generation.forced_bos_token_id),
            forced_eos=token(generation.forced_eos_token_id),
            min_length=min_length,
            min_new_tokens=int(min_new_tokens or 0),
            no_repeat_ngram_size=int(generation.no_repeat_ngram_size or 0),
        )


class Seq2SeqEngine(Engine):
    """An encoder-decoder model's decoding loop: the decoder's start token, and its
    generation config's StepRules at every step."""

    def __init__(
        self,
        model: Any,
        decode: Any,
        eos_ids: set[int],
        pad_id: int,
        device: torch.device,
        start_id: int,
        rules: StepRules,
    ) -> None:
        super().__init__(model, decode, eos_ids, pad_id, device)
        self.start_id = start_id
        self.rules = rules
        self.suppressed = torch.tensor(rules.suppressed, dtype=torch.long, device=device)
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)

    def generate(self, requests: list[Request], options: RunOptions) -> list[Generated]:
        with torch.inference_mode():
            return _Waves(self, requests, options).run()


class _Waves(_Loop):
    e: Seq2SeqEngine

    def __init__(self, engine: Seq2SeqEngine, requests: list[Request], options: RunOptions):
        super().__init__(engine, requests, options)
        self.hidden = torch.zeros(0)  #: the encoder's output for every row
        self.source_mask = torch.zeros(0)  #: which of its columns are input, not padding
        self.steps = 0  #: decoder tokens chosen so far in this wave

    def _refill(self) -> None:
        keep = [i for i, s in enumerate(self.rows) if s.finish is None]
        if keep:  # a wave is on: the rows that ended leave it, none joins
            if len(keep) < len(self.rows):
                rows = torch.tensor(keep, dtype=torch.long, device=self.e.device)
                regroup(self.cache.self_attention_cache, rows, 0, None)
                for layer in self.cache.cross_attention_cache.layers:
                    layer.batch_select_indices(rows)
                self.hidden, self.source_mask = self.hidden[rows], self.source_mask[rows]
                self.last = self.last[rows]
                self.rows = [self.rows[i] for i in keep]
            return
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.rows, self.cache = self._admit(), None
        if not self.rows:
            return
        self.hidden, self.source_mask = self._encode([s.request.source for s in self.rows])
        self.cache = EncoderDecoderCache(new_cache(), DynamicCache())
        self.last = torch.full((len(self.rows),), self.e.start_id, device=self.e.device)
        self.steps = 0

    def _encode(self, sources: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output of every source, right-padded to the longest."""
        encoder = self.e.model.get_encoder()
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        start = 0
        while start < len(sources):
            longest, end = 0, start
            while end < len(sources):
                longest = max(longest, len(sources[end]))
                if end > start and longest * (end - start + 1) > PREFILL_TOKENS:
                    break
                end += 1
            group = sources[start:end]
            width = max(len(s) for s in group)
            ids = torch.full((len(group), width), self.e.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, source in enumerate(group):
                ids[row, : len(source)] = torch.tensor(source, dtype=torch.long)
                mask[row, : len(source)] = 1
            ids, mask = ids.to(self.e.device), mask.to(self.e.device)
            parts.append((encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask))
            start = end
        width = max(hidden.shape[1] for hidden, _ in parts)
        hidden = torch.cat([_pad_right(h, width, 1) for h, _ in parts])
        mask = torch.cat([_pad_right(m, width, 1) for _, m in parts])
        return hidden, mask

    def _step(self) -> None:
        from transformers.modeling_outputs import BaseModelOutput

        out = self.e.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=self.hidden),
            attention_mask=self.source_mask,
            decoder_input_ids=self.last[:, None],
            cache=self.cache,
            use_cache=True,
        )
        logits = self._apply_rules(out.logits[:, -1, :].float())
        self.steps += 1
        tokens = self._choose(logits, self.rows)
        self._take(self.rows, tokens)
        self.last = torch.tensor(tokens, dtype=torch.long, device=self.e.device)

    def _apply_rules(self, logits: torch.Tensor) -> torch.Tensor:
        """The step's logits with the generation config's rules applied, as generate's
        logits processors apply them (every rule only ever rules tokens out, or forces one)."""
        rules, never = self.e.rules, float("-inf")
        if len(self.e.suppressed):
            logits[:, self.e.suppressed] = never
        # Every row of a wave has written `steps` tokens after its start token.
        if self.steps + 1 < rules.min_length or self.steps < rules.min_new_tokens:
            logits[:, self.e.eos] = never
        if rules.no_repeat_ngram_size > 0:
            for row, seq in enumerate(self.rows):
                banned = repeated_ngram_ends(
                    seq.request.ids + seq.state.tokens, rules.no_repeat_ngram_size
                )
                if banned:
                    logits[row, banned] = never
        forced: list[tuple[int, int]] = []  # (row, token), later ones winning, as in generate
        if self.steps == 0 and rules.forced_bos is not None:
            forced = [(row, rules.forced_bos) for row in range(len(self.rows))]
        if rules.forced_eos is not None:  # a row's last token, where its limit ends it
            forced += [
                (row, rules.forced_eos)
                for row, seq in enumerate(self.rows)
                if seq.count == seq.request.sampling.max_tokens - 1
            ]
        for row, token in forced:
            logits[row] = never
            logits[row, token] = 0.0
        return logits


def repeated_ngram_ends(tokens: list[int], size: int) -> list[int]:
    """The tokens that would write an n-gram of `size` that `tokens` already hold: those that
    followed an earlier occurrence of the last size - 1 tokens."""
    if len(tokens) + 1 < size:
        return []
    prefix = tokens[len(tokens) - size + 1 :] if size > 1 else []
    return [
        tokens[start + size - 1]
        for start in range(len(tokens) - size + 1)
        if tokens[start : start + size - 1] == prefix
    ]


def _pad_right(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - dim - 1) + [0, missing]
    return torch.nn.functional.pad(tensor, pad)


class Seq2SeqRunner(DecodingRunner):
    """An encoder-decoder model behind the Runner protocol."""

    engine: Seq2SeqEngine

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        max_input: int,
        max_output: int | None,
        eos_ids: set[int],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_input = max_input  #: most tokens the encoder reads
        self.max_output = max_output  #: most tokens the decoder may write (None: no limit)
        self.context_length = max_input
        self.eos_ids = eos_ids
        generation = model.generation_config
        pad = model.config.pad_token_id
        pad = tokenizer.pad_token_id if pad is None else pad
        start = generation.decoder_start_token_id
        start = model.config.decoder_start_token_id if start is None else start
        if isinstance(start, list):
            start = start[0] if start else None
        if start is None or pad is None:
            raise ModelLoadError("the config names no decoder_start_token_id or pad_token_id")
        self.engine = Seq2SeqEngine(
            model,
            self._decode,
            eos_ids,
            int(pad),
            torch.device(device),
            int(start),
            StepRules.of(generation),
        )

    def prepare(self, value: Any, options: RunOptions) -> Request:
        line: Mapping[str, Any] = {}
        if isinstance(value, dict):
            line = value
            unknown = sorted(set(value) - {"text", *PARAM_NAMES})
            if unknown:
                raise ItemError("invalid_parameter", f"unknown parameter `{unknown[0]}`")
            if "text" not in value:
                raise ItemError("invalid_input_type", "input needs `text`")
            value = value["text"]
        if not isinstance(value, str):
            raise ItemError(
                "invalid_input_type",
                f"input must be a text or an object with `text`, not {json_type(value)}",
            )
        params = sampling(options.params, line, options.max_new_tokens)
        text = check_text(value, options, "text")
        source = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(source) > self.max_input:
            raise ItemError(
                "context_length_exceeded",
                f"the text has {len(source)} tokens; this model reads at most {self.max_input}",
            )
        room = params.max_tokens if self.max_output is None else self.max_output
        start = [self.engine.start_id]
        limited = replace(params, max_tokens=min(params.max_tokens, room))
        return Request(start, limited, source=tuple(source))


def load_seq2seq_runner(path: str, device: str, precision: str = "fp32") -> Seq2SeqRunner:
    """A transformers folder (config.json, safetensors, tokenizer) of an encoder-decoder LM."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    root = Path(path)
    if not any(root.glob("*.safetensors")):
        raise ModelLoadError("the model has no *.safetensors weights; pickled weights are refused")
    dtype = torch.float32
    if precision == "mixed":  # the GPU pool, as text generation's
        dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True, trust_remote_code=False)
    model: Any = AutoModelForSeq2SeqLM.from_pretrained(
        root, use_safetensors=True, local_files_only=True, trust_remote_code=False, dtype=dtype
    )
    config = model.config
    if not getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError("text2text-generation needs an encoder-decoder model")
    # Learned or sinusoidal positions bound both sides (BART, Marian); T5's relative ones
    # bound neither, so its input is capped by its `n_positions` or the default.
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    max_input = positions or int(getattr(config, "n_positions", 0) or 0) or DEFAULT_MAX_INPUT
    tokenizer_limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tokenizer_limit < max_input:
        max_input = tokenizer_limit
    max_output = positions - 1 if positions else None  # the start token takes one position
    if max_output is not None and max_output < 1:
        raise ModelLoadError("config.json gives no usable max_position_embeddings")
    found = model.generation_config.eos_token_id
    eos = {int(t) for t in (found if isinstance(found, list) else [] if found is None else [found])}
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    model = model.to(device).eval()
    return Seq2SeqRunner(model, tokenizer, device, max_input, max_output, eos)
