"""`modelfarm tenants ...`, `keys ...` and `usage`: run on a host that reaches PostgreSQL, as
`keys create` always has (they read and write the database, not the API).

SQLAlchemy and the services are imported inside each command, so the client commands still
start without them. Changes that the API remembers (a revoked key, a disabled tenant, new
limits) raise the auth generation in Redis after they commit, which every API process reads
with its next request (app/ratelimit.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer

from app.cli.errors import API_ERROR, USAGE, CliError, say
from app.config import get_settings

T = TypeVar("T")

tenants_cli = typer.Typer(help="Tenants and their limits (reads PostgreSQL).", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys (reads PostgreSQL).", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
NONE_WORDS = ("none", "null", "unlimited", "")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = re.compile(r"^\s*(\d+)\s*(b|kib|mib|gib|tib|k|m|g|t)?\s*$", re.IGNORECASE)
#: a size's unit -> bytes
_UNITS = {
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `12h`, `30d` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 30d, 12h, 15m or 90s")
    return timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2).lower()])


def parse_number(text: str, integer: bool) -> float | int | None:
    """A limit's value: a number, or `none` to clear it."""
    if text.strip().lower() in NONE_WORDS:
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise typer.BadParameter(f"{text!r} is not {kind} (or `none`)") from None
    if value < 0 or not math.isfinite(value):
        raise typer.BadParameter(f"{text!r} may not be negative")
    return value


def parse_bytes(text: str) -> int | None:
    """Bytes: `500000000`, `10GiB`, `512M` (K, M, G, T are powers of 1024), or `none`."""
    if text.strip().lower() in NONE_WORDS:
        return None
    match = _BYTES.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size like 10GiB, 512MiB or 1000000 (or none)")
    return int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]


def limits_given(
    rate_limit: str | None,
    burst: str | None,
    max_queued_jobs: str | None,
    max_running_jobs: str | None,
    max_storage_bytes: str | None,
) -> dict[str, Any]:
    """The limits named on the command line, parsed (None: cleared)."""
    given: dict[str, Any] = {}
    if rate_limit is not None:
        rate = parse_number(rate_limit, integer=False)
        if rate == 0:
            raise typer.BadParameter("--rate-limit must be above 0 (or `none`)")
        given["rate_limit"] = rate
    if burst is not None:
        given["rate_burst"] = parse_number(burst, integer=True) or None
    if max_queued_jobs is not None:
        given["max_queued_jobs"] = parse_number(max_queued_jobs, integer=True)
    if max_running_jobs is not None:
        given["max_running_jobs"] = parse_number(max_running_jobs, integer=True)
    if max_storage_bytes is not None:
        given["max_storage_bytes"] = parse_bytes(max_storage_bytes)
    return given


@contextmanager
def database() -> Iterator[Any]:
    """A session on the farm's PostgreSQL; a service's refusal is one line and exit 1."""
    try:
        get_settings().require_database_url()
    except RuntimeError as exc:
        raise CliError(str(exc), USAGE) from None
    from app.services.errors import ServiceError
    from app.unit_of_work import session_scope

    try:
        with session_scope() as session:
            yield session
    except ServiceError as exc:
        raise CliError(exc.message, API_ERROR) from None


def tell_api_processes() -> None:
    from app.ratelimit import bump_generation

    if not bump_generation():
        seconds = get_settings().auth_cache_seconds
        say(f"warning: Redis not reached: API processes see this within {seconds:g} s")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; `-` for nothing."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def when(moment: datetime | None) -> str | None:
    return None if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def apply(work: Callable[[Any], T]) -> T:
    with database() as session:
        return work(session)


# The limit options shared by `tenants create` and `tenants set`.
RateOption = Annotated[
    str | None, typer.Option("--rate-limit", help="Requests per second (`none`: no limit).")
]
BurstOption = Annotated[
    str | None, typer.Option("--burst", help="Requests above the rate at once (default: 1 s).")
]
QueuedOption = Annotated[
    str | None, typer.Option(help="Jobs queued or running at once (`none`: no limit).")
]
RunningOption = Annotated[
    str | None, typer.Option(help="Jobs running at once; the rest wait (`none`: no limit).")
]
StorageOption = Annotated[
    str | None, typer.Option(help="Bytes of files, e.g. 10GiB (`none`: no limit).")
]


def _tenant_json(use: Any) -> dict[str, Any]:
    tenant = use.tenant
    return {
        "name": tenant.name,
        "id": tenant.id,
        "rate_limit": tenant.rate_limit,
        "rate_burst": tenant.rate_burst,
        "max_queued_jobs": tenant.max_queued_jobs,
        "max_running_jobs": tenant.max_running_jobs,
        "max_storage_bytes": tenant.max_storage_bytes,
        "disabled_at": tenant.disabled_at.isoformat() if tenant.disabled_at else None,
        "created_at": tenant.created_at.isoformat(),
        "queued_jobs": use.queued_jobs,
        "running_jobs": use.running_jobs,
        "storage_bytes": use.storage_bytes,
    }


@tenants_cli.command("create")
def create(
    name: str,
    rate_limit: RateOption = None,
    burst: BurstOption = None,
    max_queued_jobs: QueuedOption = None,
    max_running_jobs: RunningOption = None,
    max_storage_bytes: StorageOption = None,
) -> None:
    """A new tenant with these limits (none by default); exit 1 if NAME exists."""
    limits = limits_given(rate_limit, burst, max_queued_jobs, max_running_jobs, max_storage_bytes)
    from app.services.tenants import create_tenant

    apply(lambda session: create_tenant(session, name, limits))
    say(f"tenant {name} created")


@tenants_cli.command("set")
def set_limits(
    name: str,
    rate_limit: RateOption = None,
    burst: BurstOption = None,
    max_queued_jobs: QueuedOption = None,
    max_running_jobs: RunningOption = None,
    max_storage_bytes: StorageOption = None,
) -> None:
    """Change the limits given (`none` clears one); the API applies them at once."""
    limits = limits_given(rate_limit, burst, max_queued_jobs, max_running_jobs, max_storage_bytes)
    if not limits:
        raise CliError("no limit given", USAGE, "see `modelfarm tenants set --help`")
    from app.services import tenants

    apply(lambda session: tenants.set_limits(session, tenants.get_tenant(session, name), limits))
    tell_api_processes()
    say(
        f"tenant {name}: "
        + ", ".join(f"{k} {'none' if v is None else v}" for k, v in limits.items())
    )


def _disable(name: str, disabled: bool) -> None:
    from app.services import tenants

    apply(
        lambda session: tenants.set_disabled(session, tenants.get_tenant(session, name), disabled)
    )
    tell_api_processes()
    say(f"tenant {name} {'disabled: its keys answer 403' if disabled else 'enabled'}")


@tenants_cli.command("disable")
def disable(name: str) -> None:
    """Refuse every request of the tenant's keys (403 `tenant_disabled`) from now on."""
    _disable(name, True)


@tenants_cli.command("enable")
def enable(name: str) -> None:
    """Let a disabled tenant's keys in again."""
    _disable(name, False)


@tenants_cli.command("list")
def list_tenants(as_json: JsonFlag = False) -> None:
    """Tenants with their limits and what they use now (jobs queued, running; bytes stored)."""
    from app.services.tenants import list_tenants as read

    found = [_tenant_json(use) for use in apply(read)]
    if as_json:
        print_json({"data": found})
        return
    headers = ["tenant", "rate/s", "burst", "queued", "running", "max jobs", "max running"]
    headers += ["stored bytes", "max bytes", "disabled"]
    keys = ["rate_limit", "rate_burst", "queued_jobs", "running_jobs", "max_queued_jobs"]
    keys += ["max_running_jobs", "storage_bytes", "max_storage_bytes"]
    table(
        headers,
        [[t["name"], *(t[k] for k in keys), (t["disabled_at"] or "")[:19] or None] for t in found],
    )
