"""`modelfarm health`: the container health check of a farm process (docker-compose.yml).

Exit 0 when PostgreSQL and the broker answer and, with --worker, that Celery worker answers a
ping over the broker; otherwise one line on stderr and exit 3 (the farm could not be reached),
which Docker counts as a failed check."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.errors import UNREACHABLE, USAGE, CliError


def health(
    worker: Annotated[
        str | None,
        typer.Option(help="Also ask this Celery worker to answer, e.g. cpu@$HOSTNAME."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 5.0,
) -> None:
    """Exit 0 when the database, the broker (and the named worker) answer: a health check."""
    from app.broker.dispatch import broker_reachable, worker_answers
    from app.config import get_settings
    from app.db import database_reachable

    settings = get_settings()
    try:
        settings.require_database_url()
        settings.require_broker_url()
    except RuntimeError as exc:
        raise CliError(str(exc), USAGE) from None
    if not database_reachable():
        raise CliError("the database does not answer", UNREACHABLE)
    if not broker_reachable():
        raise CliError("the broker does not answer", UNREACHABLE)
    if worker and not worker_answers(worker, timeout):
        raise CliError(f"worker {worker} did not answer a ping", UNREACHABLE)
    print("ok")


def register(cli: typer.Typer) -> None:
    cli.command()(health)
