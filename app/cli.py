"""The `modelfarm` command: every process of the farm, and a client of its API."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.config import get_settings

cli = typer.Typer(
    help="modelfarm: batch inference and training jobs on your own machines.", no_args_is_help=True
)
keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
console = Console()
err = Console(stderr=True)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


@cli.command()
def up(flower: Annotated[bool, typer.Option(help="Start Flower too.")] = True) -> None:
    """Run the whole farm here: embedded PostgreSQL + Redis unless URLs are set."""
    # The terminal of `up` shows the farm's own lines (starts, restarts, the banner); the
    # libraries it drives (pgserver, httpx, alembic) speak only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("app").setLevel(logging.INFO)
    from app.farm import run_farm

    raise typer.Exit(run_farm(with_flower=flower))


MigrateOption = Annotated[
    bool | None,
    typer.Option(
        "--migrate/--no-migrate",
        help="Bring the schema up to date first (under a lock; default: MIGRATE_ON_START).",
        show_default=False,
    ),
]


def _migrate_first(migrate: bool | None) -> None:
    """Processes started together (a Procfile) may each be told to migrate: the advisory
    lock lets the first do it while the others wait, so none starts on an old schema."""
    wanted = get_settings().migrate_on_start if migrate is None else migrate
    if wanted:
        from app.migrate import upgrade_locked

        upgrade_locked()
        err.print("database schema is up to date")


@cli.command()
def api(migrate: MigrateOption = None) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from app.api.serve import HTTP_PROTOCOL

    settings = get_settings()
    settings.require_database_url()
    _migrate_first(migrate)
    processes = settings.api_processes()
    metrics_dir = None
    if processes > 1:
        # Each process counts into files here and a scrape sums them (app/metrics.py); set
        # before the processes start, so they all see it. Fresh each run, as the client asks.
        metrics_dir = tempfile.mkdtemp(prefix="modelfarm-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "app.api.main:create_app",
            factory=True,
            host=settings.api_host,
            port=settings.api_port,
            workers=processes,
            http=HTTP_PROTOCOL,
            log_level="info",
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@cli.command()
def worker(
    pool: Annotated[
        str, typer.Option(help="cpu or gpu (the queue and the device), or webhooks.")
    ] = "cpu",
    concurrency: Annotated[
        int | None, typer.Option(help="CPU pool processes, or webhooks pool threads.")
    ] = None,
    gpu_slot: Annotated[int | None, typer.Option(hidden=True)] = None,
    idle_without_gpu: Annotated[
        bool,
        typer.Option(help="GPU pool on a host with no GPU: wait (say so) instead of exiting 2."),
    ] = False,
    migrate: MigrateOption = None,
) -> None:
    """A Celery worker for one pool. The GPU pool runs one process per GPU; the webhooks pool
    runs threads, since it waits on receivers rather than computing."""
    if pool not in ("cpu", "gpu", "webhooks"):
        raise typer.BadParameter("pool must be cpu, gpu or webhooks")
    settings = get_settings()
    settings.require_database_url()
    settings.require_redis_url()
    if gpu_slot is None:
        _migrate_first(migrate)
    if pool == "gpu" and gpu_slot is None:
        raise typer.Exit(_run_gpu_pool(idle_without_gpu))
    os.environ["MODELFARM_WORKER_POOL"] = pool
    if concurrency:
        os.environ["MODELFARM_WORKER_CONCURRENCY"] = str(concurrency)
        get_settings.cache_clear()
    from workers.celery_app import celery_app

    name = f"{pool}{'' if gpu_slot is None else gpu_slot}@%h"
    extra: list[str] = []
    if pool == "webhooks":
        procs = concurrency or get_settings().webhook_concurrency
        extra = ["--pool", "threads"]
    else:
        procs = 1 if pool == "gpu" else get_settings().worker_concurrency
    celery_app.worker_main(
        [
            "worker",
            "--queues",
            pool,
            "--concurrency",
            str(procs),
            "--hostname",
            name,
            "--loglevel",
            "INFO",
            "--events",
            *extra,
        ]
    )


def _run_gpu_pool(idle_without_gpu: bool = False) -> int:
    """One worker process per GPU, each pinned by CUDA_VISIBLE_DEVICES before CUDA starts,
    each restarted with backoff if it dies."""
    from app.procs import Supervisor, install_stop_handlers, modelfarm_command, visible_gpus

    settings = get_settings()
    gpus = visible_gpus()
    count = settings.gpu_count if settings.gpu_count is not None else len(gpus)
    install_stop_handlers()
    if count < 1:
        hint = "set MODELFARM_GPU_COUNT with MODELFARM_DEVICE_OVERRIDE=cpu to run it on the CPU"
        if not idle_without_gpu:
            err.print(f"no GPU visible ({hint})")
            return 2
        # A Procfile line that ends stops the whole farm under honcho: wait instead, and say
        # so. No heartbeat is written, so `device: auto` keeps choosing the CPU pool.
        err.print(f"no GPU visible: the GPU pool idles and runs nothing here ({hint})")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    _logging()
    supervisor = Supervisor()
    try:
        for slot in range(count):
            device = gpus[slot] if slot < len(gpus) else ""
            supervisor.start(
                f"gpu{slot}",
                modelfarm_command("worker", "--pool", "gpu", "--gpu-slot", str(slot)),
                env={"CUDA_VISIBLE_DEVICES": device},
            )
        supervisor.supervise()
        err.print("every GPU worker of this pool was given up on")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop_all()


@cli.command()
def sweeper(migrate: MigrateOption = None) -> None:
    """Re-dispatch lost work, expire leases and deadlines (one acts at a time)."""
    _logging()
    settings = get_settings()
    settings.require_database_url()
    settings.require_redis_url()
    _migrate_first(migrate)
    from app.sweeper import run_sweeper

    try:
        run_sweeper()
    except KeyboardInterrupt:
        pass


@cli.command()
def flower() -> None:
    """Flower, the live view of workers, tasks and queues (job ids in the task list)."""
    from app.flower import FlowerRefused, flower_argv, flower_env

    settings = get_settings()
    settings.require_redis_url()
    try:
        argv = flower_argv(settings)
    except FlowerRefused as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    os.environ.update(flower_env(settings))
    os.execv(sys.executable, argv)


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date (safe to run from several places at once)."""
    _logging()
    from app.migrate import upgrade_locked

    upgrade_locked()
    console.print("database is up to date")


@keys_cli.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="Tenant name.")] = "default") -> None:
    """Print a new API key for TENANT (created if new)."""
    from app.db import session_scope
    from app.services.tenants import create_api_key, get_or_create_tenant

    with session_scope() as session:
        key = create_api_key(session, get_or_create_tenant(session, tenant))
    console.print(key)


def _client():  # type: ignore[no-untyped-def]
    from app.client import Client

    settings = get_settings()
    if settings.api_key is None:
        err.print("no API key: set MODELFARM_API_KEY (or run `modelfarm up` in this DATA_DIR)")
        raise typer.Exit(2)
    return Client(settings.client_api_url, settings.api_key.get_secret_value())


def _show(job: dict[str, object]) -> None:
    console.print_json(data=job)


def _watch(client, job_id: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from app.client import TERMINAL

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as progress:
        bar = progress.add_task(job_id, total=None)
        while True:
            job = client.job(job_id, wait=1)
            counts = job["counts"]
            progress.update(
                bar,
                total=counts["total"] or None,
                completed=counts["succeeded"] + counts["failed"],
                description=f"{job_id} {job['status']}",
            )
            if job["status"] in TERMINAL:
                return job


@cli.command()
def submit(
    file: Path,
    model: Annotated[str, typer.Option(help="name or name@version")],
    device: Annotated[str, typer.Option(help="cpu, gpu or auto")] = "auto",
    wait: Annotated[bool, typer.Option(help="Show progress until the job ends.")] = False,
) -> None:
    """Upload FILE (JSONL) and run a batch inference job over it."""
    client = _client()
    uploaded = client.upload(file, "batch")
    job = client.create_job(
        {
            "type": "inference",
            "model": model,
            "device": device,
            "input": {"file_id": uploaded["id"]},
        }
    )
    err.print(f"job {job['id']} {job['status']}")
    if wait:
        job = _watch(client, job["id"])
        _show(job)
        raise typer.Exit(0 if job["status"] == "succeeded" else 1)
    console.print(job["id"])


@cli.command()
def status(job_id: str) -> None:
    """Show a job."""
    _show(_client().job(job_id))


@cli.command("wait")
def wait_cmd(job_id: str) -> None:
    """Show progress until the job ends; exit 0 only if it succeeded."""
    job = _watch(_client(), job_id)
    _show(job)
    raise typer.Exit(0 if job["status"] == "succeeded" else 1)


@cli.command()
def results(
    job_id: str,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here.")] = None,
    errors: Annotated[bool, typer.Option(help="The error file instead.")] = False,
) -> None:
    """Download a job's output (or error) file."""
    client = _client()
    job = client.job(job_id)
    file_id = job["error_file_id" if errors else "output_file_id"]
    if not file_id:
        err.print(f"job {job_id} ({job['status']}) has no {'error' if errors else 'output'} file")
        raise typer.Exit(1)
    sink = output.open("wb") if output else sys.stdout.buffer
    try:
        for chunk in client.file_chunks(file_id):
            sink.write(chunk)
    finally:
        if output:
            sink.close()


def main() -> None:
    from app.client import ApiError

    try:
        cli()
    except ApiError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(1)


if __name__ == "__main__":
    main()
