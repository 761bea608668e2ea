"""The command line: `modelfarm` and its subcommands.

`commands.py` holds the process commands (`up`, `api`, `worker`, `sweeper`, `flower`,
`migrate`) and registers the client commands of the other modules here. The console script
(`modelfarm = "app.cli:main"`) and `python -m app.cli` both start at `main`."""

from app.cli.commands import cli, main

__all__ = ["cli", "main"]
