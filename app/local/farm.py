"""`modelfarm up`: the whole farm on one machine, embedded servers included when needed.

Every process is supervised (app/local/procs.py): one that dies is restarted with backoff while the
rest keep serving. Only the API is essential: given up on, it takes the farm down, since a
farm nobody can reach is worse than one that says it stopped. A worker, the sweeper or Flower
given up on leaves the farm running (jobs wait in PostgreSQL, nothing is lost) with a red line
saying which part is down and where its log is.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console

from app.config import Settings, get_settings
from app.local.farm_lock import FarmRunning, hold
from app.local.procs import (
    RestartPolicy,
    Supervisor,
    install_stop_handlers,
    modelfarm_command,
    stop_requested,
    visible_gpus,
)

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)  # paths and keys stay on one line

READY_TIMEOUT_SECONDS = 600.0  # the first start on a slow machine loads models for minutes


def _embedded(settings: Settings, stack: ExitStack) -> dict[str, str]:
    """Start what the environment does not name; returns the URLs to hand to every process."""
    from app.local import embedded

    urls: dict[str, str] = {}
    if not os.environ.get("MODELFARM_DATABASE_URL"):
        pg = embedded.start_postgres(settings.data_dir / "postgres")
        stack.callback(pg.stop)
        urls["database_url"] = pg.url
        console.print(f"embedded PostgreSQL under {settings.data_dir / 'postgres'}")
    if not os.environ.get("MODELFARM_REDIS_URL"):
        redis = embedded.start_redis(settings.data_dir / "redis")
        stack.callback(redis.stop)
        urls["redis_url"] = redis.url
        console.print(f"embedded Redis at {redis.url}")
    return urls


def default_key(kept: str | None) -> tuple[str, bool]:
    """The `default` tenant's key of this data directory: the one farm.json kept from an
    earlier start while it still works (not revoked or expired, still the default tenant's),
    else a new one. Returns (key, whether it is new): each start used to mint another."""
    from app.services.errors import ServiceError
    from app.services.keys import create_api_key, look_up
    from app.services.tenants import get_or_create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        entry = look_up(session, kept) if kept else None  # read now, not from a cache
        if kept and entry is not None:
            try:
                if entry.check().name == "default":
                    return kept, False
            except ServiceError:  # revoked, expired, or its tenant disabled
                pass
        return create_api_key(session, get_or_create_tenant(session, "default")), True


def _processes(settings: Settings, with_flower: bool) -> dict[str, list[str]]:
    processes = {
        "api": modelfarm_command("api"),
        "worker-cpu": modelfarm_command("worker", "--pool", "cpu"),
        "worker-webhooks": modelfarm_command("worker", "--pool", "webhooks"),
        "sweeper": modelfarm_command("sweeper"),
    }
    # The GPU pool only where it has something to run on (or is told to run on the CPU).
    if visible_gpus() or settings.gpu_count:
        processes["worker-gpu"] = modelfarm_command("worker", "--pool", "gpu")
    if with_flower:
        from app.local.flower import FlowerRefused, flower_argv

        try:
            flower_argv(settings)  # would it start? Better said once here than five crashes
            processes["flower"] = modelfarm_command("flower")
        except FlowerRefused as exc:
            console.print(f"[yellow]Flower not started: {exc}")
    return processes


def run_farm(with_flower: bool = True) -> int:
    """Start everything, supervise it until Ctrl-C, then stop all of it."""
    settings = get_settings()
    try:
        # Before anything else: a second `up` here must not touch the farm that runs.
        lock = hold(settings.data_dir, settings.read_state().get("api_url"))
    except FarmRunning as exc:
        console.print(f"[red]{exc}")
        return 1
    install_stop_handlers()
    # platformdirs (under pgserver) warns about a missing XDG_RUNTIME_DIR on every start as
    # root or in a container; nothing depends on that directory here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    supervisor = Supervisor(RestartPolicy(initial_delay=settings.restart_seconds))
    with ExitStack() as stack:
        stack.callback(lock.close)  # the last thing let go: after every process stopped
        try:
            urls = _embedded(settings, stack)
            for key, value in urls.items():
                os.environ[f"MODELFARM_{key.upper()}"] = value
            stack.callback(_forget_state, settings.data_dir, list(urls))
            get_settings.cache_clear()
            settings = get_settings()

            from app.local.migrate import upgrade_locked

            upgrade_locked()
            api_key, minted = default_key(settings.read_state().get("api_key"))
            settings.write_state({**urls, "api_url": settings.client_api_url, "api_key": api_key})

            logs = settings.data_dir / "logs"
            stack.callback(supervisor.stop_all)
            since = datetime.now(UTC)
            processes = _processes(settings, with_flower)
            # Every process learns which pools this farm runs: /readyz reports the others
            # (the GPU pool on a host without a GPU) as absent by choice, not as missing.
            pools = [n.removeprefix("worker-") for n in processes if n.startswith("worker-")]
            os.environ["MODELFARM_POOLS"] = ",".join(pools)
            for name, argv in processes.items():
                supervisor.start(name, argv, log_file=logs / f"{name}.log", essential=name == "api")
            console.print(f"starting {', '.join(processes)} (logs in {logs})...")
            if not _wait_ready(settings, supervisor, pools, since):
                return 1
            _banner(settings, api_key, minted, logs, list(processes))
            gave_up = supervisor.supervise()
            console.print(f"[red]{gave_up or 'every process'} was given up on; stopping the farm")
            return 1
        except KeyboardInterrupt:
            console.print("stopping the farm...")
            return 0
        except Exception:
            # The signal can land anywhere, in the middle of a library's own cleanup too (a
            # database driver restoring a connection it was pinging raises its own error then):
            # once a stop was asked for, what breaks is the stop.
            if not stop_requested.is_set():
                raise
            console.print("stopping the farm...")
            return 0


def _wait_ready(
    settings: Settings, supervisor: Supervisor, pools: list[str], since: datetime
) -> bool:
    """Until the API answers /readyz and every pool has a worker beating; False when the API
    was given up on meanwhile. Restarts go on while this waits."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    api_ready = False
    waiting = set(pools)
    while time.monotonic() < deadline:
        given_up = supervisor.check()
        if "api" in given_up:
            console.print("[red]the API keeps crashing; stopping the farm (see its log)")
            return False
        waiting -= {n.removeprefix("worker-") for n in given_up}  # no beat will come from it
        api_ready = api_ready or _answers(f"{settings.client_api_url}/readyz")
        if api_ready:
            waiting -= _beating_pools(since)
        if api_ready and not waiting:
            return True
        time.sleep(0.5)
    console.print(
        f"[yellow]not ready after {READY_TIMEOUT_SECONDS:.0f} s: "
        f"{'the API' if not api_ready else ', '.join(sorted(waiting))}; see the logs"
    )
    return True


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _beating_pools(since: datetime) -> set[str]:
    """Pools with a worker that beat since `up` started them (a worker beats once ready)."""
    from sqlalchemy import select

    from app.models import WorkerHeartbeat
    from app.unit_of_work import session_scope

    with session_scope() as session:
        rows = session.scalars(select(WorkerHeartbeat.pool).where(WorkerHeartbeat.seen_at > since))
        return set(rows)


def _banner(settings: Settings, api_key: str, minted: bool, logs: Path, names: list[str]) -> None:
    from app.local.flower import flower_url

    console.rule("[bold]modelfarm is up")
    console.print(f"[bold]API[/bold]      {settings.client_api_url}   (docs at /docs)")
    if "flower" in names:
        auth = "  (basic auth)" if settings.flower_basic_auth else ""
        console.print(f"[bold]Flower[/bold]   {flower_url(settings)}{auth}")
    made = "new" if minted else "kept from the last start"
    console.print(
        f"[bold]API key[/bold]  {api_key}  (tenant 'default', {made}; "
        "`modelfarm keys create` makes another)"
    )
    console.print(f"[bold]Logs[/bold]     {logs}/ ({', '.join(f'{n}.log' for n in names)})")
    console.print("Ctrl-C stops the farm.")


def _forget_state(data_dir: Path, keys: list[str]) -> None:
    """Embedded servers are gone once `up` ends: leave no URL pointing at them."""
    settings = get_settings()
    state = settings.read_state()
    for key in keys:
        state.pop(key, None)
    settings.write_state(state)
