"""The options that narrow ``sessions`` and ``search``: the type of a filter's value
and the ``--platform`` / ``--user`` options both commands take (their times are
``times.TIME``).

A bad value is a usage error (exit status 2) naming the option, before the ledger
is opened.
"""

from __future__ import annotations

from typing import Any

import click

__all__ = ["VALUE", "platform_option", "user_option"]


class _Value(click.ParamType):
    """Text that is not empty (an empty filter value is a mistake, not "match all")."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():
            self.fail("the value is empty", param, ctx)
        return text


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
