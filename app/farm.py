"""`modelfarm up`: the whole farm on one machine, embedded servers included when needed."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from app.config import Settings, get_settings
from app.procs import Supervisor, install_stop_handlers, modelfarm_command, visible_gpus

log = logging.getLogger(__name__)
console = Console(stderr=True)


def _embedded(settings: Settings, stack: ExitStack) -> dict[str, str]:
    """Start what the environment does not name; returns the URLs to hand to every process."""
    from app import embedded

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


def _default_key() -> str:
    from app.db import session_scope
    from app.services.tenants import create_api_key, get_or_create_tenant

    with session_scope() as session:
        return create_api_key(session, get_or_create_tenant(session, "default"))


def run_farm(with_flower: bool = True) -> int:
    """Start everything, block until Ctrl-C (or a process dies), then stop all of it."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    install_stop_handlers()
    supervisor = Supervisor()
    with ExitStack() as stack:
        try:
            urls = _embedded(settings, stack)
            for key, value in urls.items():
                os.environ[f"MODELFARM_{key.upper()}"] = value
            stack.callback(_forget_state, settings.data_dir, list(urls))
            get_settings.cache_clear()
            settings = get_settings()

            from app.migrate import upgrade

            upgrade()
            api_key = _default_key()
            settings.write_state({**urls, "api_url": settings.client_api_url, "api_key": api_key})

            supervisor.start("api", modelfarm_command("api"))
            supervisor.start("worker-cpu", modelfarm_command("worker", "--pool", "cpu"))
            supervisor.start("worker-webhooks", modelfarm_command("worker", "--pool", "webhooks"))
            supervisor.start("sweeper", modelfarm_command("sweeper"))
            if visible_gpus() or settings.gpu_count:
                supervisor.start("worker-gpu", modelfarm_command("worker", "--pool", "gpu"))
            if with_flower:
                supervisor.start("flower", modelfarm_command("flower"))
            stack.callback(supervisor.stop_all)

            console.print(f"[bold]API[/bold]     {settings.client_api_url}")
            if with_flower:
                console.print(
                    f"[bold]Flower[/bold]  http://{settings.api_host}:{settings.flower_port}"
                )
            console.print(f"[bold]API key[/bold] {api_key}  (tenant 'default')")
            console.print("Ctrl-C stops the farm.")
            name, code = supervisor.wait_any()
            console.print(f"[red]{name} exited with code {code}; stopping the farm[/red]")
            return 1
        except KeyboardInterrupt:
            console.print("stopping the farm...")
            return 0


def _forget_state(data_dir: Path, keys: list[str]) -> None:
    """Embedded servers are gone once `up` ends: leave no URL pointing at them."""
    settings = get_settings()
    state = settings.read_state()
    for key in keys:
        state.pop(key, None)
    settings.write_state(state)
