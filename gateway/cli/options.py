"""What every command shares: the ``--db`` and ``--json`` options, and how a
library error becomes ``Error: …`` plus ``Try: …`` with exit status 1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hermes_ledger.ledger import LedgerError

__all__ = ["LedgerCommandError", "db_option", "json_option", "reports_errors"]

F = TypeVar("F", bound=Callable[..., Any])


class LedgerCommandError(click.ClickException):
    """``Error: what happened`` then ``Try: what to do next``."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def format_message(self) -> str:
        return self.message if not self.hint else f"{self.message}\nTry: {self.hint}"


def reports_errors(fn: F) -> F:
    """Turn LedgerErrors raised by the library into LedgerCommandError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LedgerError as exc:
            raise LedgerCommandError(str(exc), exc.hint) from exc

    return wrapper  # type: ignore[return-value]


db_option = click.option(
    "--db",
    "db",
    envvar="HERMES_LEDGER_DB",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ledger file. Default: $HERMES_HOME/ledger.db (env HERMES_LEDGER_DB).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
