"""``hermes-ledger migrate --to postgresql://…``: copy the ledger into PostgreSQL
(docs/postgres.md, "Migrating")."""

from __future__ import annotations

from pathlib import Path

import click

from hermes_ledger.gateway.cli.options import (
    LedgerCommandError,
    LedgerTarget,
    count_range,
    json_option,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_report, progress_bar
from hermes_ledger.gateway.config.paths import resolve_ledger_path

__all__ = ["migrate_cmd"]


@click.command("migrate")
@click.option(
    "--to",
    "dsn",
    required=True,
    metavar="DSN",
    help="The PostgreSQL database to copy into (postgresql://user@host/dbname).",
)
@click.option(
    "--from",
    "source",
    envvar="HERMES_LEDGER_DB",
    type=LedgerTarget(),  # a postgresql:// URI here is refused (a SQLite file only)
    help="The SQLite ledger to copy. Default: $HERMES_HOME/ledger.db (env HERMES_LEDGER_DB).",
)
@click.option(
    "--batch",
    type=count_range(1),
    default=5000,
    show_default=True,
    help="Events per committed batch.",
)
@json_option
@reports_errors
def migrate_cmd(dsn: str, source: Path | None, batch: int, as_json: bool) -> None:
    """Copy the ledger into a PostgreSQL database.

    \b
    Every event and payload row is copied as it is (positions, ids, times and
    hashes byte for byte; erased content stays erased), in committed batches,
    then the copy is verified: the chain end to end, the counts and the head
    hash against the source. Interrupted, run it again: it continues after what
    the database already holds, if that is the start of this ledger. A database
    holding another log is refused, and nothing is written.
    """
    if not dsn.strip():
        raise click.UsageError("--to needs a PostgreSQL connection string")
    try:  # the postgres extra (psycopg): imported here, so the CLI starts without it
        from hermes_ledger.ledger.postgres.migrate import copy_ledger
    except ImportError as exc:
        raise LedgerCommandError(
            f"migrate needs the PostgreSQL driver ({exc})",
            hint="pip install 'hermes-ledger[postgres]'",
        ) from None
    with progress_bar("migrating", show=not as_json) as progress:
        report = copy_ledger(resolve_ledger_path(source), dsn, batch=batch, progress=progress)
    print_report(report, as_json)
