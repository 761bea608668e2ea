"""The `modelfarm` commands that are clients of the API: submit, status, wait, results.

They talk to the farm only through `modelfarm_client`, and import nothing of the server beyond
the settings, so they start quickly and fail with a line, not a traceback (app/cli/errors.py).
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli.errors import API_ERROR, INTERRUPTED, ITEMS_FAILED, OK, USAGE, CliError, say
from app.config import get_settings
from modelfarm_client import Client

JSON = dict[str, Any]

#: an existing, readable file (click says so in one line when it is not)
InputFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, readable=True, show_default=False)
]
PRIORITIES = ("high", "normal", "low")  # a job's `priority` (docs/api.md)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


def connect() -> Client:
    """A client of the farm this shell means: MODELFARM_API_URL, else the URL `modelfarm up`
    wrote to DATA_DIR/farm.json (it may run on another port), else API_HOST:API_PORT."""
    settings = get_settings()
    url = settings.api_url or settings.read_state().get("api_url") or settings.client_api_url
    if settings.api_key is None:
        raise CliError(
            "no API key",
            USAGE,
            "set MODELFARM_API_KEY, or run in the MODELFARM_DATA_DIR of `modelfarm up`",
        )
    return Client(url, settings.api_key.get_secret_value())


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def counts_text(job: JSON) -> str:
    counts = job.get("counts") or {}
    total, done = counts.get("total", 0), counts.get("succeeded", 0) + counts.get("failed", 0)
    failed = f", {counts['failed']} failed" if counts.get("failed") else ""
    return f"{done}/{total} items{failed}"


def job_line(job: JSON) -> str:
    """One job on one line, the columns of `jobs list`."""
    created = str(job.get("created_at") or "")[:19]
    model = job.get("model") or job.get("output_model") or "-"
    columns = (job["id"], job["status"], job.get("type", ""), model, counts_text(job), created)
    return "  ".join(str(c) for c in columns)


def show_job(job: JSON) -> None:
    print(job_line(job))
    files = [
        f"{kind} {job[key]}"
        for kind, key in (
            ("input", "input_file_id"),
            ("output", "output_file_id"),
            ("errors", "error_file_id"),
        )
        if job.get(key)
    ]
    if files:
        print("  files: " + ", ".join(files))
    if job.get("error"):
        print(f"  error: {job['error']['message']} ({job['error']['code']})")
    if job.get("result"):
        print(f"  result: {json.dumps(job['result'])}")
    if job.get("notice"):
        print(f"  notice: {job['notice']}")


def pace_words(progress: JSON | None) -> str:
    """'412.5 items/s, ETA 0:00:09' from the job's progress while it runs; '' otherwise."""
    if not progress or progress.get("items_per_second") is None:
        return ""
    words = f"{progress['items_per_second']:g} items/s"
    eta = progress.get("eta_seconds")
    if eta is not None:
        words += f", ETA {timedelta(seconds=round(eta))}"
    return words


def follow(client: Client, job_id: str) -> JSON:
    """A progress bar on stderr until the job ends, fed by the client's long-polling wait."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    pace_column = TextColumn("{task.fields[pace]}")
    with Progress(
        *columns, TimeElapsedColumn(), pace_column, console=Console(stderr=True)
    ) as progress:
        bar = progress.add_task(job_id, total=None, pace="")

        def update(job: JSON) -> None:
            counts = job["counts"]
            progress.update(
                bar,
                total=counts["total"] or None,
                completed=counts["succeeded"] + counts["failed"],
                description=f"{job_id} {job['status']}",
                pace=pace_words(job.get("progress")),
            )

        try:
            return client.wait(job_id, poll=1, on_progress=update)
        except KeyboardInterrupt:
            # Ctrl-C stops the waiting, not the job: say so, and how to pick it up again.
            progress.stop()
            raise CliError(
                f"stopped waiting; job {job_id} goes on",
                INTERRUPTED,
                f"follow it again: `modelfarm wait {job_id}`",
            ) from None


def outcome(job: JSON) -> int:
    """Say how the job ended, and the exit code for it: a succeeded job with failed items is not
    a success for a script (exit 4), though the farm did its work."""
    job_id, counts = job["id"], job.get("counts") or {}
    failed, total = counts.get("failed", 0), counts.get("total", 0)
    errors_hint = f"see `modelfarm results {job_id} --errors`"
    if job["status"] == "succeeded" and not failed:
        say(f"job {job_id} succeeded: {total} items")
        return OK
    if job["status"] == "succeeded":
        say(f"job {job_id} succeeded, but {failed} of {total} items failed: {errors_hint}")
        return ITEMS_FAILED
    if job["status"] == "failed":
        error = job.get("error") or {}
        reason = f"{error.get('message', 'no reason given')} ({error.get('code', '?')})"
        say(f"job {job_id} failed: {reason}")
        if job.get("error_file_id"):
            say(f"  {failed} items failed before that: {errors_hint}")
        return API_ERROR
    say(f"job {job_id} was {job['status']}")
    return API_ERROR


def submit(
    file: InputFile,
    model: Annotated[str, typer.Option(help="name or name@version")],
    device: Annotated[str, typer.Option(help="cpu, gpu or auto")] = "auto",
    priority: Annotated[
        str, typer.Option(help="high, normal or low: its place among your own jobs.")
    ] = "normal",
    wait: Annotated[bool, typer.Option(help="Show progress until the job ends.")] = False,
    params: Annotated[
        str | None,
        typer.Option(help="The job's params as a JSON object, e.g. '{\"max_tokens\": 64}'."),
    ] = None,
) -> None:
    """Upload FILE (JSONL) and run a batch inference job over it.

    Prints the job id; with --wait, the finished job as JSON, and exits 1 if the job failed or
    was cancelled, 4 if some of its items failed."""
    if priority not in PRIORITIES:  # before the upload, so a typo leaves no file behind
        raise CliError(
            f"--priority must be one of {', '.join(PRIORITIES)}, not {priority!r}", USAGE
        )
    try:
        job_params = json.loads(params) if params is not None else {}
    except ValueError:
        job_params = None
    if not isinstance(job_params, dict):
        raise CliError("--params must be a JSON object", USAGE)
    with connect() as client:
        uploaded = client.upload(file, "batch")
        body: dict[str, Any] = {
            "type": "inference",
            "model": model,
            "device": device,
            "priority": priority,
        }
        if job_params:
            body["params"] = job_params
        body["input"] = {"file_id": uploaded["id"]}
        # Refused (no such model, a quota, a bad field): the upload is taken back.
        job = client.naming_upload(uploaded["id"], lambda: client.create_job(body))
        say(f"job {job['id']} {job['status']}")
        if not wait:
            print(job["id"])
            return
        job = follow(client, job["id"])
    print_json(job)
    raise typer.Exit(outcome(job))


def status(job_id: str, as_json: JsonFlag = False) -> None:
    """Show a job: status, item counts, files, error."""
    with connect() as client:
        job = client.job(job_id)
    if as_json:
        print_json(job)
    else:
        show_job(job)


def wait(job_id: str) -> None:
    """Show progress until the job ends, then print it as JSON.

    Exits 0 only if it succeeded with no failed item (1: failed or cancelled, 4: items failed)."""
    with connect() as client:
        job = follow(client, job_id)
    print_json(job)
    raise typer.Exit(outcome(job))


def results(
    job_id: str,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here.")] = None,
    errors: Annotated[bool, typer.Option(help="The error file instead.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the file's metadata (not its lines) as JSON.")
    ] = False,
) -> None:
    """Download a job's output (or error) file: to stdout, or to FILE with -o."""
    kind = "error" if errors else "output"
    if output is not None and not output.parent.is_dir():
        raise CliError(f"no such directory: {output.parent}", USAGE)
    with connect() as client:
        job = client.job(job_id)
        file_id = job[f"{kind}_file_id"]
        if not file_id:
            raise CliError(f"job {job_id} ({job['status']}) has no {kind} file", API_ERROR)
        if output is not None:
            client.download(file_id, output)
        elif not as_json:
            for chunk in client.file_chunks(file_id):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        if as_json:
            meta = {**client.file(file_id), "job_id": job_id, "kind": kind}
            print_json({**meta, "path": str(output)} if output else meta)


def register(cli: typer.Typer) -> None:
    for command in (submit, status, wait, results):
        cli.command(command.__name__)(command)
