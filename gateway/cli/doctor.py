"""``hermes-ledger doctor``: what an operator monitors, checked once."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import click

from hermes_ledger.gateway.cli.options import (
    LedgerCommandError,
    Seconds,
    db_option,
    hooks_dir_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_json
from hermes_ledger.gateway.cli.run import config_option, resolve_home
from hermes_ledger.gateway.config.paths import resolve_ledger
from hermes_ledger.gateway.health import DEFAULT_STUCK_AFTER, diagnose

__all__ = ["doctor_cmd"]

_MARKS = {"ok": "✓", "warn": "!", "fail": "✗"}
_ASCII_MARKS = {"ok": "+", "warn": "!", "fail": "X"}


def _marks() -> dict[str, str]:
    """✓ ! ✗ on a UTF-8 stdout, ASCII otherwise."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return _MARKS if encoding == "utf8" else _ASCII_MARKS


@click.command("doctor", short_help="Check what an operator monitors.")
@postgres_ready
@db_option
@config_option
@hooks_dir_option
@click.option(
    "--stuck-after",
    type=Seconds(min=1, max=30 * 86_400),
    default=DEFAULT_STUCK_AFTER.total_seconds(),
    show_default=True,
    help="Seconds after which an unfinished close, an overdue session or an undrained spool"
    " record needs attention.",
)
@json_option
@reports_errors
def doctor_cmd(
    db: Path | str | None,
    config_home: Path | None,
    hooks_dir: Path | None,
    stuck_after: float,
    as_json: bool,
) -> None:
    """Check what an operator monitors; exit 1 if any needs attention.

    \b
    ledger       the hash chain, triggers and indexes, SQLite's integrity check
    anchors      the anchors in $HERMES_HOME/ledger.anchors still hold
    projections  the read models are at the head of the log
    hooks        every hook in the hooks directory loads
    deliveries   no dead letters
    closes       no close stuck, no session long past its deadline
    spool        the Hermes plugin's spool is drained
    file_modes   the ledger, its key, anchors, hooks and spool are owner-only
    \b
    On a PostgreSQL ledger (--db postgresql://…): server (version, role, a
    standby), ledger (the chain and payloads, schema version, append-only
    triggers), anchors, projections, hooks, deliveries, closes, spool,
    privileges (instead of the ledger file's modes: the role may read and
    append, PUBLIC holds nothing, only the owner may change events) and
    file_modes (the key, anchors, hooks and spool in $HERMES_HOME). SQLite's
    page integrity check has no meaning there and is not run.
    \b
    Each check is ok, warn (needs attention, the service still works) or fail
    (broken, refused or tampered with). Exit status 0 when every check is ok,
    1 when any warns or fails (a ledger that cannot be opened also prints
    Error:/Try:). Nothing is repaired or written.
    """
    report = diagnose(
        resolve_ledger(db),
        home=resolve_home(config_home),
        hooks_dir=hooks_dir,
        stuck_after=timedelta(seconds=stuck_after),
    )
    if as_json:
        print_json(report.to_dict())
    else:
        marks = _marks()
        width = max(len(c.name) for c in report.checks)
        for check in report.checks:
            click.echo(f"{marks[check.status]} {check.name.ljust(width)}  {check.detail}")
            if check.hint:
                click.echo(f"  {' ' * width}  Try: {check.hint}")
        for what in report.not_applicable:
            click.echo(f"- not on PostgreSQL: {what}")
        click.echo(report.summary())
        if report.unopened is not None:
            raise LedgerCommandError(report.unopened.detail, report.unopened.hint)
    if not report.ok:
        sys.exit(1)
