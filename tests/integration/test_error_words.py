"""Refusals of a request body that say what to change: where the JSON broke, and the missing
Content-Type header that curl -d leaves out (it sends a form's)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration

BODY = b'{"model": "minilm", "input": {"items": [{"input": "hello"}]}}'


def test_a_json_body_sent_without_its_content_type_says_which_header(
    client: httpx.Client,
) -> None:
    form = client.post(
        "/v1/jobs", content=BODY, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 422
    error = form.json()["error"]
    assert error["code"] == "invalid_request"
    assert "application/x-www-form-urlencoded" in error["message"]
    assert "-H 'Content-Type: application/json'" in error["message"]
    # The same bytes with the header are a job.
    sent = client.post("/v1/jobs", content=BODY, headers={"Content-Type": "application/json"})
    assert sent.status_code == 202, sent.text


def test_a_body_that_does_not_parse_names_line_and_column(client: httpx.Client) -> None:
    broken = b'{\n  "model": "minilm",\n  "input": {"items": [}\n}'
    answer = client.post("/v1/jobs", content=broken, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    message = answer.json()["error"]["message"]
    assert message.startswith("the body is not valid JSON: ") and "line 3, column 23" in message


def test_the_openai_surface_names_line_and_column_too(client: httpx.Client) -> None:
    answer = client.post(
        "/openai/v1/batches",
        content=b'{"input_file_id": "file_x",, }',
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "invalid_json" and "line 1, column 28" in error["message"], error
