"""``hermes-ledger events|export|sql|schema``: the commands that work on the log.

Each command parses its options, calls one library function (``ledger.query``,
``ledger.export``, ``ledger.restore``, ``ledger.events``) and prints the result.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click

from hermes_ledger.gateway.cli.options import (
    LedgerCommandError,
    Seconds,
    count_range,
    db_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import (
    print_csv,
    print_json,
    print_json_line,
    print_json_rows,
    print_table,
    progress_bar,
)
from hermes_ledger.gateway.cli.times import TIME, Zone, recorded_option, show_time, tz_option
from hermes_ledger.gateway.config.paths import resolve_ledger
from hermes_ledger.ledger import Ledger, Recorded
from hermes_ledger.ledger.events import json_schema
from hermes_ledger.ledger.export import FORMATS, export
from hermes_ledger.ledger.query import (
    DEFAULT_SQL_TIMEOUT,
    EventFilter,
    QueryResult,
    list_events,
    run_sql,
)
from hermes_ledger.ledger.sql import business_time_of

__all__ = ["events_cmd", "export_cmd", "schema_cmd", "sql_cmd"]

F = TypeVar("F", bound=Callable[..., Any])


def filter_options(fn: F) -> F:
    """The options that choose events (``events`` and ``export``)."""
    options = [
        click.option("--session-key", help="Only this session key (the stream)."),
        click.option("--session-id", help="Only this session (transcript) id."),
        click.option(
            "--type", "types", multiple=True, metavar="TYPE", help="Only this event type (repeat)."
        ),
        click.option(
            "--since",
            type=TIME,
            help="Happened at or after TIME (ISO-8601, 2h, 7d, today…; see --recorded).",
        ),
        click.option("--until", type=TIME, help="Happened before TIME."),
        recorded_option,
        click.option("--from", "from_position", type=count_range(1), help="From this position on."),
        click.option("--to", "to_position", type=count_range(1), help="Up to this position."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _event_filter(options: dict[str, Any]) -> EventFilter:
    """The filter ``filter_options`` describe (``--since``/``--until`` are already
    UTC text: the ``TIME`` type read them)."""
    return EventFilter(
        session_key=options.pop("session_key"),
        session_id=options.pop("session_id"),
        types=tuple(options.pop("types")),
        since=options.pop("since"),
        until=options.pop("until"),
        recorded=options.pop("recorded"),
        from_position=options.pop("from_position"),
        to_position=options.pop("to_position"),
    )


@contextmanager
def _output_closed_quietly() -> Iterator[None]:
    """``… | head`` closes the pipe early: stop without a traceback."""
    try:
        yield
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None


# -- events ----------------------------------------------------------------------


def _event_line(rec: Recorded, zone: Zone, recorded: bool = False) -> str:
    """One event as ``events`` prints it: its business time (its recorded time with
    ``recorded``) in ``zone``."""
    when = rec.recorded_at_text if recorded else business_time_of(rec.data, rec.recorded_at_text)
    return (
        f"{rec.position:>8}  {show_time(when, zone)}  {rec.type:<20}  "
        f"{rec.stream} v{rec.version}  {rec.session_id or '-'}"
    )


@click.command("events")
@postgres_ready
@db_option
@filter_options
@click.option("--limit", type=count_range(0), help="Only the oldest N matching (before --follow).")
@click.option(
    "--tail", type=count_range(0), metavar="N", help="Only the newest N matching (oldest first)."
)
@click.option("-f", "--follow", is_flag=True, help="Then print new events as they come (Ctrl-C).")
@click.option("--poll-interval", type=Seconds(), default=0.5, hidden=True)
@click.option("--follow-timeout", type=Seconds(min=0), hidden=True)
@tz_option
@json_option
@reports_errors
def events_cmd(
    tz: Zone,
    db: Path | str | None,
    limit: int | None,
    tail: int | None,
    follow: bool,
    poll_interval: float,
    follow_timeout: float | None,
    as_json: bool,
    **filters: Any,
) -> None:
    """List events, oldest first; --follow for new ones.

    \b
    One line per event: position, time (when it happened at the gateway; with
    --recorded, when it was recorded), type, session key and version, session id.
    Times are UTC unless --tz or $TZ names a zone. --json prints one JSON object
    per line (every column, times in UTC).
    --tail N shows the newest N matching events (e.g. --tail 20 -f, like
    tail -f); when --limit leaves events out, a note on stderr says how many.
    """
    if limit is not None and tail is not None:
        raise click.UsageError("give --limit (the oldest N) or --tail (the newest N), not both")
    events = _event_filter(filters)

    def more(count: int) -> None:
        noun = "event" if count == 1 else "events"
        click.echo(f"{count} more {noun} not shown; raise --limit or use --tail", err=True)

    with _event_lister(resolve_ledger(db)) as listing, _output_closed_quietly():
        try:
            for rec in listing(
                events,
                limit=limit,
                tail=tail,
                follow=follow,
                poll_interval=poll_interval,
                timeout=follow_timeout,
                on_more=more,
            ):
                if as_json:
                    print_json_line(rec.to_dict())
                else:
                    click.echo(_event_line(rec, tz, events.recorded))
        except KeyboardInterrupt:
            if not follow:
                raise
            # Ctrl-C is how --follow ends: a normal exit.


@contextmanager
def _event_lister(target: Path | str) -> Iterator[Callable[..., Iterator[Recorded]]]:
    """``list_events`` of the ledger ``target`` names (``ledger.query``'s for a SQLite
    file, ``ledger.postgres.reading``'s for a PostgreSQL URI), bound to it."""
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions.postgres import open_postgres
        from hermes_ledger.ledger.postgres import reading

        with open_postgres(target, projections=False) as log:
            yield partial(reading.list_events, log)
        return
    with Ledger.open(target, readonly=True) as led:
        yield partial(list_events, led)


# -- export ----------------------------------------------------------------------


@click.command("export")
@postgres_ready
@db_option
@filter_options
@click.option(
    "--user",
    metavar="ID",
    help="Only what the ledger holds about this user id: every event of the sessions"
    " they started, and their own messages in other sessions (subject access).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="jsonl (default), csv, sqlite or markdown (readable, one section per"
    " session); by default from -o's name (csv, db, md endings).",
)
@click.option(
    "-o",
    "--output",
    # Directories, devices, FIFOs, sockets and links are refused by export() itself
    # (Error/Try, exit 1), after the same checks for every kind.
    type=click.Path(allow_dash=True, path_type=Path),
    help="Write to FILE (created owner-only; .gz compresses) instead of stdout (-).",
)
@tz_option
@reports_errors
def export_cmd(
    tz: Zone, db: Path | str | None, fmt: str | None, output: Path | None, **filters: Any
) -> None:
    """Export events as JSONL, CSV, SQLite or readable Markdown.

    \b
    JSONL (the default) has one event per line, every column as stored, and ends
    with a manifest line (count, first and last position, last hash):
    `hermes-ledger import` restores it exactly. Every form has both times:
    recorded_at (when appended) and occurred_at (when it happened), in UTC;
    --tz only says how --since/--until without a zone are read. --format sqlite
    writes a database with the events and a full-text index over the messages.
    --format markdown is for reading (e.g. a subject access request with --user
    ID): one section per session, its messages with time and speaker, UTC.
    Every form works the same on a PostgreSQL ledger (--db postgresql://…), and
    its JSONL export imports into a SQLite ledger.
    """
    user = filters.pop("user")
    events = replace(_event_filter(filters), user=user)
    target = resolve_ledger(db)
    if output is not None and str(output) == "-":
        output = None
    with progress_bar("exporting") as progress, _output_closed_quietly():
        manifest = export(
            target, output, format=fmt, events=events, progress=progress,
            stdout=sys.stdout.buffer,
        )  # fmt: skip
    if output is not None:
        span = (
            f" (positions {manifest.first_position}-{manifest.last_position})"
            if manifest.count
            else ""
        )
        noun = "event" if manifest.count == 1 else "events"
        click.echo(f"Exported {manifest.count} {noun}{span} to {output}")


# -- sql -------------------------------------------------------------------------


@click.command("sql")
@postgres_ready
@db_option
@click.argument("query")
@click.option(
    "-p",
    "--param",
    "params",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="Bind :NAME to VALUE (repeat).",
)
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@click.option(
    "--timeout",
    type=Seconds(min=0),
    default=DEFAULT_SQL_TIMEOUT,
    show_default=True,
    help="Stop the query after this many seconds, output included (0: no limit).",
)
@reports_errors
def sql_cmd(
    db: Path | str | None,
    query: str,
    params: tuple[tuple[str, str], ...],
    as_json: bool,
    as_csv: bool,
    timeout: float,
) -> None:
    """Run a read-only SQL query on the ledger.

    \b
    The ledger is opened read-only: a statement that would change it fails and
    changes nothing. Output is an aligned table, --json (a list of objects) or
    --csv. The query stops after --timeout seconds (30 by default), or at once on
    Ctrl-C (exit 130). On a PostgreSQL ledger (--db postgresql://…) the query
    runs in a READ ONLY transaction with a statement_timeout of --timeout, over
    the same tables (events, event_bodies, the projections), as the role
    hermes_ledger_reader (SELECT on the ledger's tables, nothing else) when the
    connecting role is a member (an auditor, a gateway, the owner); otherwise as
    the connecting role, after a Warning on stderr saying what to GRANT. Example:
      hermes-ledger sql "SELECT type, count(*) FROM events GROUP BY type"
    """
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    with _sql_runner(resolve_ledger(db)) as run, _output_closed_quietly():
        try:
            result = run(query, dict(params), timeout=timeout)
            if as_json:
                print_json_rows(result.columns, result.rows)
            elif as_csv:
                print_csv(result.columns, result.rows)
            else:
                print_table(result.columns, result.rows)
        except KeyboardInterrupt:
            # Ctrl-C stops SQLite at once (run_sql's progress handler); say so, 128 + SIGINT.
            raise _Interrupted("the query was interrupted (Ctrl-C); nothing changed") from None


@contextmanager
def _sql_runner(target: Path | str) -> Iterator[Callable[..., QueryResult]]:
    """``run_sql`` on the ledger ``target`` names (a SQLite file or a PostgreSQL URI)."""
    if isinstance(target, str):
        from hermes_ledger.ledger.postgres.query import run_sql as run_postgres_sql

        yield partial(run_postgres_sql, target)
        return
    with Ledger.open(target, readonly=True) as led:
        yield partial(run_sql, led)


class _Interrupted(LedgerCommandError):
    """Ctrl-C ended the command: exit status 130 (128 + SIGINT), as shells report it."""

    exit_code = 130


# -- schema ----------------------------------------------------------------------


@click.command("schema")
@postgres_ready
@db_option
def schema_cmd(db: Path | str | None) -> None:
    """Print the JSON Schema of the events.

    The schema is that of this version's event models (the same for every ledger,
    SQLite or PostgreSQL; --db is accepted like everywhere else and not opened).
    """
    print_json(json_schema())
