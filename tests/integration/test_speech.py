"""Speech to text end to end: an uploaded tiny Whisper transcribes JSONL items, an archive of
audio files and OpenAI's transcription requests (the official client) as in-process
transformers does; hostile audio is an error line while the good items succeed."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.helpers import jsonl, read_lines, register_ready, submit, tar_of, upload, wait_done
from tests.images import zip_of
from tests.speech import data_url, encode, hostile_audio, make_tiny_whisper, reference, tone

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

TASK = "automatic-speech-recognition"


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture
def model(client: httpx.Client, whisper: Path) -> str:
    file = upload(client, tar_of(whisper), purpose="model", name="whisper.tar.gz")
    body = {"name": "whisper", "framework": "transformers", "task": TASK, "file_id": file["id"]}
    return str(register_ready(client, body)["model"])


def test_items_equal_in_process_and_hostile_audio_is_error_lines(
    client: httpx.Client, whisper: Path, model: str
) -> None:
    short, long = tone(3.0, seed=21), tone(35.0, seed=22)
    rows = [
        {"custom_id": "short", "input": {"audio": data_url(encode(short))}},
        {"custom_id": "long", "input": {"audio": data_url(encode(long, format="FLAC"))}},
    ]
    for name, (data, _) in sorted(hostile_audio().items()):
        rows.append({"custom_id": name, "input": {"audio": data_url(data)}})
    # 601 s of silence compresses to a few kilobytes: refused from its header (600 s limit).
    silence = encode(np.zeros(601 * 16_000, dtype=np.float32), format="FLAC")
    rows.append({"custom_id": "too-long", "input": {"audio": data_url(silence)}})
    rows.append({"custom_id": "url", "input": {"audio": "https://example.com/a.wav"}})
    file = upload(client, jsonl(rows))
    job = submit(
        client, {"model": model, "input": {"file_id": file["id"]}, "params": {"language": "fr"}}
    )
    done = wait_done(client, job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    outputs = {
        line["custom_id"]: line["output"] for line in read_lines(client, done["output_file_id"])
    }
    assert list(outputs) == ["short", "long"]
    assert outputs["short"]["text"] == reference(whisper, short, "fr")
    assert outputs["long"]["text"] == reference(whisper, long, "fr")
    assert outputs["long"]["language"] == "fr" and outputs["long"]["duration"] == 35.0
    errors = {
        line["custom_id"]: line["error"]["code"]
        for line in read_lines(client, done["error_file_id"])
    }
    expected = {name: code for name, (_, code) in hostile_audio().items()}
    assert errors == {**expected, "too-long": "audio_too_long", "url": "invalid_audio"}


def test_an_archive_of_audio_files_is_one_item_per_file_in_archive_order(
    client: httpx.Client, whisper: Path, model: str
) -> None:
    first, second = tone(2.0, seed=31), tone(4.0, seed=32)
    archive = zip_of(
        [
            ("calls/b.wav", encode(first)),
            ("calls/a.flac", encode(second, format="FLAC")),
            ("calls/notes.txt", b"not audio at all\n"),
        ]
    )
    file = upload(client, archive, name="calls.zip")
    params = {"language": "en", "timestamps": True}
    job = submit(client, {"model": model, "input": {"file_id": file["id"]}, "params": params})
    done = wait_done(client, job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    outputs = read_lines(client, done["output_file_id"])
    assert [line["custom_id"] for line in outputs] == ["calls/b.wav", "calls/a.flac"]
    assert outputs[0]["output"]["text"] == reference(whisper, first, "en", timestamps=True)
    assert outputs[1]["output"]["text"] == reference(whisper, second, "en", timestamps=True)
    assert all("segments" in line["output"] for line in outputs)
    errors = read_lines(client, done["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("calls/notes.txt", "invalid_audio")
    ]


def test_the_openai_client_transcribes(
    api_url: str, tenant_key: str, whisper: Path, model: str
) -> None:
    oai = OpenAI(base_url=f"{api_url}/openai/v1", api_key=tenant_key, max_retries=0, timeout=120)
    samples = tone(5.0, seed=41)
    wav = encode(samples)
    plain = oai.audio.transcriptions.create(model=model, file=("a.wav", wav), language="en")
    assert plain.text == reference(whisper, samples, "en")
    text = oai.audio.transcriptions.create(
        model=model, file=("a.wav", wav), language="en", response_format="text"
    )
    assert text.strip() == plain.text
    verbose = oai.audio.transcriptions.create(
        model=model,
        file=("a.flac", encode(samples, format="FLAC")),
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert verbose.language == "english" and verbose.duration == 5.0
    assert verbose.text == reference(whisper, samples, "en", timestamps=True)
    assert verbose.segments is not None
    for segment in verbose.segments:
        assert 0 <= segment.start <= segment.end <= 5.0
        # every field of the client's TranscriptionSegment is there, as OpenAI sends it
        assert set(segment.model_dump(exclude_unset=True)) == set(type(segment).model_fields)
        assert segment.avg_logprob <= 0 and 0 <= segment.no_speech_prob <= 1
        assert segment.temperature == 0 and segment.seek == 0 and segment.tokens
    with pytest.raises(openai.BadRequestError) as refused:
        oai.audio.transcriptions.create(model=model, file=("a.txt", b"plain text, not audio"))
    assert refused.value.status_code == 400
    assert "invalid_audio" in str(refused.value.body)
    with pytest.raises(openai.BadRequestError):  # an embedding model does not transcribe
        oai.audio.transcriptions.create(model="minilm", file=("a.wav", wav))
