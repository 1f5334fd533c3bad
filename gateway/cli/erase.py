"""``hermes-ledger erase``: forget a subject's personal content (docs/erasure.md)."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from hermes_ledger.gateway.cli.options import (
    db_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_report
from hermes_ledger.gateway.config.paths import resolve_ledger
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.projections.erasing import erase_ledger

__all__ = ["erase_cmd"]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without passwd entry)
        return "unknown"


@click.command("erase")
@postgres_ready
@db_option
@click.option("--user", "user_id", metavar="ID", help="Erase a user (by user id).")
@click.option("--session-key", metavar="KEY", help="Erase every session of a session key.")
@click.option("--session-id", metavar="ID", help="Erase one session.")
@click.option("--yes", is_flag=True, help="Erase (without it: a dry run that changes nothing).")
@click.option(
    "--requested-by",
    metavar="WHO",
    help="Who asked for the erasure, recorded in the log (default: the OS user).",
)
@json_option
@reports_errors
def erase_cmd(
    db: Path | str | None,
    user_id: str | None,
    session_key: str | None,
    session_id: str | None,
    yes: bool,
    requested_by: str | None,
    as_json: bool,
) -> None:
    """Forget a user's, key's or session's content.

    \b
    Message text, tool calls and results, user and chat names and flush details
    of the events in scope become "[erased]" everywhere: the log's reads,
    transcripts, sessions, search, exports, and the database file itself (its
    WAL, free pages and full-text index). The log stays append-only and `verify`
    still passes: an auditable subject_erased event (scope, who, when; no
    content) is appended.

    \b
    --user ID: the sessions ID started (every message, all roles) and ID's own
    messages in other sessions. --session-key KEY: every session of KEY.
    --session-id ID: that session. Give exactly one.

    \b
    Without --yes, prints what would be forgotten and changes nothing. On a
    PostgreSQL ledger (--db postgresql://…) the same, connected as a member of
    hermes_ledger_eraser or the database owner.
    """
    given = [
        (kind, value)
        for kind, value in (("user", user_id), ("session_key", session_key),
                            ("session_id", session_id))
        if value is not None
    ]  # fmt: skip
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --user, --session-key or --session-id"
            + (f" (got {len(given)})" if given else "")
        )
    kind, value = given[0]
    if not value.strip():
        raise click.UsageError(f"--{kind.replace('_', '-')} needs a non-empty value")
    who = requested_by if requested_by is not None else _os_user()
    if not who.strip():
        raise click.UsageError("--requested-by needs a non-empty value")
    scope = ErasureScope(kind, value)  # type: ignore[arg-type]
    target = resolve_ledger(db)
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions.postgres import open_postgres

        with open_postgres(target) as log:  # attached projections are scrubbed too
            report = log.erase(scope, requested_by=who, dry_run=not yes)
    else:
        report = erase_ledger(target, scope, requested_by=who, dry_run=not yes)
    print_report(report, as_json)
