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
        assert set(segment) == {"start", "end", "text"}
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)


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
