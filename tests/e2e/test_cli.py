"""The CLI as a user runs it, against the real API and worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("cpu_worker")]


def modelfarm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_submit_wait_status_results(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    env = {**services, "MODELFARM_API_URL": api_url, "MODELFARM_API_KEY": tenant_key}
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"custom_id": f"c{i}", "input": f"sentence {i}"}) + "\n" for i in range(50)
        )
        + "oops\n"
    )
    submitted = modelfarm(["submit", str(source), "--model", "minilm", "--wait"], env)
    # The farm did its work, but a script must notice the failed line: exit 4, and a hint.
    assert submitted.returncode == 4, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "succeeded"
    assert job["counts"] == {"total": 51, "succeeded": 50, "failed": 1}
    assert "51/51" in submitted.stderr  # the progress bar reached the end
    assert "1 of 51 items failed" in submitted.stderr
    assert f"modelfarm results {job['id']} --errors" in submitted.stderr
    assert "Traceback" not in submitted.stderr

    status = modelfarm(["status", job["id"], "--json"], env)
    assert json.loads(status.stdout)["id"] == job["id"]
    human = modelfarm(["status", job["id"]], env)
    assert human.returncode == 0 and f"{job['id']}  succeeded" in human.stdout
    assert "51/51 items, 1 failed" in human.stdout
    assert modelfarm(["wait", job["id"]], env).returncode == 4

    out = tmp_path / "out.jsonl"
    assert modelfarm(["results", job["id"], "-o", str(out)], env).returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(50)]
    errors = modelfarm(["results", job["id"], "--errors"], env)
    assert json.loads(errors.stdout)["error"]["code"] == "invalid_json"
    meta = json.loads(modelfarm(["results", job["id"], "--json"], env).stdout)
    assert meta["id"] == job["output_file_id"] and meta["kind"] == "output"

    # Cancelling a job that has ended is the API's 409, said in a line: exit 1.
    late = modelfarm(["jobs", "cancel", job["id"]], env)
    assert late.returncode == 1 and "job_finished" in late.stderr
    assert "Traceback" not in late.stderr and len(late.stderr.strip().splitlines()) <= 2

    retried = modelfarm(["jobs", "retry", job["id"]], env)
    assert retried.returncode == 0, retried.stderr
    assert f"retry of {job['id']}" in retried.stderr and retried.stdout.startswith("job_")


def test_cli_reports_api_errors(api_url: str, tmp_path: Path, services: dict[str, str]) -> None:
    env = {**services, "MODELFARM_API_URL": api_url, "MODELFARM_API_KEY": "mf_wrong"}
    result = modelfarm(["status", "job_x"], env)
    assert result.returncode == 1 and "unauthorized" in result.stderr


def test_keys_create_prints_a_working_key(api_url: str, services: dict[str, str]) -> None:
    result = modelfarm(["keys", "create", "--tenant", "cli-team"], services)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    response = httpx.get(f"{api_url}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def _client_env(api_url: str, key: str, services: dict[str, str]) -> dict[str, str]:
    return {**services, "MODELFARM_API_URL": api_url, "MODELFARM_API_KEY": key}


def _sentences(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"input": f"sentence {i}"}) + "\n" for i in range(count)))
    return path


def test_jobs_list_events_and_cancel(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    env = _client_env(api_url, tenant_key, services)
    # Long enough (100 shards, half a minute or more) to be cancelled while it runs or waits:
    # 2,000 short sentences could end during the CLI calls that come before the cancel.
    big = str(_sentences(tmp_path / "big.jsonl", 20_000))
    submitted = modelfarm(["submit", big, "--model", "minilm", "--priority", "low"], env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert json.loads(modelfarm(["status", job_id, "--json"], env).stdout)["priority"] == "low"
    refused = modelfarm(["submit", big, "--model", "minilm", "--priority", "urgent"], env)
    assert refused.returncode == 2 and "--priority must be one of" in refused.stderr

    listed = modelfarm(["jobs", "list", "--json", "--limit", "5"], env)
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert [j["id"] for j in page["data"]] == [job_id] and page["has_more"] is False
    assert job_id in modelfarm(["jobs", "list"], env).stdout

    cancelled = modelfarm(["jobs", "cancel", job_id], env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split() in ([job_id, "cancelling"], [job_id, "cancelled"])
    waited = modelfarm(["wait", job_id], env)
    assert waited.returncode == 1 and "was cancelled" in waited.stderr
    assert json.loads(modelfarm(["status", job_id, "--json"], env).stdout)["status"] == "cancelled"

    events = modelfarm(["jobs", "events", job_id, "--json"], env)
    types = [e["type"] for e in json.loads(events.stdout)["data"]]
    assert types[0] == "queued" and "cancelled" in types, types
    assert "cancelled" in modelfarm(["jobs", "events", job_id], env).stdout

    assert modelfarm(["jobs", "cancel", job_id], env).returncode == 0  # cancelled is cancelled
    filtered = json.loads(
        modelfarm(["jobs", "list", "--json", "--status", "succeeded"], env).stdout
    )
    assert filtered["data"] == []


def test_a_failed_job_exits_1_and_says_why(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    env = _client_env(api_url, tenant_key, services)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    result = modelfarm(["submit", str(empty), "--model", "minilm", "--wait"], env)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["status"] == "failed"
    assert "failed:" in result.stderr and "empty_input" in result.stderr


def test_models_register_and_list(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    from tests.factories import train_sklearn_classifier

    env = _client_env(api_url, tenant_key, services)
    path = tmp_path / "clf.skops"
    train_sklearn_classifier(path)
    args = ["models", "register", str(path), "--name", "cli-clf", "--framework", "sklearn"]
    registered = modelfarm(args, env)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.strip() == "cli-clf@1"
    assert "ready" in registered.stderr  # it waited for the worker's validation

    models = json.loads(modelfarm(["models", "list", "--json"], env).stdout)["data"]
    assert {"minilm", "cli-clf"} <= {m["name"] for m in models}
    listing = modelfarm(["models", "list"], env).stdout
    assert "cli-clf@1 (sklearn, classification)" in listing and "builtin" in listing

    unknown = modelfarm([*args[:3], "--name", "x", "--framework", "caffe"], env)
    assert unknown.returncode == 1 and "422" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr


def test_farm_json_is_enough(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    """With no URL or key in the environment, the CLI uses those `modelfarm up` wrote."""
    data_dir = tmp_path / "farm"
    data_dir.mkdir()
    (data_dir / "farm.json").write_text(json.dumps({"api_url": api_url, "api_key": tenant_key}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFARM_")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "list", "--json"],
        env={**env, "MODELFARM_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"] == []


def test_models_register_exits_1_when_validation_fails(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    import numpy as np
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x = np.abs(np.random.default_rng(0).normal(size=(40, 3)))
    y = (x[:, 0] > 0.8).astype(int)
    path = tmp_path / "evil.skops"
    evil = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(x, y)
    skops.io.dump(evil, path)
    env = _client_env(api_url, tenant_key, services)
    args = ["models", "register", str(path), "--name", "cli-evil", "--framework", "sklearn"]
    result = modelfarm(args, env)
    assert result.returncode == 1, result.stderr
    assert "failed validation: untrusted_model" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_submission_leaves_no_upload_behind(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    """The upload of a job (or a model) the API refuses would count against the tenant's
    storage: the CLI deletes it, and GET /v1/files shows none."""
    env = _client_env(api_url, tenant_key, services)
    refused = modelfarm(
        ["submit", str(_sentences(tmp_path / "in.jsonl", 3)), "--model", "nope"], env
    )
    assert refused.returncode == 1 and "nope" in refused.stderr, refused.stderr
    # A training job and a model registration the API refuses take their uploads back too.
    rows = "".join(json.dumps({"input": f"t{i}", "label": i % 2}) + "\n" for i in range(4))
    (tmp_path / "train.jsonl").write_text(rows)
    train = ["train", str(tmp_path / "train.jsonl"), "--output-model", "Not A Name"]
    refused = modelfarm([*train, "--framework", "sklearn"], env)
    assert refused.returncode == 1 and "output_model" in refused.stderr, refused.stderr
    (tmp_path / "m.skops").write_bytes(b"any bytes: refused before a worker reads them")
    register = ["models", "register", "Not A Name", str(tmp_path / "m.skops")]
    refused = modelfarm([*register, "--framework", "sklearn"], env)
    assert refused.returncode == 1 and "name" in refused.stderr, refused.stderr
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {tenant_key}"}) as c:
        assert c.get("/v1/files").json()["data"] == []


def test_models_register_packs_a_folder(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    from tests.factories import make_tiny_text_classifier

    env = _client_env(api_url, tenant_key, services)
    folder = make_tiny_text_classifier(tmp_path / "clf", ["no", "yes"])
    args = ["models", "register", "cli-folder", str(folder), "--task", "text-classification"]
    registered = modelfarm(args, env)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.strip() == "cli-folder@1" and "ready" in registered.stderr
    (folder / "escape").symlink_to("/etc/passwd")
    linked = modelfarm(args, env)
    assert linked.returncode == 2 and "not a plain file" in linked.stderr, linked.stderr
