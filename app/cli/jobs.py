"""`modelfarm jobs ...` and `modelfarm models ...`: list, cancel, retry, events; list, register."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Annotated

import typer

from app.cli.client import JSON, JsonFlag, connect, job_line, print_json
from app.cli.errors import API_ERROR, USAGE, CliError, say
from app.cli.pack import pack_folder

jobs_cli = typer.Typer(help="List and control jobs.", no_args_is_help=True)
models_cli = typer.Typer(help="Models this tenant can name.", no_args_is_help=True)

PAGE = 100  # the API's largest page


@jobs_cli.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    type: Annotated[str | None, typer.Option(help="inference or training.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs.")] = 20,
    after: Annotated[str | None, typer.Option(help="Start after this job id.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Jobs, newest first. With --json: {"data": [Job], "has_more", "last_id"}, as the API."""
    jobs: list[JSON] = []
    has_more = True
    with connect() as client:
        # A --limit past one page reads page after page, as `after` in the API allows.
        while has_more and len(jobs) < limit:
            page = client.jobs(
                status=status, type=type, limit=min(PAGE, limit - len(jobs)), after=after
            )
            jobs += page["data"]
            has_more, after = page["has_more"], page["last_id"]
    if as_json:
        print_json(
            {"data": jobs, "has_more": has_more, "last_id": jobs[-1]["id"] if jobs else None}
        )
        return
    for job in jobs:
        print(job_line(job))
    if not jobs:
        say("no jobs" + (f" {status}" if status else ""))
    if has_more:
        say(f"more jobs: --after {jobs[-1]['id']}")


@jobs_cli.command("cancel")
def cancel(job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a job: workers stop at their next micro-batch; results so far are kept."""
    with connect() as client:
        job = client.cancel_job(job_id)
    if as_json:
        print_json(job)
    else:
        print(f"{job['id']} {job['status']}")


@jobs_cli.command("retry")
def retry(job_id: str, as_json: JsonFlag = False) -> None:
    """A new job over just the failed items of a finished batch job; prints its id."""
    with connect() as client:
        job = client.retry_job(job_id)
    if as_json:
        print_json(job)
        return
    say(f"job {job['id']} {job['status']} (retry of {job_id})")
    print(job["id"])


@jobs_cli.command("events")
def events(job_id: str, as_json: JsonFlag = False) -> None:
    """The job's event log, oldest first. With --json: {"data": [event]}."""
    with connect() as client:
        log = list(client.iter_events(job_id))
    if as_json:
        print_json({"data": log})
        return
    for event in log:
        data = json.dumps(event["data"], ensure_ascii=False) if event["data"] else ""
        print(f"{str(event['created_at'])[:23]}  {event['type']}  {data}".rstrip())


def _version_text(version: JSON) -> str:
    status = f" {version['status']}" if version.get("status") else ""
    return f"{version['model']} ({version['framework']}, {version['task']}){status}"


@models_cli.command("list")
def list_models(as_json: JsonFlag = False) -> None:
    """Models, builtin ones included, with their latest version. With --json: {"data": [Model]}."""
    with connect() as client:
        models = client.models()
    if as_json:
        print_json({"data": models})
        return
    for model in models:
        versions = model.get("versions") or []
        latest = next(
            (v for v in versions if v.get("version") == model.get("latest_version")),
            versions[-1] if versions else None,
        )
        described = (
            _version_text(latest) if latest else f"{model['name']}@{model['latest_version']}"
        )
        print(f"{model['name']}  {described}{'  builtin' if model.get('builtin') else ''}")


@models_cli.command("register")
def register_model(
    first: Annotated[
        str,
        typer.Argument(
            metavar="[NAME] SOURCE",
            help="SOURCE: a .skops file, an archive, or a folder (packed here); NAME first, or "
            "with --name.",
            show_default=False,
        ),
    ],
    second: Annotated[str | None, typer.Argument(hidden=True, show_default=False)] = None,
    name: Annotated[
        str | None, typer.Option(help="The model's name; each upload is a new version.")
    ] = None,
    framework: Annotated[
        str | None,
        typer.Option(
            help="sklearn, transformers or sentence-transformers (a folder: transformers)."
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="e.g. text-classification; sklearn infers it.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until a worker has validated it.")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Upload SOURCE and register it as the next version of NAME: `models register NAME ./dir
    --task text-classification` packs a folder of config, safetensors weights and tokenizer
    files into an archive first. Prints what a job names, e.g. `churn@2`. A worker validates
    the upload first: by default this waits for it and exits 1 if the version failed."""
    if second is not None:
        if name is not None and name != first:
            raise CliError(f"two names given: {first!r} and --name {name!r}", USAGE)
        name, source = first, Path(second)
    else:
        source = Path(first)
    if name is None:
        raise CliError("name the model: `models register NAME SOURCE` or --name NAME", USAGE)
    if not source.exists():
        raise CliError(f"{source} does not exist", USAGE)
    with ExitStack() as stack:
        if source.is_dir():
            framework = framework or "transformers"
            source = pack_folder(source, Path(stack.enter_context(TemporaryDirectory())))
        if framework is None:
            raise CliError("--framework is needed for a file: sklearn, transformers, ...", USAGE)
        with connect() as client:
            version = client.register_model(source, name=name, framework=framework, task=task)
            if wait and version.get("status") == "validating":
                version = client.wait_model(name, int(version["version"]))
    if as_json:
        print_json(version)
    else:
        say(f"registered {_version_text(version)}")
        print(version["model"])
    if version.get("status") == "failed":
        error = version.get("error") or {}
        reason = f"{error.get('code')}: {error.get('message')}"
        raise CliError(f"{version['model']} failed validation: {reason}", code=API_ERROR)


def register(cli: typer.Typer) -> None:
    cli.add_typer(jobs_cli, name="jobs")
    cli.add_typer(models_cli, name="models")
