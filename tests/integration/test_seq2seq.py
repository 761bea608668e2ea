"""Sequence to sequence as jobs on a real farm: an uploaded tiny T5, a native job and
`/v1/predictions` batch lines, equal to in-process `generate`; bad lines are error lines."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.factories import make_tiny_seq2seq
from tests.helpers import (
    read_lines,
    register_model,
    run_job,
    run_openai_batch,
    tar_of,
    upload,
    wait_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

TEXTS = ["the quick brown fox", "Once upon a time there lived a king", "What is the capital?"]


def test_text2text_jobs_and_batch_lines_equal_generate(
    client: httpx.Client, api_url: str, tmp_path: Path
) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = make_tiny_seq2seq(tmp_path / "t5", "t5", seed=2)
    archive = upload(client, tar_of(path), purpose="model", name="t5.tar.gz")
    body = {"name": "t5", "framework": "transformers", "task": "text2text-generation"}
    version = register_model(client, {**body, "file_id": archive["id"]})
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    expected = []
    for text in TEXTS:
        out = model.generate(**tokenizer(text, return_tensors="pt"), max_new_tokens=6)
        tokens = [t for t in out[0, 1:].tolist() if t != tokenizer.eos_token_id]
        expected.append(tokenizer.decode(tokens, skip_special_tokens=True))
    version = wait_model(client, version)
    assert version["status"] == "ready", version

    rows = [{"custom_id": i, "input": t} for i, t in enumerate(TEXTS)]
    rows += [
        {"custom_id": "long", "input": "the quick brown fox " * 300},  # past 512 tokens
        {"custom_id": "bad", "input": {"text": "a", "top_p": 0}},
    ]
    job = run_job(client, "t5", rows, params={"temperature": 0, "max_tokens": 6})
    assert job["status"] == "succeeded" and job["counts"]["failed"] == 2, job
    got = {line["custom_id"]: line["output"] for line in read_lines(client, job["output_file_id"])}
    for i, want in enumerate(expected):
        assert got[i]["text"] == want
        assert got[i]["usage"]["prompt_tokens"] == len(tokenizer(TEXTS[i])["input_ids"])
    errors = {e["custom_id"]: e["error"]["code"] for e in read_lines(client, job["error_file_id"])}
    assert errors == {"long": "context_length_exceeded", "bad": "invalid_parameter"}

    oai = httpx.Client(base_url=f"{api_url}/openai/v1", headers=client.headers, timeout=60)
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/predictions",
            "body": {"model": "t5", "input": {"text": t, "temperature": 0, "max_tokens": 6}},
        }
        for i, t in enumerate(TEXTS)
    ]
    batch = run_openai_batch(client, lines, "/v1/predictions")
    assert batch["status"] == "completed", batch
    answers = {
        line["custom_id"]: line["response"]["body"]
        for line in read_lines(client, batch["output_file_id"])
    }
    assert [answers[f"r{i}"]["output"]["text"] for i in range(len(TEXTS))] == expected
    refused = oai.post("/embeddings", json={"model": "t5", "input": "a"})
    assert refused.status_code == 400, refused.text
    oai.close()
