"""``hermes-ledger prune --older-than 90d``: a one-off retention, a dry run first.

Forgets the content recorded as happening before the cutoff (optionally only in
one platform's or one chat type's sessions) through ``Ledger.erase``, which records the
erasure as a ``subject_erased`` event; metadata and usage stay. Without ``--yes``
it only shows what would go and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hermes_ledger.gateway.cli.options import (
    db_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_json
from hermes_ledger.gateway.cli.times import TIME
from hermes_ledger.gateway.config.paths import resolve_ledger
from hermes_ledger.gateway.sessions.retention import prune
from hermes_ledger.gateway.sessions.sources import CHAT_TYPES, InvalidSourceError, parse_platform
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import parse_utc
from hermes_ledger.ledger.erasure import ErasureReport

__all__ = ["prune_cmd"]


class _PlatformName(click.ParamType):
    """A platform name as sessions store it (``telegram``, a plugin's ``irc``)."""

    name = "platform"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return str(parse_platform(value))
        except InvalidSourceError as exc:
            self.fail(str(exc), param, ctx)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _describe(report: ErasureReport) -> list[str]:
    where = report.scope.describe()
    if report.dry_run and not report.payloads:
        return [f"Nothing to forget: no content is left in {where}."]
    what = (
        f"the content of {_plural(len(report.sessions), 'session')}"
        f" ({_plural(report.messages, 'message')}, {_plural(report.payloads, 'event')}"
        f" with content): {where}"
    )
    if report.dry_run:
        return [
            f"Would forget {what}:",
            *(f"  {session_id}" for session_id in report.sessions),
            "Nothing was changed; run again with --yes to forget it.",
        ]
    lines = [
        f"Forgot {what}.",
        f"Recorded as event {report.position} (subject_erased, requested by"
        f" {report.requested_by}); session rows, times, token counts and costs are kept.",
    ]
    if not report.checkpointed:
        lines.append(
            "Note: a reader held an old snapshot, so the WAL may still hold old pages;"
            " run the same prune again later to empty it."
        )
    return lines


@click.command("prune", short_help="Forget content older than a cutoff; a dry run unless --yes.")
@postgres_ready
@db_option
@click.option(
    "--older-than",
    "older_than",
    type=TIME,
    required=True,
    metavar="AGE",
    help="Content from before this: a duration ago (90d, 12w) or a time (2026-01-01).",
)
@click.option("--platform", type=_PlatformName(), help="Only sessions on this platform.")
@click.option("--chat-type", type=click.Choice(CHAT_TYPES), help="Only sessions of this chat type.")
@click.option("--yes", is_flag=True, help="Forget it (without: a dry run that writes nothing).")
@click.option(
    "--requested-by",
    default="hermes-ledger prune",
    show_default=True,
    help="Who asked, recorded in the erasure event.",
)
@json_option
@reports_errors
def prune_cmd(
    db: Path | str | None,
    older_than: str,
    platform: str | None,
    chat_type: str | None,
    yes: bool,
    requested_by: str,
    as_json: bool,
) -> None:
    """Forget old message content (a one-off retention); a dry run unless --yes.

    \b
    Forgets what was said (message text, tool calls, names) before --older-than,
    in every session or only in those on --platform or of --chat-type, open
    sessions included; it reads "[erased]" afterwards. The events, session rows, times, token counts
    and costs stay, so usage reports give the same figures. Each prune with --yes
    is recorded as a subject_erased event. The ledger's `retention:` config
    (ledger section of config.yaml) does this periodically in `run`. On a
    PostgreSQL ledger (--db postgresql://…) the same, connected as a member of
    hermes_ledger_eraser or the database owner.
    """
    target = resolve_ledger(db)
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions.postgres import open_postgres

        opened: Any = open_postgres(target)  # attached projections are scrubbed too
    else:
        opened = Ledger.open_existing(target)
    with opened as led:
        report = prune(
            led,
            parse_utc(older_than),
            platform=platform,
            chat_type=chat_type,
            requested_by=requested_by,
            dry_run=not yes,
        )
    if as_json:
        print_json(report.to_dict())
        return
    for line in _describe(report):
        click.echo(line)
