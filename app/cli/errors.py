"""How the `modelfarm` command fails: one or two lines on stderr and an exit code, never a
traceback for a failure a user can cause (no farm, a wrong file, a bad argument, an error answer).

Exit codes (docs/api.md, "Command line"):
  0  done
  1  the API answered with an error, or the job failed or was cancelled
  2  usage: a bad argument, a missing file, no API key or no database configured
  3  the farm (its API, PostgreSQL or the broker) could not be reached
  4  the job succeeded but some of its items failed (see `modelfarm results JOB --errors`)
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click
import typer

from modelfarm_client import ApiError, FarmUnreachable

# Typer 0.29 parses with its own copy of click and raises typer.TyperException subclasses;
# older typers raise click's. Both carry `exit_code` (2 for usage errors) and `format_message`.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    getattr(typer, "TyperException", click.ClickException),
    click.ClickException,
)

OK, API_ERROR, USAGE, UNREACHABLE, ITEMS_FAILED, INTERRUPTED = 0, 1, 2, 3, 4, 130


class CliError(Exception):
    """An expected failure the command itself found: its message and the exit code to use."""

    def __init__(self, message: str, code: int = USAGE, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


def say(line: str) -> None:
    """A line on stderr, without rich: rich wraps at 80 columns when stderr is not a terminal."""
    print(line, file=sys.stderr, flush=True)


def run(command: Callable[..., Any]) -> int:
    """Run the click/typer command; every expected failure becomes a short message and a code."""
    try:
        result = command(standalone_mode=False)
        # click returns the code of a typer.Exit; a command that returns normally gives None.
        return result if isinstance(result, int) else OK
    except CliError as exc:
        _fail(str(exc), exc.hint)
        return exc.code
    except ApiError as exc:
        hint = "check MODELFARM_API_KEY (or DATA_DIR/farm.json)" if exc.status == 401 else None
        if exc.retry_after is not None:
            hint = f"try again in {exc.retry_after:g} s"
        _fail(f"{exc.message} ({exc.status} {exc.code})", hint)
        return API_ERROR
    except FarmUnreachable as exc:
        _fail(str(exc), "is the farm running? (`modelfarm up`, or set MODELFARM_API_URL)")
        return UNREACHABLE
    except PARSE_ERRORS as exc:
        return _parse_error(exc)
    except typer.Abort:
        _fail("aborted")
        return INTERRUPTED
    except KeyboardInterrupt:
        _fail("interrupted")
        return INTERRUPTED
    except BrokenPipeError:
        # `modelfarm jobs list | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except Exception as exc:
        known = _known_failure(exc)
        if known is None:
            raise  # a bug: its traceback is what a report needs
        message, code = known
        _fail(message)
        return code


def _parse_error(exc: Any) -> int:
    code: int = getattr(exc, "exit_code", USAGE)
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # `modelfarm jobs` alone: the group's help is the answer
        return code
    ctx = getattr(exc, "ctx", None)
    hint = f"see `{ctx.command_path} --help`" if code == USAGE and ctx is not None else None
    _fail(exc.format_message(), hint)
    return code


def _fail(message: str, hint: str | None = None) -> None:
    say(f"error: {message}")
    if hint:
        say(f"  {hint}")


def _known_failure(exc: Exception) -> tuple[str, int] | None:
    """Failures of the server-side commands (`migrate`, `keys create`, `api` ...) a user causes
    by configuration; looked up through sys.modules so that a client command never imports
    SQLAlchemy or pydantic just to name their exceptions."""
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.OperationalError):
        first = str(exc.orig or exc).strip().splitlines()[0]
        return f"cannot reach PostgreSQL: {first}", UNREACHABLE
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        problems = "; ".join(_setting_problem(e["loc"], e["msg"]) for e in exc.errors())
        return f"bad setting: {problems}", USAGE
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}", USAGE
    return None


def _setting_problem(loc: tuple[Any, ...], message: str) -> str:
    # A cross-field check (a model validator) has no field: its message names the settings.
    name = "_".join(str(part) for part in loc).upper()
    return f"MODELFARM_{name}: {message}" if name else message
