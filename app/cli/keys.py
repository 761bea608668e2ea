"""`modelfarm keys create|list|revoke` and `modelfarm usage`: read PostgreSQL directly."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer

from app.cli.errors import USAGE, CliError, say
from app.cli.tenants import (
    JsonFlag,
    apply,
    database,
    keys_cli,
    parse_duration,
    print_json,
    table,
    tell_api_processes,
    tenants_cli,
    when,
)


@keys_cli.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name (created, with no limits, if new).")] = (
        "default"
    ),
    expires_in: Annotated[
        str | None, typer.Option(help="The key stops working after this long: 30d, 12h, 15m.")
    ] = None,
) -> None:
    """Print a new API key for TENANT (shown once; only its hash is stored)."""
    lifetime = parse_duration(expires_in) if expires_in else None
    from app.services.keys import create_api_key
    from app.services.tenants import get_or_create_tenant

    key = apply(
        lambda session: create_api_key(session, get_or_create_tenant(session, tenant), lifetime)
    )
    print(key)


@keys_cli.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Keys by their prefix (never the key or its hash), oldest first."""
    from app.services.keys import list_keys

    def read(session: Any) -> list[dict[str, Any]]:
        return [
            {
                "prefix": key.prefix,
                "tenant": name,
                "created_at": key.created_at,
                "last_used_at": key.last_used_at,
                "expires_at": key.expires_at,
                "revoked_at": key.revoked_at,
            }
            for key, name in list_keys(session, tenant)
        ]

    found = apply(read)
    if as_json:
        print_json({"data": found})
        return
    columns = ("created_at", "last_used_at", "expires_at", "revoked_at")
    table(
        ("prefix", "tenant", "created", "last used", "expires", "revoked"),
        [[k["prefix"], k["tenant"], *(when(k[c]) for c in columns)] for k in found],
    )
    if not found:
        say("no keys" + (f" for tenant {tenant}" if tenant else ""))


@keys_cli.command("revoke")
def keys_revoke(prefix: str) -> None:
    """Revoke the key with this prefix (as `keys list` shows it; or the whole key): it answers
    401 from now on."""
    from app.services.keys import revoke_key

    revoked = apply(lambda session: revoke_key(session, prefix).prefix)
    tell_api_processes()
    say(f"key {revoked} revoked")


def _day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a date like 2026-12-01", param_hint=option
        ) from None


def usage(
    tenant: Annotated[str | None, typer.Option(help="One tenant (default: every tenant).")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="First day, YYYY-MM-DD (UTC).")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (default today).")
    ] = None,
    group_by: Annotated[
        str, typer.Option(help="day, model, job_type, or several: day,model.")
    ] = "day",
    as_json: JsonFlag = False,
) -> None:
    """Jobs, items, failed items, tokens and seconds used, summed by day, model or job type (as
    GET /v1/usage answers; without --tenant, each tenant's rows)."""
    from app.services import tenants
    from app.services import usage as usage_service
    from app.services.errors import InvalidRequest

    try:
        groups = usage_service.parse_group_by(group_by)
        first, last = usage_service.date_range(_day(start, "--from"), _day(end, "--to"))
    except InvalidRequest as exc:
        raise CliError(exc.message, USAGE) from None
    with database() as session:
        owner = tenants.get_tenant(session, tenant) if tenant else None
        rows = usage_service.usage(session, owner, first, last, groups)
    fields = ["date", "model", "job_type", "jobs", "items", "failed_items", "tokens"]
    fields += ["completion_tokens", "cpu_seconds", "gpu_seconds"]
    shown = ([] if tenant else ["tenant"]) + list(fields)
    data = [{f: getattr(r, f) for f in shown} for r in rows]
    if as_json:
        print_json({"data": data})
        return
    shown = [
        f
        for f in shown
        if f not in ("date", "model", "job_type") or f.replace("date", "day") in groups
    ]
    table(shown, [[row[f] for f in shown] for row in data])
    if not data:
        say(f"no jobs from {first} to {last}")


def register(cli: typer.Typer) -> None:
    cli.add_typer(tenants_cli, name="tenants")
    cli.add_typer(keys_cli, name="keys")
    cli.command("usage")(usage)
