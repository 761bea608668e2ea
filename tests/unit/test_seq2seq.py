"""Sequence to sequence in-process, on tiny random T5, BART and Marian models: the decoding
waves against transformers' own `generate`, parameters, stop strings and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.factories import make_tiny_seq2seq
from workers.runtime.base import ItemError, RunOptions, Stopped
from workers.runtime.seq2seq import Seq2SeqRunner, load_seq2seq_runner, repeated_ngram_ends

TEXTS = [
    "the quick brown fox",
    "Once upon a time there lived a king and a queen in a castle by the sea",
    "a",
    "hello world, how are you today? I am fine",
    "What is the capital of France?",
]
ARCHITECTURES = ("t5", "bart", "marian")


@pytest.fixture(scope="module")
def runners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Seq2SeqRunner]:
    made = {}
    for seed, name in enumerate(ARCHITECTURES):
        folder = make_tiny_seq2seq(tmp_path_factory.mktemp(name), name, seed=seed + 1)
        made[name] = load_seq2seq_runner(str(folder), "cpu")
    return made


def _options(**params: Any) -> RunOptions:
    return RunOptions(params=params, max_rows=2, kv_tokens=4096)


def _run(runner: Seq2SeqRunner, items: list[Any], options: RunOptions) -> list[dict[str, Any]]:
    return runner.run([runner.prepare(item, options) for item in items], options)


def _reference(runner: Seq2SeqRunner, text: str, max_tokens: int) -> tuple[list[int], str]:
    """transformers' own greedy decoding of one text, unpadded: its tokens and its text."""
    encoded = runner.tokenizer(text, return_tensors="pt")
    out = runner.model.generate(**encoded, max_new_tokens=max_tokens, do_sample=False, num_beams=1)
    tokens = out[0, 1:].tolist()  # after the decoder's start token
    if tokens and tokens[-1] in runner.eos_ids:
        shown = tokens[:-1]
    else:
        shown = tokens
    text_out = runner.tokenizer.decode(
        shown, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return tokens, text_out


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_greedy_text_equals_generate_while_rows_leave_their_wave(
    runners: dict[str, Seq2SeqRunner], name: str
) -> None:
    runner = runners[name]
    lengths = [4 + 3 * i for i in range(len(TEXTS))]  # rows end at different steps
    items = [{"text": t, "max_tokens": n} for t, n in zip(TEXTS, lengths, strict=True)]
    options = RunOptions(params={"temperature": 0}, max_rows=3, kv_tokens=4096)
    outputs = _run(runner, items, options)
    texts = set()
    for text, length, output in zip(TEXTS, lengths, outputs, strict=True):
        tokens, want = _reference(runner, text, length)
        assert output["text"] == want, (name, text)
        assert output["usage"] == {
            "prompt_tokens": len(runner.tokenizer(text)["input_ids"]),
            "completion_tokens": len(tokens),
        }
        ended = bool(tokens) and tokens[-1] in runner.eos_ids
        assert output["finish_reason"] == ("stop" if ended else "length")
        texts.add(output["text"])
    assert len(texts) > 1, "the tiny model must answer different inputs differently"


#: What published summarisers ship in their generation config (BART-large-CNN: min_length 56,
#: no_repeat_ngram_size 3, forced_eos_token_id 2), scaled to a tiny model's outputs.
RULES = {"min_length": 6, "no_repeat_ngram_size": 2}


@pytest.mark.parametrize("name", ["bart", "t5"])
def test_the_generation_configs_rules_are_applied_as_generate_applies_them(
    tmp_path: Path, name: str
) -> None:
    import dataclasses

    folder = make_tiny_seq2seq(tmp_path, name, seed=7)
    runner = load_seq2seq_runner(str(folder), "cpu")
    plain = _run(runner, TEXTS, RunOptions(params={"temperature": 0, "max_tokens": 12}))
    generation = runner.model.generation_config
    for key, value in RULES.items():
        setattr(generation, key, value)
    generation.forced_eos_token_id = runner.tokenizer.eos_token_id
    generation.save_pretrained(folder)
    runner = load_seq2seq_runner(str(folder), "cpu")  # the rules, as an upload carries them
    assert dataclasses.asdict(runner.engine.rules) | {"suppressed": ()} == {
        "suppressed": (),
        "forced_bos": None,
        "forced_eos": runner.tokenizer.eos_token_id,
        "min_new_tokens": 0,
        **RULES,
    }
    lengths = [6 + 3 * i for i in range(len(TEXTS))]  # rows meet their limit at different steps
    items = [{"text": t, "max_tokens": n} for t, n in zip(TEXTS, lengths, strict=True)]
    outputs = _run(runner, items, RunOptions(params={"temperature": 0}, max_rows=3))
    for text, length, output in zip(TEXTS, lengths, outputs, strict=True):
        tokens, want = _reference(runner, text, length)
        assert output["text"] == want, (name, text)
        assert output["usage"]["completion_tokens"] == len(tokens)
        ended = bool(tokens) and tokens[-1] in runner.eos_ids
        assert output["finish_reason"] == ("stop" if ended else "length")
        assert ended, "the forced end of text closes every row that meets its limit"
        assert len(tokens) >= RULES["min_length"] - 1, "no end of text before min_length"
        pairs = list(zip(tokens, tokens[1:], strict=False))
        assert len(pairs) == len(set(pairs)), "no 2-gram written twice"
    # The rules change what this model writes: without them the same texts come out otherwise.
    short = _run(runner, TEXTS, RunOptions(params={"temperature": 0, "max_tokens": 12}))
    assert [o["text"] for o in short] != [o["text"] for o in plain]


@pytest.mark.parametrize(("min_length", "min_new_tokens"), [(6, None), (3, 8), (6, 0)])
def test_no_end_of_text_before_the_configs_least_length(
    tmp_path: Path, min_length: int, min_new_tokens: int | None
) -> None:
    folder = make_tiny_seq2seq(tmp_path, "bart", seed=3)
    generation = load_seq2seq_runner(str(folder), "cpu").model.generation_config
    generation.min_length, generation.min_new_tokens = min_length, min_new_tokens
    generation.save_pretrained(folder)
    runner = load_seq2seq_runner(str(folder), "cpu")
    eos = runner.tokenizer.eos_token_id
    with torch.no_grad():  # a model that would end every text at once
        runner.model.final_logits_bias[0, eos] = 100.0
    outputs = _run(runner, TEXTS, RunOptions(params={"temperature": 0, "max_tokens": 20}))
    # Tokens before the end of text may come. generate lets min_new_tokens, when set (even to
    # 0), stand for min_length.
    least = min_length - 1 if min_new_tokens is None else min_new_tokens
    for text, output in zip(TEXTS, outputs, strict=True):
        tokens, want = _reference(runner, text, 20)
        assert output["text"] == want and tokens[-1] == eos
        assert output["usage"]["completion_tokens"] == len(tokens) == least + 1
        assert output["finish_reason"] == "stop"


def test_repeated_ngram_ends_are_what_followed_the_last_n_minus_1_tokens_before() -> None:
    assert repeated_ngram_ends([5, 6, 7, 5, 6], 3) == [7]
    assert repeated_ngram_ends([5, 6, 7, 5, 6, 8, 5, 6], 3) == [7, 8]
    assert repeated_ngram_ends([5, 6], 3) == [] and repeated_ngram_ends([5], 3) == []
    assert repeated_ngram_ends([4, 4, 9, 4], 1) == [4, 4, 9, 4]  # size 1: no token twice
    assert repeated_ngram_ends([3, 4, 3], 2) == [4]


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(
    runners: dict[str, Seq2SeqRunner],
) -> None:
    runner = runners["t5"]
    params = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "max_tokens": 12}
    alone = _run(runner, [{"text": TEXTS[0], "seed": 7}], _options(**params))
    items = [{"text": t, "seed": 7 if i == 0 else 100 + i} for i, t in enumerate(TEXTS)]
    together = _run(runner, items, _options(**params))
    assert together[0] == alone[0]
    again = _run(runner, [{"text": TEXTS[0], "seed": s} for s in (7, 8, 9, 10)], _options(**params))
    assert again[0] == alone[0]
    assert len({o["text"] for o in again}) > 1, "other seeds sample other text"


def test_max_tokens_and_stop_strings_end_with_their_finish_reason(
    runners: dict[str, Seq2SeqRunner],
) -> None:
    runner = runners["t5"]
    (long,) = _run(runner, [TEXTS[1]], _options(temperature=0, max_tokens=12))
    (short,) = _run(runner, [{"text": TEXTS[1], "max_tokens": 3}], _options(temperature=0))
    assert short["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3
    assert long["text"].startswith(short["text"])
    stop = long["text"][4:6]
    assert stop.strip(), long
    (stopped,) = _run(runner, [{"text": TEXTS[1], "stop": [stop]}], _options(temperature=0))
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == long["text"][: long["text"].find(stop)]


def test_bad_lines_are_item_errors_and_limits_come_from_the_config(
    runners: dict[str, Seq2SeqRunner],
) -> None:
    bart = runners["bart"]  # 128 positions on either side
    options = _options(temperature=0)
    with pytest.raises(ItemError) as error:
        bart.prepare("the quick brown fox " * 100, options)
    assert error.value.code == "context_length_exceeded"
    assert bart.prepare({"text": "a", "max_tokens": 1000}, options).sampling.max_tokens == 127
    for value, code in (
        (7, "invalid_input_type"),
        ({"prompt": "a"}, "invalid_parameter"),
        ({"max_tokens": 3}, "invalid_input_type"),
        ({"text": "a", "temperature": 9}, "invalid_parameter"),
        ("   ", "empty_input"),
    ):
        with pytest.raises(ItemError) as error:
            bart.prepare(value, options)
        assert error.value.code == code, value
    t5 = runners["t5"]  # relative positions: the input limit is the default, the output's none
    assert t5.max_input == 512 and t5.max_output is None


def test_marian_never_writes_its_padding_and_a_stop_request_ends_the_run(
    runners: dict[str, Seq2SeqRunner],
) -> None:
    marian = runners["marian"]
    assert marian.model.config.pad_token_id in marian.engine.suppressed.tolist()
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 3

    options = RunOptions(params={"max_tokens": 50}, should_stop=should_stop)
    with pytest.raises(Stopped):
        _run(marian, TEXTS, options)


def test_streamed_deltas_add_up_to_each_text(runners: dict[str, Seq2SeqRunner]) -> None:
    runner = runners["bart"]
    pieces: dict[int, str] = {}

    def on_text(index: int, delta: str) -> None:
        pieces[index] = pieces.get(index, "") + delta

    options = RunOptions(params={"temperature": 0, "max_tokens": 8}, on_text=on_text, max_rows=3)
    outputs = _run(runner, TEXTS, options)
    assert [pieces.get(i, "") for i in range(len(TEXTS))] == [o["text"] for o in outputs]


def test_a_folder_without_safetensors_is_refused(tmp_path: Path) -> None:
    from workers.runtime.base import ModelLoadError

    folder = make_tiny_seq2seq(tmp_path / "t5", "t5")
    for weights in folder.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_seq2seq_runner(str(folder), "cpu")
