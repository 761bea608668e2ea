"""Batch lines in OpenAI's Batch API format: requests in, `batch_req_...` lines out.

A request line is `{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {...}}`.
Its output line is `{"id", "custom_id", "response": {"status_code": 200, "request_id",
"body"}, "error": null}`; a line that fails gets the same shape in the error file, its
`response` holding the status code and OpenAI's error body, `error` the code and message, and
`line` its line number (what a native retry reads). A request whose `input` is a list is one
line with several embeddings, but its texts run in the same micro-batches as every other
line's, so the speed is the native format's.

Like workers/runtime/items.py, this knows nothing of Celery or the database.
"""

from __future__ import annotations

import base64
import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.runtime import openai_generation as generation
from workers.runtime.base import ItemError, Runner, RunOptions, Stopped
from workers.runtime.items import (
    ChunkResult,
    Line,
    check_custom_id,
    dump_line,
    json_error_words,
    parse_line,
    run_isolated,
    too_large,
)
from workers.runtime.openai_errors import RequestError, error_body
from workers.runtime.tokens import json_type

__all__ = ["ENDPOINTS", "OpenAIRequests", "RequestError", "error_body", "expired_line"]

EMBEDDINGS = "/v1/embeddings"
PREDICTIONS = "/v1/predictions"  #: the farm's own endpoint: one model input, its output
RERANK = "/v1/rerank"  #: TEI's, Cohere's and Jina's shape: a query, documents, top_n
#: speech to text: `body.file` is the audio as base64 (the API reads OpenAI's multipart form
#: into it), `language` and `timestamps` optional
TRANSCRIPTIONS = "/v1/audio/transcriptions"
ENDPOINTS = (EMBEDDINGS, PREDICTIONS, RERANK, TRANSCRIPTIONS, *generation.ENDPOINTS)
_RERANK_FIELDS = ("query", "documents", "top_n")
#: texts per request; OpenAI's own limit for one embeddings request
MAX_INPUTS = 2048


@dataclass
class _Request:
    number: int
    custom_id: Any
    values: list[Any]  # prepared model inputs, one per embedding (one for a prediction)
    encoding: str  # "float" | "base64"
    dimensions: int | None


def request_id() -> str:
    return "req_" + uuid.uuid4().hex


def _ids() -> tuple[str, str]:
    return "batch_req_" + uuid.uuid4().hex, request_id()


def error_line(number: int, exc: RequestError) -> bytes:
    line_id, req_id = _ids()
    return dump_line(
        {
            "id": line_id,
            "custom_id": exc.custom_id,
            "response": {
                "status_code": exc.status,
                "request_id": req_id,
                "body": error_body(exc.status, exc.code, exc.message, exc.param),
            },
            "error": {"code": exc.code, "message": exc.message},
            "line": number,
        }
    )


#: OpenAI's words for a request its batch's completion window left unrun
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def expired_line(number: int, raw: bytes | None) -> bytes:
    """The error line of a request left unrun when its batch expired: `batch_expired`, with no
    response, as OpenAI writes it; the custom_id is kept when the line has a usable one."""
    custom_id = None
    try:
        item = parse_line(raw) if raw is not None else None
        if isinstance(item, dict):
            check_custom_id(item.get("custom_id"))
            custom_id = item.get("custom_id")
    except (ValueError, ItemError):
        pass
    line_id, _ = _ids()
    error = {"code": "batch_expired", "message": EXPIRED_MESSAGE}
    return dump_line(
        {"id": line_id, "custom_id": custom_id, "response": None, "error": error, "line": number}
    )


@dataclass(frozen=True)
class OpenAIRequests:
    """How one batch reads its lines: the endpoint every line must name, and the model."""

    endpoint: str
    model: str  #: the job's model, "name@version"

    def _model_ok(self, name: Any) -> bool:
        return isinstance(name, str) and name in (self.model, self.model.partition("@")[0])

    def _read(
        self, runner: Runner, number: int, raw: bytes | None, options: RunOptions
    ) -> _Request:
        if raw is None:
            limit = options.max_line_bytes
            raise RequestError(400, "line_too_long", f"line {number} is longer than {limit} bytes")
        try:
            item = parse_line(raw)
        except ValueError as exc:
            raise RequestError(400, "invalid_json", json_error_words(number, exc)) from None
        if not isinstance(item, dict):
            raise RequestError(400, "invalid_request", f"line {number} is not a JSON object")
        custom_id = item.get("custom_id")
        try:
            check_custom_id(custom_id)
        except ItemError as exc:
            raise RequestError(400, exc.code, exc.message, "custom_id") from None
        try:
            return self._request(runner, number, custom_id, item, options)
        except RequestError as exc:
            exc.custom_id = custom_id
            raise

    def _request(
        self, runner: Runner, number: int, custom_id: Any, item: dict[str, Any], options: RunOptions
    ) -> _Request:
        if item.get("method") != "POST":
            raise RequestError(400, "invalid_method", "`method` must be POST", "method")
        if item.get("url") != self.endpoint:
            message = f"`url` must be this batch's endpoint, {self.endpoint}"
            raise RequestError(400, "invalid_url", message, "url")
        body = item.get("body")
        if not isinstance(body, dict):
            raise RequestError(400, "invalid_request", "`body` must be a JSON object", "body")
        if not self._model_ok(body.get("model")):
            message = f"`body.model` must be this batch's model, {self.model}"
            raise RequestError(400, "model_mismatch", message, "model")
        if self.endpoint == RERANK:  # a rerank body is the runner's rank item, model aside
            item = {k: body[k] for k in _RERANK_FIELDS if body.get(k) is not None}
            return _Request(number, custom_id, [_prepare(runner, item, options)], "", None)
        if self.endpoint == TRANSCRIPTIONS:
            audio = {k: body[k] for k in ("language", "timestamps") if body.get(k) is not None}
            audio["audio"] = body.get("file")
            return _Request(number, custom_id, [_prepare(runner, audio, options)], "", None)
        if self.endpoint in generation.ENDPOINTS:
            inputs = generation.runner_inputs(self.endpoint, body)
            values = [_prepare(runner, value, options, self.endpoint) for value in inputs]
            return _Request(number, custom_id, values, "", None)
        if "input" not in body:
            raise RequestError(400, "missing_input", "`body.input` is required", "input")
        if self.endpoint == PREDICTIONS:
            return _Request(number, custom_id, [_prepare(runner, body["input"], options)], "", None)
        texts = body["input"]
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or len(texts) > MAX_INPUTS:
            message = f"`input` must be a string or a list of 1 to {MAX_INPUTS} strings"
            raise RequestError(400, "invalid_input", message, "input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            message = "`encoding_format` must be float or base64"
            raise RequestError(400, "invalid_encoding_format", message, "encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
            raise RequestError(400, "invalid_dimensions", "`dimensions` must be a positive integer")
        for text in texts:  # an embedding model also takes rank items; this endpoint does not
            if not isinstance(text, str):
                message = f"input must be a string, not {json_type(text)}"
                raise RequestError(400, "invalid_input_type", message, "input")
        values = [_prepare(runner, text, options) for text in texts]
        return _Request(number, custom_id, values, encoding, dimensions)

    def run_chunk(self, runner: Runner, lines: list[Line], options: RunOptions) -> ChunkResult:
        """Every request's inputs run together (one call, micro-batched), input order kept."""
        good: list[_Request] = []
        errors: list[tuple[int, bytes]] = []
        for number, raw in lines:
            try:
                good.append(self._read(runner, number, raw, options))
            except RequestError as exc:
                errors.append((number, error_line(number, exc)))
        values = [value for request in good for value in request.values]
        counted = run_isolated(runner, values, options)
        results, tokens = counted.outputs, counted.tokens
        outputs: list[bytes] = []
        start = 0
        for request in good:
            end = start + len(request.values)
            try:
                body = self._body(request, results[start:end], tokens[start:end])
                line_id, req_id = _ids()
                response = {"status_code": 200, "request_id": req_id, "body": body}
                written = dump_line(
                    {
                        "id": line_id,
                        "custom_id": request.custom_id,
                        "response": response,
                        "error": None,
                    }
                )
                if len(written) > options.max_output_bytes:
                    raise RequestError(500, *too_large(len(written), options))
                outputs.append(written)
            except RequestError as exc:
                exc.custom_id = request.custom_id
                errors.append((request.number, error_line(request.number, exc)))
            except (ValueError, TypeError):
                message = "the model produced a value that is not valid JSON (NaN or infinity)"
                failed = RequestError(500, "invalid_output", message, custom_id=request.custom_id)
                errors.append((request.number, error_line(request.number, failed)))
            start = end
        errors.sort(key=lambda pair: pair[0])
        return ChunkResult(
            outputs=outputs,
            errors=[line for _, line in errors],
            tokens=sum(tokens),
            completion_tokens=sum(counted.completion),
        )

    def _body(self, request: _Request, outputs: list[Any], tokens: list[int]) -> dict[str, Any]:
        for output in outputs:
            if isinstance(output, ItemError):
                raise RequestError(500, output.code, output.message)
        if self.endpoint == PREDICTIONS:
            return {"object": "prediction", "model": self.model, "output": outputs[0]}
        if self.endpoint == RERANK:
            used = sum(tokens)
            usage = {"prompt_tokens": used, "total_tokens": used}
            return {"model": self.model, "results": outputs[0]["results"], "usage": usage}
        if self.endpoint in generation.ENDPOINTS:
            return generation.response_body(self.endpoint, self.model, outputs)
        if self.endpoint == TRANSCRIPTIONS:
            return transcription_body(outputs[0])
        data = []
        for index, vector in enumerate(outputs):
            if request.dimensions is not None and request.dimensions != len(vector):
                message = (
                    f"this model's embeddings have {len(vector)} dimensions; "
                    f"`dimensions` {request.dimensions} is not supported"
                )
                raise RequestError(400, "invalid_dimensions", message, "dimensions")
            embedding: Any = vector
            if request.encoding == "base64":
                embedding = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        used = sum(tokens)
        return {
            "object": "list",
            "data": data,
            "model": self.model,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }


def transcription_body(output: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's verbose_json transcription from a speech output (the API answers the other
    response formats from it): the language by its name, segments numbered (`seek`, their
    window's start in Whisper's 10 ms frames, comes from the worker; their start where an
    older worker left it out); usage in seconds, as OpenAI bills audio."""
    from workers.runtime.speech import language_name

    body: dict[str, Any] = {
        "task": "transcribe",
        "language": language_name(output["language"]),
        "duration": output["duration"],
        "text": output["text"],
        "usage": {"type": "duration", "seconds": math.ceil(output["duration"])},
    }
    if "segments" in output:
        body["segments"] = [
            {"id": i, "seek": int(s["start"] * 100), **s} for i, s in enumerate(output["segments"])
        ]
    return body


def _prepare(runner: Runner, value: Any, options: RunOptions, endpoint: str = "") -> Any:
    try:
        return runner.prepare(value, options)
    except ItemError as exc:
        param = generation.param_of(endpoint, exc.code) if endpoint else "input"
        raise RequestError(400, exc.code, exc.message, param) from None
    except Stopped:
        raise
    except Exception as exc:  # a runner's check that broke: this request's fault
        message = f"the input could not be read: {type(exc).__name__}"
        raise RequestError(400, "invalid_input", message, "input") from None
