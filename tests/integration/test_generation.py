"""Text generation through the farm: the builtin smollm2, an uploaded tiny causal LM, hostile
uploads and templates, cancels and a crash mid-shard (native jobs; the OpenAI surface has its
own tests)."""

from __future__ import annotations

import json
import signal
import struct
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.factories import make_tiny_causal_lm
from tests.helpers import (
    FarmProcess,
    all_pages,
    read_lines,
    register_model,
    register_ready,
    run_job,
    submit,
    tar_of,
    upload,
    wait_done,
    wait_model,
)
from workers.runtime import builtin_path
from workers.runtime.base import RunOptions
from workers.runtime.generation import load_generation_runner

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

LOOPING_TEMPLATE = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
)
HUGE_TEMPLATE = "{{ 'x' * 10**10 }}"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), context=1024)


def _register_tiny(client: httpx.Client, model_dir: Path, name: str) -> dict[str, Any]:
    archive = upload(client, tar_of(model_dir), purpose="model", name=f"{name}.tar.gz")
    body = {"name": name, "framework": "transformers", "task": "text-generation"}
    return register_ready(client, {**body, "file_id": archive["id"]})


def test_smollm2_answers_a_chat_and_a_prompt(client: httpx.Client) -> None:
    rows = [
        {"custom_id": "chat", "input": {"messages": [
            {"role": "user", "content": "What is the capital of France?"}]}},
        {"custom_id": "prompt", "input": {"prompt": "The capital of Italy is", "max_tokens": 4}},
    ]  # fmt: skip
    # The first job converts the GGUF once (into the artifact store), then loads that.
    file = upload(client, "".join(_line(r) for r in rows).encode())
    body = {"model": "smollm2", "input": {"file_id": file["id"]},
            "params": {"temperature": 0, "max_tokens": 24}}  # fmt: skip
    job = wait_done(client, submit(client, body)["id"], timeout=600)
    assert job["status"] == "succeeded", job
    chat, prompt = read_lines(client, job["output_file_id"])
    assert chat["custom_id"] == "chat" and "Paris" in chat["output"]["text"]
    assert chat["output"]["finish_reason"] == "stop"  # it ended with <|im_end|>
    assert prompt["output"]["finish_reason"] == "length"
    assert prompt["output"]["usage"]["completion_tokens"] == 4
    read, wrote = _usage_of([chat, prompt])
    assert (job["usage"]["tokens"], job["usage"]["completion_tokens"]) == (read, wrote)
    # /metrics counts them per model (their rates: tokens read and generated per second).
    metrics = client.get("/metrics").text
    for family, least in (
        ("modelfarm_tokens_total", read),
        ("modelfarm_generated_tokens_total", wrote),
    ):
        (line,) = [m for m in metrics.splitlines() if m.startswith(f'{family}{{model="smollm2')]
        assert float(line.rsplit(" ", 1)[1]) >= least


def test_uploaded_causal_lm_lines_outputs_and_error_lines(
    client: httpx.Client, tiny_lm: Path
) -> None:
    version = _register_tiny(client, tiny_lm, "tiny-chat")
    assert version["info"]["context_length"] == 1024
    # Both model lists show a generation model's task and context length.
    listed = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
    shown = {n: (listed[n]["task"], listed[n]["context_length"]) for n in ("tiny-chat", "smollm2")}
    assert shown == {"tiny-chat": ("text-generation", 1024), "smollm2": ("text-generation", 8192)}
    openai_listed = {m["id"]: m for m in client.get("/openai/v1/models").json()["data"]}
    assert (openai_listed["tiny-chat"]["task"], openai_listed["tiny-chat"]["context_length"]) == (
        "text-generation",
        1024,
    )
    good = [
        "the quick brown fox",
        {"prompt": "Once upon a time", "max_tokens": 5},
        {"messages": [{"role": "user", "content": "hello world"}], "stop": ["\n"]},
        {"prompt": "What is the capital of France?", "max_tokens": 12, "temperature": 0.7,
         "seed": 3},
    ]  # fmt: skip
    bad = [
        ("the quick brown fox " * 300, "context_length_exceeded"),
        ({"prompt": "hi", "top_p": 7}, "invalid_parameter"),
        ({"messages": [{"role": "user"}]}, "invalid_messages"),
    ]
    rows = [{"custom_id": f"g{i}", "input": v} for i, v in enumerate(good)]
    rows += [{"custom_id": f"b{i}", "input": v} for i, (v, _) in enumerate(bad)]
    params = {"temperature": 0, "max_tokens": 16}
    job = run_job(client, "tiny-chat", rows, params=params)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"total": 7, "succeeded": 4, "failed": 3}
    outputs = read_lines(client, job["output_file_id"])
    errors = read_lines(client, job["error_file_id"])
    assert [e["error"]["code"] for e in errors] == [code for _, code in bad]
    # The same engine in-process, on the same lines in one call, gives the same text.
    runner = load_generation_runner(str(tiny_lm), "cpu")
    options = RunOptions(params=params)
    expected = runner.run([runner.prepare(v, options) for v in good], options)
    assert [line["output"] for line in outputs] == expected
    assert expected[1]["finish_reason"] == "length"
    assert expected[1]["usage"]["completion_tokens"] == 5
    # Usage tells what the model read (the prompts) from what it wrote, each the sum of the
    # output lines' own figures (the error lines read nothing), in the job and in GET /v1/usage.
    read, wrote = _usage_of(outputs)
    assert (job["usage"]["tokens"], job["usage"]["completion_tokens"]) == (read, wrote)
    rows = client.get("/v1/usage", params={"group_by": "model"}).json()["data"]
    (row,) = [r for r in rows if r["model"] == job["model"]]
    assert (row["tokens"], row["completion_tokens"]) == (read, wrote)


def _gguf(tensors: int, keys: int, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, keys) + body


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def test_hostile_generation_uploads_are_refused(client: httpx.Client, tmp_path: Path) -> None:
    arch = _gguf_string(b"general.architecture") + struct.pack("<I", 8) + _gguf_string(b"llama")
    huge_tensor = (
        _gguf_string(b"w") + struct.pack("<I", 2) + struct.pack("<QQ", 4096, 4096)
        + struct.pack("<IQ", 0, 0)
    )  # fmt: skip
    cases = {
        "absurd-counts": _gguf(2**62, 2**62),
        "past-the-end": _gguf(1, 1, arch + huge_tensor),
        "bad-metadata": _gguf(0, 1, _gguf_string(b"k") + struct.pack("<I", 8) + b"\xff" * 8),
        "not-utf8": _gguf(0, 1, _gguf_string(b"k") + struct.pack("<I", 8) + _gguf_string(b"\xff")),
        # Over MODEL_MAX_UNPACKED_BYTES (32 MiB in tests) once dequantized: the real smollm2.
        "too-large": Path(builtin_path("smollm2")).read_bytes(),
    }
    versions = []
    for name, content in cases.items():
        file = upload(client, content, purpose="model", name=f"{name}.gguf")
        versions.append(register_model(client, {"name": name, "framework": "gguf",
                                                "file_id": file["id"]}))  # fmt: skip
    custom = make_tiny_causal_lm(tmp_path / "custom", context=64)
    config = (custom / "config.json").read_text()
    (custom / "config.json").write_text(
        config.replace("{", '{"auto_map": {"AutoModelForCausalLM": "evil.Model"},', 1)
    )
    archive = upload(client, tar_of(custom), purpose="model", name="custom.tar.gz")
    body = {"name": "custom-code", "framework": "transformers", "task": "text-generation"}
    versions.append(register_model(client, {**body, "file_id": archive["id"]}))
    ended = [wait_model(client, v) for v in versions]
    for version in ended:
        assert version["status"] == "failed", version
        assert version["error"]["code"] == "invalid_model", version
    messages = [v["error"]["message"] for v in ended]
    assert "tensors" in messages[0] and "past the end" in messages[1]
    assert "dequantized" in messages[4]
    assert "auto_map" in messages[-1]


def test_hostile_chat_templates_cost_an_error_line(client: httpx.Client, tmp_path: Path) -> None:
    templates = {"loops": LOOPING_TEMPLATE, "huge": HUGE_TEMPLATE}
    for name, template in templates.items():
        model_dir = make_tiny_causal_lm(tmp_path / name, context=64, template=template)
        _register_tiny(client, model_dir, f"tmpl-{name}")
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        rows = [{"custom_id": "chat", "input": chat}, {"custom_id": "plain", "input": "hi"}]
        job = run_job(client, f"tmpl-{name}", rows, params={"max_tokens": 2})
        assert job["status"] == "succeeded", job
        (error,) = read_lines(client, job["error_file_id"])
        assert error["custom_id"] == "chat" and error["error"]["code"] == "template_error"
        (output,) = read_lines(client, job["output_file_id"])  # the worker went on
        assert output["custom_id"] == "plain"


def _children(worker: FarmProcess) -> list[psutil.Process]:
    return psutil.Process(worker.proc.pid).children(recursive=True)


def _wait_started(client: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = [e["type"] for e in all_pages(client, f"/v1/jobs/{job_id}/events")]
        if "shard_started" in events:
            return
        time.sleep(0.1)
    raise TimeoutError("the shard never started")


@pytest.fixture(scope="module")
def long_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger tiny model (4 layers of 256) whose greedy text from LONG_ROWS' prompt never
    meets its EOS: 64 lines of 1000 tokens are 2000 decode steps of 32 rows, about 20 s on
    two cores, so a cancel or deadline a few seconds in lands mid-generation however the
    machine's speed goes (its random sampling ended lines early at random: 3.7 s here)."""
    return make_tiny_causal_lm(
        tmp_path_factory.mktemp("long-lm"), context=1024, hidden=256, layers=4
    )


# 64 lines (one chunk): a stop seen only at the chunk's end would write them all.
LONG_ROWS = [{"custom_id": i, "input": {"prompt": "the quick brown fox"}} for i in range(64)]
LONG_PARAMS = {"max_tokens": 1000, "temperature": 0}


def test_cancel_stops_a_long_generation(client: httpx.Client, long_lm: Path) -> None:
    _register_tiny(client, long_lm, "tiny-long")
    file = upload(client, "".join(_line(r) for r in LONG_ROWS).encode())
    params = LONG_PARAMS
    job = submit(client, {"model": "tiny-long", "input": {"file_id": file["id"]}, "params": params})
    _wait_started(client, job["id"])
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    done = wait_done(client, job["id"], timeout=60)
    assert done["status"] == "cancelled"
    assert done["counts"]["succeeded"] == 0  # the chunk was dropped mid-generation


def test_a_deadline_stops_a_long_generation(client: httpx.Client, long_lm: Path) -> None:
    """The deadline is checked between decode steps too: the job ends soon after it, not when
    its thousands of steps would have."""
    _register_tiny(client, long_lm, "tiny-deadline")
    warm = run_job(client, "tiny-deadline", [{"input": {"prompt": "hi", "max_tokens": 1}}])
    assert warm["status"] == "succeeded", warm  # loaded: the deadline times the generation
    job = run_job(client, "tiny-deadline", LONG_ROWS, params=LONG_PARAMS, deadline_seconds=5)
    assert job["status"] == "cancelled" and job["error"]["code"] == "deadline_exceeded", job
    assert job["counts"]["succeeded"] == 0  # the chunk was dropped mid-generation
    ended, deadline = (datetime.fromisoformat(job[k]) for k in ("finished_at", "deadline_at"))
    assert (ended - deadline).total_seconds() < 30


@pytest.mark.timeout(600)
def test_a_crash_mid_shard_redoes_it_with_the_same_seeded_text(
    client: httpx.Client, tiny_lm: Path, cpu_worker: FarmProcess
) -> None:
    _register_tiny(client, tiny_lm, "tiny-seeded")
    # Over SHARD_ITEMS (200 in tests) lines, so shards run as tasks of their own, whose message
    # comes back when their pool child is killed; the first lines generate long enough for the
    # kill to land mid-generation.
    # The first shard's lines all generate long (each its own seed: they do not all meet EOS
    # at one step), so the kill lands mid-shard however fast this machine is.
    good = [
        {"prompt": p, "seed": 40 + i, "max_tokens": 300 if i < 200 else 3}
        for i, p in enumerate(["a", "the", "hello", "Once"] * 53)
    ]
    params = {"temperature": 1.0, "top_p": 0.95}
    rows = [{"custom_id": i, "input": v} for i, v in enumerate(good)]
    file = upload(client, "".join(_line(r) for r in rows).encode())
    job = submit(client, {"model": "tiny-seeded", "input": {"file_id": file["id"]},
                          "params": params})  # fmt: skip
    _wait_started(client, job["id"])
    for child in _children(cpu_worker):
        child.send_signal(signal.SIGKILL)
    done = wait_done(client, job["id"], timeout=500)
    assert done["status"] == "succeeded", done
    events = [e["type"] for e in all_pages(client, f"/v1/jobs/{job['id']}/events")]
    assert events.count("shard_started") > events.count("shard_succeeded")  # one was redone
    runner = load_generation_runner(str(tiny_lm), "cpu")
    options = RunOptions(params=params)
    expected = runner.run([runner.prepare(v, options) for v in good[:8]], options)
    lines = read_lines(client, done["output_file_id"])
    outputs = [line["output"] for line in lines]
    assert len(outputs) == len(good) and outputs[:8] == expected
    # The redone shard's tokens count once: the job's are its lines' own.
    read, wrote = _usage_of(lines)
    assert (done["usage"]["tokens"], done["usage"]["completion_tokens"]) == (read, wrote)


def _usage_of(lines: list[dict[str, Any]]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) summed over output lines."""
    used = [line["output"]["usage"] for line in lines]
    return sum(u["prompt_tokens"] for u in used), sum(u["completion_tokens"] for u in used)


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row) + "\n"
