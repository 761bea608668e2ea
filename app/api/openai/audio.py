"""/openai/v1/audio/transcriptions: OpenAI's multipart form, answered by a Whisper model
(`automatic-speech-recognition`) as a job of one request line on the workers (sync.py), the
audio carried in the line as base64. Never decoded in the API process."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import SettingsDep, TenantDep
from app.api.errors import openai_error
from app.api.openai import sync
from app.api.openai.errors import OpenAIRoute

router = APIRouter(prefix="/audio", route_class=OpenAIRoute)

ENDPOINT = "/v1/audio/transcriptions"
ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]


@router.post("/transcriptions", response_model=None, summary="Create a transcription")
async def create_transcription(
    tenant: TenantDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile,
        File(description="The audio: WAV, FLAC, OGG (MP3 where decodable), at most 25 MiB."),
    ],
    model: Annotated[
        str,
        Form(max_length=140, description="A speech model (Whisper).", examples=["whisper"]),
    ],
    language: Annotated[
        str | None,
        Form(
            max_length=32,
            description="The audio's language; detected when left out.",
            examples=["en"],
        ),
    ] = None,
    response_format: Annotated[
        ResponseFormat,
        Form(description="json, text, verbose_json, srt or vtt.", examples=["verbose_json"]),
    ] = "json",
    timestamp_granularities: Annotated[
        list[str] | None,
        Form(
            alias="timestamp_granularities[]",
            description="`segment` (word timestamps are not offered).",
            examples=[["segment"]],
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        Form(ge=0, le=1, description="0 only: decoding is greedy.", examples=[0]),
    ] = None,
    prompt: Annotated[
        str | None,
        Form(max_length=4096, description="Not supported: refused when given.", examples=[""]),
    ] = None,
) -> Response:
    """Transcribe one audio file now: `text` (json), the text alone (text), or the text with
    its language, duration and timed segments (verbose_json; srt and vtt from the same
    segments). Decoding is greedy; `temperature` above 0, `prompt` and word timestamps are
    refused rather than ignored."""
    granularities = set(timestamp_granularities or [])
    if granularities - {"segment", "word"}:
        return openai_error(
            400,
            "invalid_request",
            "timestamp_granularities[] takes segment",
            "timestamp_granularities",
        )
    if "word" in granularities:
        return openai_error(
            400,
            "unsupported_value",
            "word timestamps are not offered; use segment",
            "timestamp_granularities",
        )
    if temperature:
        return openai_error(
            400, "unsupported_value", "decoding is greedy: temperature 0 only", "temperature"
        )
    if prompt:
        return openai_error(400, "unsupported_value", "`prompt` is not supported", "prompt")
    data = await file.read(settings.max_audio_bytes + 1)
    if len(data) > settings.max_audio_bytes:
        message = f"the audio file is over {settings.max_audio_bytes} bytes (MAX_AUDIO_BYTES)"
        return openai_error(413, "audio_too_large", message, "file")
    if not data:
        return openai_error(400, "empty_input", "the audio file is empty", "file")
    timed = response_format in ("verbose_json", "srt", "vtt")
    body: dict[str, Any] = {
        "model": model,
        "file": base64.b64encode(data).decode("ascii"),
        "timestamps": timed,
    }
    del data
    if language:
        body["language"] = language
    submission = await run_in_threadpool(sync.prepare, tenant, model, ENDPOINT, body)
    del body
    job = await sync.run(tenant, submission)
    if not job.is_terminal:
        return sync.timed_out(job.id)
    status, answer = await sync.answer(tenant, job)
    if status != 200:
        return JSONResponse(answer, status_code=status)
    return formatted(answer, response_format)


def formatted(answer: dict[str, Any], response_format: str) -> Response:
    """The worker's verbose_json answer in the response format asked for."""
    if response_format == "verbose_json":
        return JSONResponse(answer)
    if response_format == "text":
        return PlainTextResponse(answer["text"] + "\n")
    if response_format in ("srt", "vtt"):
        return PlainTextResponse(subtitles(answer.get("segments") or [], response_format))
    return JSONResponse({"text": answer["text"], "usage": answer["usage"]})


def subtitles(segments: list[dict[str, Any]], kind: str) -> str:
    """SubRip (`00:00:01,000 --> ...`, numbered cues) or WebVTT (a header, `.` millis)."""
    mark = "," if kind == "srt" else "."

    def clock(seconds: float) -> str:
        millis = round(seconds * 1000)
        hours, rest = divmod(millis, 3_600_000)
        minutes, rest = divmod(rest, 60_000)
        return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{mark}{rest % 1000:03d}"

    cues = [f"{clock(s['start'])} --> {clock(s['end'])}\n{s['text'].strip()}\n" for s in segments]
    if kind == "srt":
        return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, start=1))
    return "WEBVTT\n\n" + "\n".join(cues)
