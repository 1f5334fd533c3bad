"""What every command shares: the ``--db`` and ``--json`` options, the type of
every option that takes seconds, and how a library error becomes ``Error: …``
plus ``Try: …`` with exit status 1 (2 for bad input: a usage error)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.backend import is_dsn
from hermes_ledger.ledger.errors import InvalidInputError

__all__ = [
    "SQLITE_MAX_INT",
    "LedgerCommandError",
    "LedgerTarget",
    "LedgerUsageError",
    "Seconds",
    "count_range",
    "db_option",
    "hooks_dir_option",
    "json_option",
    "postgres_commands",
    "postgres_ready",
    "reports_errors",
]

F = TypeVar("F", bound=Callable[..., Any])


class LedgerCommandError(click.ClickException):
    """``Error: what happened`` then ``Try: what to do next``."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def format_message(self) -> str:
        return self.message if not self.hint else f"{self.message}\nTry: {self.hint}"


class LedgerUsageError(LedgerCommandError):
    """Bad input the library refused (an unknown ``--type``, an unreadable time):
    the same ``Error:`` / ``Try:`` lines, and exit status 2 like click's usage errors."""

    exit_code = 2


def reports_errors(fn: F) -> F:
    """Turn LedgerErrors raised by the library into LedgerCommandError (exit 1), and
    InvalidInputErrors into LedgerUsageError (exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InvalidInputError as exc:
            raise LedgerUsageError(str(exc), exc.hint) from exc
        except LedgerError as exc:
            raise LedgerCommandError(str(exc), exc.hint) from exc

    return wrapper  # type: ignore[return-value]


_POSTGRES_READY = "hermes_ledger_postgres_ready"


def postgres_ready(fn: F) -> F:
    """Mark a command's function as working on a PostgreSQL ledger: its ``--db`` (or
    ``HERMES_LEDGER_DB``) may be a ``postgresql://`` URI, handed to it as a ``str``.
    Every other command refuses a URI in ``LedgerTarget``, before it runs."""
    setattr(fn, _POSTGRES_READY, True)
    return fn


def _is_postgres_ready(command: click.Command | None) -> bool:
    return bool(getattr(getattr(command, "callback", None), _POSTGRES_READY, False))


def postgres_commands(group: click.Group) -> list[str]:
    """The names of ``group``'s commands (and subcommands) that work on a PostgreSQL
    ledger, sorted."""
    names: list[str] = []
    for name, command in sorted(group.commands.items()):
        if _is_postgres_ready(command):
            names.append(name)
        if isinstance(command, click.Group):
            names += [f"{name} {sub}" for sub in postgres_commands(command)]
    return names


def _command_name(ctx: click.Context) -> str:
    """The command as typed after the program's name (``hooks list``)."""
    names: list[str] = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names)) or (ctx.info_name or "this command")


class LedgerTarget(click.Path):
    """``--db``: a SQLite ledger file (a ``Path``), or a PostgreSQL connection URI
    (``postgresql://`` / ``postgres://``, passed on unchanged as a ``str``) for a
    command marked ``postgres_ready``. Any other command given a URI stops here, the
    one place that check is made: ``Error: <command> does not work on a PostgreSQL
    ledger yet`` and ``Try:`` the commands that do (exit 1), before anything is opened
    or written. The URI is never echoed (it may hold a password)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and is_dsn(value):
            if ctx is not None and not _is_postgres_ready(ctx.command):
                ready = postgres_commands(ctx.find_root().command)  # type: ignore[arg-type]
                raise LedgerCommandError(
                    f"{_command_name(ctx)} does not work on a PostgreSQL ledger yet",
                    hint="on a PostgreSQL ledger use "
                    + ", ".join(ready)
                    + "; for this command pass --db with a SQLite ledger file",
                )
            return value
        return super().convert(value, param, ctx)


db_option = click.option(
    "--db",
    "db",
    envvar="HERMES_LEDGER_DB",
    type=LedgerTarget(),
    help="Ledger file, or a postgresql:// URI for the commands that work on one."
    " Default: $HERMES_HOME/ledger.db (env HERMES_LEDGER_DB).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
hooks_dir_option = click.option(
    "--hooks-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the hooks the ledger delivers live (one directory each). Default:"
    " $HERMES_HOME/hooks, or $HERMES_HOME/ledger-hooks when the Hermes plugin is enabled"
    " (Hermes delivers hooks/ then).",
)


SQLITE_MAX_INT = 2**63 - 1
"""The largest integer SQLite stores: every int option's upper bound (a bigger
one is a usage error, not an OverflowError from the driver)."""


def count_range(min: int = 0) -> click.IntRange:
    """An int option (position, limit): ``min`` up to SQLite's largest integer."""
    return click.IntRange(min=min, max=SQLITE_MAX_INT)


class Seconds(click.ParamType):
    """A duration in seconds: a finite number in ``[min, max]`` (by default 0.01 s to
    one day). ``nan``, ``inf`` and out-of-range values are usage errors (exit 2):
    ``float()`` accepts them, and a wait of ``nan`` seconds returns at once (a busy
    loop) while ``inf`` overflows the first timed wait."""

    name = "seconds"

    def __init__(self, min: float = 0.01, max: float = 86_400.0) -> None:
        self.min = min
        self.max = max

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SECONDS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float) and math.isfinite(value) and self.min <= value <= self.max:
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        if not self.min <= seconds <= self.max:
            self.fail(f"{value} is not between {self.min:g} and {self.max:g} seconds", param, ctx)
        return seconds

    def __repr__(self) -> str:
        return f"Seconds({self.min:g}..{self.max:g})"
