"""How `modelfarm flower` runs Flower: the job id in the task list, auth, history kept."""

from __future__ import annotations

import ipaddress
import sys

from app.config import Settings

# Flower's task list leaves out arguments by default; every modelfarm task's first argument
# is its job id (app/broker/dispatch.py), so `args` is what puts the job id on the page.
TASKS_COLUMNS = "name,uuid,state,args,received,started,runtime,worker"
# Flower's persistent mode writes its state only when it stops; a minute's interval bounds
# what a crash (SIGKILL, OOM) loses.
STATE_SAVE_MS = 60_000


class FlowerRefused(Exception):
    """Flower would be reachable from other machines with no authentication."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name (or "" for every address): it may be reached from elsewhere
        return False


def flower_argv(settings: Settings) -> list[str]:
    """The command line of Flower for these settings. The password is not on it (a command
    line is visible to every user of the machine): see `flower_env`."""
    if settings.flower_basic_auth is None and not is_loopback(settings.api_host):
        raise FlowerRefused(
            f"Flower would listen on {settings.api_host or 'every address'} with no "
            "authentication: set MODELFARM_FLOWER_BASIC_AUTH=user:password (or listen on "
            "127.0.0.1). Anyone who reaches Flower can shut workers down and revoke tasks."
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app:celery_app",
        "flower",
        f"--port={settings.flower_port}",
        f"--address={settings.api_host}",
        f"--tasks_columns={TASKS_COLUMNS}",
        "--persistent=True",
        f"--db={(settings.data_dir / 'flower.db').resolve()}",
        f"--state_save_interval={STATE_SAVE_MS}",
        f"--max_tasks={settings.flower_max_tasks}",
    ]


def flower_env(settings: Settings) -> dict[str, str]:
    """Environment for Flower: basic auth through Flower's own variable."""
    if settings.flower_basic_auth is None:
        return {}
    return {"FLOWER_BASIC_AUTH": settings.flower_basic_auth.get_secret_value()}


def flower_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.api_host in ("", "0.0.0.0", "::") else settings.api_host
    return f"http://{host}:{settings.flower_port}"
