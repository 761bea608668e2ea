"""Speech to text: bounded audio decoding and the Whisper runner against in-process
transformers (a tiny Whisper built here from a config, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.speech import (
    RATE,
    data_url,
    encode,
    hostile_audio,
    make_tiny_whisper,
    reference,
    tone,
)
from workers.runtime.audio import decode, prepare_audio, resample
from workers.runtime.base import ItemError, ModelSpec, RunOptions
from workers.runtime.items import run_chunk

pytest.importorskip("soundfile")

TASK = "automatic-speech-recognition"


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def runner(whisper: Path) -> Any:
    from workers.runtime.registry import load_runner

    return load_runner(ModelSpec("t/whisper@1", "transformers", TASK, str(whisper)))


@pytest.mark.parametrize("format", ["WAV", "FLAC", "OGG"])
def test_each_format_decodes_to_the_samples_it_holds(format: str) -> None:
    samples = tone(2.0, seed=1)
    decoded = decode(encode(samples, format=format), RATE, 60)
    assert decoded.shape == samples.shape and decoded.dtype == np.float32
    if format == "OGG":  # Vorbis is lossy: the same signal, not the same samples
        assert float(np.corrcoef(decoded, samples)[0, 1]) > 0.99
    else:
        assert float(np.abs(decoded - samples).max()) < 1e-3


def test_other_rates_and_stereo_become_mono_at_the_models_rate() -> None:
    from scipy.signal import resample_poly

    left, right = tone(1.5, rate=44_100, seed=2), tone(1.5, rate=44_100, seed=3)
    decoded = decode(encode(np.stack([left, right], axis=1), rate=44_100), RATE, 60)
    expected = resample_poly((left + right) / 2, 160, 441)
    assert decoded.shape == expected.shape
    assert float(np.abs(decoded - expected).max()) < 1e-3
    assert resample(left, 44_100, 44_100) is left


@pytest.mark.parametrize("name", sorted(hostile_audio()))
def test_hostile_audio_is_an_item_error(name: str) -> None:
    data, code = hostile_audio()[name]
    with pytest.raises(ItemError) as caught:
        decode(data, RATE, 600)
    assert caught.value.code == code, caught.value.message


def test_the_length_limit_is_read_from_the_header() -> None:
    with pytest.raises(ItemError) as caught:
        decode(encode(tone(11.0)), RATE, 10)
    assert caught.value.code == "audio_too_long"
    assert "11.0 s" in caught.value.message and "MAX_AUDIO_SECONDS" in caught.value.message
    assert len(decode(encode(tone(9.5)), RATE, 10)) == int(9.5 * RATE)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({"audio": "https://example.com/a.wav"}, "invalid_audio"),
        ({"audio": "data:audio/wav,notbase64"}, "invalid_audio"),
        ({"audio": "!!!"}, "invalid_audio"),
        ({"audio": ""}, "empty_input"),
        ({"image": "x"}, "invalid_input_type"),
        (12, "invalid_input_type"),
        ({"audio": "UklGRg==", "timestamps": "yes"}, "invalid_input"),
        ({"archive_member_bytes": 10**9}, "audio_too_large"),
    ],
)
def test_bad_items_are_refused_before_decoding(value: Any, code: str) -> None:
    with pytest.raises(ItemError) as caught:
        prepare_audio(value, RATE, 600)
    assert caught.value.code == code


def test_short_and_long_audio_equal_in_process_generate(runner: Any, whisper: Path) -> None:
    short, long = tone(4.0, seed=7), tone(65.0, seed=8)
    options = RunOptions(batch_size=3, params={"language": "fr"})
    values = [runner.prepare({"audio": data_url(encode(s))}, options) for s in (short, long)]
    outputs = runner.run(values, options)
    assert [o["language"] for o in outputs] == ["fr", "fr"]
    assert outputs[0]["duration"] == 4.0 and outputs[1]["duration"] == 65.0
    assert outputs[0]["text"] == reference(whisper, short, "fr", False)
    assert outputs[1]["text"] == reference(whisper, long, "fr", False)
    assert "segments" not in outputs[0]


def test_language_is_detected_on_the_first_window_when_not_given(
    runner: Any, whisper: Path
) -> None:
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    processor = AutoProcessor.from_pretrained(whisper)
    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    samples = tone(3.0, seed=11)
    features = processor.feature_extractor(samples, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        detected = model.detect_language(features.input_features)
    code = processor.tokenizer.convert_ids_to_tokens(int(detected[0]))[2:-2]
    options = RunOptions()
    output = runner.run([runner.prepare({"audio": data_url(encode(samples))}, options)], options)
    assert output[0]["language"] == code
    assert output[0]["text"] == reference(whisper, samples, code, False)


def test_timestamps_give_segments_in_the_audios_time(runner: Any, whisper: Path) -> None:
    samples = tone(40.0, seed=12)
    item = {"audio": data_url(encode(samples)), "language": "en", "timestamps": True}
    output = runner.run([runner.prepare(item, RunOptions())], RunOptions())[0]
    assert output["text"] == reference(whisper, samples, "en", True)
    segments = output["segments"]
    assert segments, "a timestamped transcription has segments"
    for segment in segments:
        assert 0 <= segment["start"] <= segment["end"] <= 40.0
        assert set(segment) == {"start", "end", "text", *WINDOW_FIELDS, "tokens"}
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)


WINDOW_FIELDS = ("seek", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob")


def window_reference(whisper: Path, window: np.ndarray, multilingual: bool) -> dict[str, Any]:
    """What OpenAI's Whisper reports of one window's decoding, computed here one step at a time
    from the model's raw logits: the mean log-probability of every token generate's first pass
    over the window chose (its end of text included), the no-speech token's probability after
    the start of transcript, and the zlib compression ratio of the window's text."""
    import zlib

    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    processor = AutoProcessor.from_pretrained(whisper)
    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    tokenizer = processor.tokenizer
    features = processor.feature_extractor(window, sampling_rate=RATE, return_tensors="pt")
    features = features.input_features
    timestamp_begin = model.generation_config.no_timestamps_token_id + 1
    with torch.no_grad():
        generated = model.generate(
            features,
            **({"language": "en", "task": "transcribe"} if multilingual else {}),
            return_timestamps=True,
            return_segments=True,
            max_new_tokens=model.config.max_target_positions - 4,
        )
        first_pass = generated["segments"][0][0]["result"].tolist()  # prompt, then the tokens
        start = next(i for i, t in enumerate(first_pass) if t >= timestamp_begin)
        prompt, chosen = first_pass[:start], first_pass[start:]
        if tokenizer.eos_token_id in chosen:
            chosen = chosen[: chosen.index(tokenizer.eos_token_id) + 1]
        logprobs = []
        for step, token in enumerate(chosen):
            prefix = torch.tensor([prompt + chosen[:step]])
            logits = model(features, decoder_input_ids=prefix).logits[0, -1]
            logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
        sot = torch.tensor([prompt[:1]])
        after_sot = torch.softmax(model(features, decoder_input_ids=sot).logits[0, -1], dim=-1)
    ids = generated["sequences"][0].tolist()
    text = tokenizer.decode(ids, skip_special_tokens=True).encode()
    return {
        "avg_logprob": sum(logprobs) / len(logprobs),
        "no_speech_prob": float(after_sot[tokenizer.convert_tokens_to_ids("<|nospeech|>")]),
        "compression_ratio": len(text) / len(zlib.compress(text)),
    }


@pytest.mark.parametrize("multilingual", [True, False], ids=["multilingual", "english-only"])
def test_segments_carry_their_windows_scores_as_openais_whisper(
    tmp_path: Path, multilingual: bool
) -> None:
    from workers.runtime.registry import load_runner

    whisper = make_tiny_whisper(tmp_path, multilingual=multilingual)
    runner = load_runner(ModelSpec("t/whisper@1", "transformers", TASK, str(whisper)))
    samples = tone(40.0, seed=12)
    item = {"audio": data_url(encode(samples)), "language": "en", "timestamps": True}
    segments = runner.run([runner.prepare(item, RunOptions())], RunOptions())[0]["segments"]
    assert segments, "the random model times some of what it hears"
    # The English-only model decodes its first window twice (its last segment is cut): the
    # second pass's times go on from the first's, as transformers times them.
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    windows = {0: samples[: 30 * RATE], 3000: samples[30 * RATE :]}
    references = {seek: window_reference(whisper, w, multilingual) for seek, w in windows.items()}
    assert {s["seek"] for s in segments} <= set(windows)
    for segment in segments:
        expected = references[segment["seek"]]
        assert segment["start"] >= segment["seek"] / 100
        assert segment["temperature"] == 0.0
        for field in ("avg_logprob", "no_speech_prob", "compression_ratio"):
            assert segment[field] == pytest.approx(expected[field], abs=1e-4), field
        tokens = segment["tokens"]
        assert runner.tokenizer.decode(tokens, skip_special_tokens=True).strip() == segment["text"]
        assert tokens[0] >= runner.timestamp_begin and tokens[-1] >= runner.timestamp_begin
    # Two windows of a random model: their scores differ, so each segment got its own window's.
    assert references[0]["avg_logprob"] != pytest.approx(references[3000]["avg_logprob"])


def test_hostile_items_are_error_lines_and_good_items_succeed(runner: Any) -> None:
    import json

    good = {"custom_id": "good", "input": {"audio": data_url(encode(tone(2.0, seed=3)))}}
    lines = [(1, (json.dumps(good) + "\n").encode())]
    for number, (name, (data, _)) in enumerate(sorted(hostile_audio().items()), start=2):
        line = {"custom_id": name, "input": {"audio": data_url(data)}}
        lines.append((number, (json.dumps(line) + "\n").encode()))
    long = {"custom_id": "too-long", "input": {"audio": data_url(encode(tone(12.0)))}}
    lines.append((len(lines) + 1, (json.dumps(long) + "\n").encode()))
    result = run_chunk(runner, lines, RunOptions(max_audio_seconds=10, params={"language": "en"}))
    assert [json.loads(o)["custom_id"] for o in result.outputs] == ["good"]
    codes = {json.loads(e)["custom_id"]: json.loads(e)["error"]["code"] for e in result.errors}
    expected = {name: code for name, (_, code) in hostile_audio().items()}
    assert codes == {**expected, "too-long": "audio_too_long"}


def test_a_language_the_model_does_not_know_is_refused(runner: Any) -> None:
    with pytest.raises(ItemError) as caught:
        runner.prepare({"audio": data_url(encode(tone(1.0))), "language": "de"}, RunOptions())
    assert caught.value.code == "invalid_input"


def test_subtitles_number_and_time_each_segment() -> None:
    from app.api.openai.audio import subtitles

    segments = [
        {"start": 0.0, "end": 2.5, "text": " Hello."},
        {"start": 3661.25, "end": 3662.0, "text": "Again."},
    ]
    assert subtitles(segments, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello.\n\n2\n01:01:01,250 --> 01:01:02,000\nAgain.\n"
    )
    assert subtitles(segments, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello.\n\n01:01:01.250 --> 01:01:02.000\nAgain.\n"
    )


def test_the_verbose_json_body_is_openais_shape() -> None:
    from workers.runtime.openai_lines import transcription_body

    output = {
        "text": "Bonjour.",
        "language": "fr",
        "duration": 2.4,
        "segments": [{"start": 0.5, "end": 2.0, "text": "Bonjour."}],
    }
    body = transcription_body(output)
    assert body["language"] == "french" and body["task"] == "transcribe"
    assert body["usage"] == {"type": "duration", "seconds": 3}
    assert body["segments"] == [{"id": 0, "seek": 50, "start": 0.5, "end": 2.0, "text": "Bonjour."}]
    window = {"seek": 0, "tokens": [7, 8], "temperature": 0.0, "avg_logprob": -0.5}
    window |= {"compression_ratio": 1.0, "no_speech_prob": 0.01}
    output["segments"] = [{"start": 0.5, "end": 2.0, "text": "Bonjour.", **window}]
    body = transcription_body(output)  # the window's seek, not the segment's start
    assert body["segments"] == [{"id": 0, "start": 0.5, "end": 2.0, "text": "Bonjour.", **window}]
