"""`modelfarm train`: upload a training file (JSONL, or an archive of image folders) and run a
training job whose result is the next version of a model."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from app.cli.client import InputFile, connect, follow, outcome, print_json
from app.cli.errors import USAGE, CliError, say


def _params(values: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is read as JSON when it is JSON (3, 0.01, true), else text."""
    params: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise CliError(f"--param must be key=value, not {value!r}", USAGE)
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def train(
    file: InputFile,
    output_model: Annotated[str, typer.Option(help="The model name the result registers as.")],
    framework: Annotated[str, typer.Option(help="sklearn or transformers.")] = "transformers",
    task: Annotated[
        str | None, typer.Option(help="image-classification: FILE is a zip/tar, a folder a class.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="A training param, key=value; repeat for more.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, gpu or auto")] = "auto",
    wait: Annotated[bool, typer.Option(help="Show progress until the job ends.")] = False,
) -> None:
    """Upload FILE (purpose training) and run a training job on it.

    Prints the job id; with --wait, the finished job as JSON (its `result` names the new
    version and its metrics), and exits 1 if it failed."""
    params = _params(param or [])
    with connect() as client:
        uploaded = client.upload(file, "training")
        body: dict[str, Any] = {
            "type": "training",
            "framework": framework,
            "input": {"file_id": uploaded["id"]},
            "params": params,
            "output_model": output_model,
            "device": device,
        }
        if task is not None:
            body["task"] = task
        # Refused (a bad param, a quota): the upload is taken back.
        job = client.naming_upload(uploaded["id"], lambda: client.create_job(body))
        say(f"job {job['id']} {job['status']}")
        if not wait:
            print(job["id"])
            return
        job = follow(client, job["id"])
    print_json(job)
    raise typer.Exit(outcome(job))


def register(cli: typer.Typer) -> None:
    cli.command("train")(train)
