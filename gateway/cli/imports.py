"""``hermes-ledger import|backfill``: restoring an export, importing a Hermes home.

Each command parses its options, calls one library function (``ledger.restore``,
``gateway.hermes.importing``) and prints the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hermes_ledger.gateway.cli.options import db_option, json_option, postgres_ready, reports_errors
from hermes_ledger.gateway.cli.output import print_json, print_report, progress_bar
from hermes_ledger.gateway.config import paths
from hermes_ledger.gateway.config.paths import resolve_ledger_path
from hermes_ledger.ledger import LedgerError, open_log
from hermes_ledger.ledger.restore import import_jsonl

__all__ = ["backfill_cmd", "import_cmd"]


# -- import ----------------------------------------------------------------------


@click.command("import")
@postgres_ready
@db_option
@click.argument(
    "source",
    required=False,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
)
@click.option(
    "--from-hermes",
    "hermes_home",
    metavar="PATH",
    type=click.Path(path_type=Path),
    help="Import a Hermes home (its state.db sessions and routing) instead of an export.",
)
@click.option(
    "--erasures-from",
    metavar="LEDGER",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Re-apply the erasures this ledger recorded to the imported events.",
)
@json_option
@reports_errors
def import_cmd(
    db: Path | str | None,
    source: str | None,
    hermes_home: Path | None,
    erasures_from: Path | None,
    as_json: bool,
) -> None:
    """Restore a JSONL export, or import a Hermes home.

    \b
    SOURCE is a file written by `hermes-ledger export` (gzip is recognised), or
    - (the default) for stdin. Every event keeps its position, id, time and hash;
    the hash chain and the manifest are checked first, and if anything is wrong
    nothing is written.

    \b
    --from-hermes PATH reads a Hermes home (PATH holds state.db, e.g. ~/.hermes)
    without changing it, and appends its sessions, messages, usage and ends to the
    ledger, one stream per session key. Importing again appends only what is new.
    Problems that leave something out are printed as warnings on stderr.

    \b
    --db postgresql://… restores the export into an empty PostgreSQL ledger (the
    same checks, the same rows, --erasures-from re-applied), or imports a Hermes
    home into the PostgreSQL ledger (--from-hermes: the same events as into a file).
    """
    if hermes_home is not None:
        if source is not None:
            raise click.UsageError("give either SOURCE or --from-hermes, not both")
        _import_hermes(hermes_home, db, as_json)
        return
    if source is None:
        source = "-"
    if source == "-" and sys.stdin.isatty():
        raise LedgerError(
            "no export to read: SOURCE is stdin, and stdin is a terminal",
            hint="hermes-ledger import FILE, or pipe one in: "
            "hermes-ledger export --db OLD.db | hermes-ledger import --db NEW.db",
        )
    # The export's length is only known at its manifest line: the bar counts events.
    with progress_bar("importing", show=not as_json) as progress:
        counted = None if progress is None else (lambda count: progress(count, -1))
        if isinstance(db, str):  # LedgerTarget: a str is a postgresql:// URI
            from hermes_ledger.gateway.sessions.postgres import restore_export

            erasures = _recorded_erasures(erasures_from)  # read first: a bad one writes nothing
            result, path = restore_export(db, source, stdin=sys.stdin.buffer, progress=counted)
            if erasures_from is not None and erasures:
                _reapply_erasures(db, erasures_from, erasures)
        else:
            path = str(resolve_ledger_path(db))
            result = import_jsonl(
                path, source, stdin=sys.stdin.buffer, progress=counted,
                erasures_from=erasures_from,
            )  # fmt: skip
    if as_json:
        restored = {
            "ledger": path,
            "count": result.count,
            "last_position": result.last_position,
            "last_hash": result.last_hash,
        }
        print_json(restored)
        return
    if not result.count:
        click.echo(f"Imported 0 events into {path} (the export holds none)")
        return
    noun = "event" if result.count == 1 else "events"
    click.echo(
        f"Imported {result.count} {noun} into {path}; hash chain verified up to "
        f"position {result.last_position} (last hash {result.last_hash})"
    )


def _recorded_erasures(source: Path | None) -> list[tuple[object, ...]]:
    if source is None:
        return []
    from hermes_ledger.ledger.postgres.reapply import recorded_erasures

    return recorded_erasures(source)


def _reapply_erasures(dsn: str, source: Path, erasures: list[tuple[object, ...]]) -> None:
    from hermes_ledger.ledger.postgres import PostgresLog
    from hermes_ledger.ledger.postgres.reapply import reapply_erasures

    with PostgresLog.open(dsn) as log:
        reapply_erasures(log, source, erasures)


def _import_hermes(hermes_home: Path, db: Path | str | None, as_json: bool) -> None:
    """``import --from-hermes`` and ``backfill``: import a Hermes home into the ledger
    ``db`` (a file, or a PostgreSQL URI; None: the default ledger), print the report."""
    from hermes_ledger.gateway.config.ledger_section import RunnerSettings
    from hermes_ledger.gateway.hermes.importing import import_hermes_home, open_hermes_home

    # A path that is not a Hermes home is refused before the ledger is touched.
    with (
        open_hermes_home(hermes_home) as home,
        open_log(db if isinstance(db, str) else resolve_ledger_path(db)) as led,
        progress_bar("importing", show=not as_json) as progress,
    ):
        # The home's own ledger.redact_tools, as live capture of that home applies it,
        # so an import and the plugin store the same events.
        redact = RunnerSettings.load(home.path).redact_tools
        report = import_hermes_home(led, home, progress=progress, redact_tools=redact)
    print_report(report, as_json)


# -- backfill --------------------------------------------------------------------


@click.command("backfill")
@postgres_ready
@db_option
@json_option
@reports_errors
def backfill_cmd(db: Path | str | None, as_json: bool) -> None:
    """Import this Hermes home's history from before the plugin.

    \b
    The same as `hermes-ledger import --from-hermes $HERMES_HOME`: reads the
    home's state.db (never writing it) and appends its sessions, messages, usage
    and ends to the ledger (a file, or --db postgresql://…). With the plugin
    enabled, `hermes ledger backfill` (or `hermes -p PROFILE ledger backfill`)
    imports the home Hermes is using into the ledger the plugin records it in.
    Running it again appends only what is new.
    """
    from hermes_ledger.gateway.hermes.importing import HermesImportError

    home = paths.hermes_home()
    try:
        _import_hermes(home, db, as_json)
    except HermesImportError as exc:
        if exc.hint != HermesImportError.hint:
            raise
        # The generic hint is about --from-hermes PATH; here the path is the home in use.
        raise LedgerError(
            str(exc),
            hint="run it in the Hermes home whose history to import: set HERMES_HOME, or "
            "`hermes -p PROFILE ledger backfill` (Hermes creates state.db when it first runs)",
        ) from None
