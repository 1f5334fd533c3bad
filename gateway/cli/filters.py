"""The options that narrow ``sessions`` and ``search``: their value types and the
``--platform`` / ``--user`` options both commands take.

A bad value is a usage error (exit status 2) naming the option, before the ledger
is opened.
"""

from __future__ import annotations

from typing import Any

import click

from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.query import parse_time

__all__ = ["TIME", "VALUE", "platform_option", "user_option"]


class _Time(click.ParamType):
    """A time on the command line (``parse_time``: ISO-8601, no zone meaning UTC, or
    a duration ago like ``2h``), converted to ledger time text."""

    name = "time"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_time(str(value))
        except LedgerError as exc:
            self.fail(f"{exc} ({exc.hint})" if exc.hint else str(exc), param, ctx)


class _Value(click.ParamType):
    """Text that is not empty (an empty filter value is a mistake, not "match all")."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():
            self.fail("the value is empty", param, ctx)
        return text


TIME = _Time()
VALUE = _Value()

platform_option = click.option(
    "--platform", type=VALUE, metavar="NAME", help="Only this platform (telegram, discord…)."
)
user_option = click.option(
    "--user",
    type=VALUE,
    metavar="USER",
    help="Only sessions of this user: the origin's user id, or its user name (any case).",
)
