"""The `modelfarm` command: every process of the farm, and a client of its API."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Annotated

import typer
from rich.console import Console

from app.cli import client, health, jobs, keys, train
from app.cli.errors import USAGE, CliError, run
from app.config import Settings, get_settings

cli = typer.Typer(
    help="modelfarm: batch inference and training jobs on your own machines.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)


def _settings(database: bool = False, broker: bool = False) -> Settings:
    """The settings, refusing (one line, exit 2) a command whose servers are not configured."""
    settings = get_settings()
    try:
        if database:
            settings.require_database_url()
        if broker:
            settings.require_broker_url()
    except RuntimeError as exc:
        raise CliError(str(exc), USAGE) from None
    return settings


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


@cli.command()
def up(flower: Annotated[bool, typer.Option(help="Start Flower too.")] = True) -> None:
    """Run the whole farm here: embedded PostgreSQL + Redis unless URLs are set."""
    # The terminal of `up` shows the farm's own lines (starts, restarts, the banner); the
    # libraries it drives (pgserver, httpx, alembic) speak only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("app").setLevel(logging.INFO)
    from app.local.farm import run_farm

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
        from app.local.migrate import upgrade_locked

        upgrade_locked()
        err.print("database schema is up to date")


@cli.command()
def api(migrate: MigrateOption = None) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from app.api.serve import HTTP_PROTOCOL

    settings = _settings(database=True)
    _migrate_first(migrate)
    processes = settings.api_processes()
    metrics_dir = None
    if processes > 1:
        # Each process counts into files here and a scrape sums them (app/api/metrics.py); set
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
    _settings(database=True, broker=True)
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
    from app.local.procs import (
        RestartPolicy,
        Supervisor,
        install_stop_handlers,
        modelfarm_command,
        visible_gpus,
    )

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
    supervisor = Supervisor(RestartPolicy(initial_delay=settings.restart_seconds))
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
    _settings(database=True, broker=True)
    _migrate_first(migrate)
    from app.sweeper import run_sweeper

    try:
        run_sweeper()
    except KeyboardInterrupt:
        pass


@cli.command()
def flower() -> None:
    """Flower, the live view of workers, tasks and queues (job ids in the task list)."""
    from app.local.flower import FlowerRefused, flower_argv, flower_env

    settings = _settings(broker=True)
    try:
        argv = flower_argv(settings)
    except FlowerRefused as exc:
        raise CliError(str(exc), USAGE) from None
    os.environ.update(flower_env(settings))
    os.execv(sys.executable, argv)


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date (safe to run from several places at once)."""
    _logging()
    _settings(database=True)
    from app.local.migrate import upgrade_locked

    upgrade_locked()
    console.print("database is up to date")


# Registered after the process commands, so `modelfarm --help` lists those first.
client.register(cli)
jobs.register(cli)
keys.register(cli)
health.register(cli)
train.register(cli)


def main() -> None:
    sys.exit(run(cli))
