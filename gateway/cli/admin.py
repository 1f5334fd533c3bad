"""``hermes-ledger init / status / vacuum``: create the ledger file, say what it
holds, and return its free pages to the disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hermes_ledger.gateway.cli.options import (
    Seconds,
    db_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_json, print_report, progress_bar, size_text
from hermes_ledger.gateway.cli.plugin import plugin_status_for, print_plugin_status
from hermes_ledger.gateway.cli.times import Zone, show_time_and_age, tz_option
from hermes_ledger.gateway.config.paths import resolve_ledger, resolve_ledger_path
from hermes_ledger.ledger import admin

__all__ = ["init_cmd", "status_cmd", "vacuum_cmd"]


def _print_status(st: admin.LedgerStatus, zone: Zone, plugin: dict[str, Any] | None = None) -> None:
    schema = f"v{st.schema_version}"
    if st.schema_version == st.latest_schema_version:
        schema += " (up to date)"
    rows = [
        ("ledger", st.path),
        ("schema", schema),
        ("events", f"{st.events} (head position {st.head})"),
        ("streams", str(st.streams)),
        ("sessions", str(st.sessions)),
        ("first event", show_time_and_age(st.first_recorded_at, zone)),
        ("last event", show_time_and_age(st.last_recorded_at, zone)),
        ("size", size_text(st.size_bytes)),
        ("free pages", _free_text(st)),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        click.echo(f"{key + ':':<{width}} {value}")
    if plugin is not None:
        print_plugin_status(plugin, width)


def _free_text(st: admin.LedgerStatus) -> str:
    if not st.free_pages:
        return "0"
    return (
        f"{st.free_pages} ({size_text(st.free_bytes)}; reused by later writes, "
        "returned to the disk by `hermes-ledger vacuum`)"
    )


@click.command("init")
@postgres_ready
@db_option
@json_option
@reports_errors
def init_cmd(db: Path | str | None, as_json: bool) -> None:
    """Create the ledger file (or migrate an older one).

    With --db postgresql://…, create the ledger's schema in that database (or
    apply the migrations it lacks): as its owner, or a role that may create it.
    """
    if isinstance(db, str):  # LedgerTarget: a str is a postgresql:// URI
        from hermes_ledger.gateway.sessions import postgres

        done = postgres.init(db)
        if as_json:
            print_json(done.to_dict())
        else:
            click.echo(done.text())
        return
    st = admin.init(resolve_ledger_path(db))
    if as_json:
        print_json(st.to_dict())
        return
    if st.created:
        click.echo(f"Created ledger {st.path} (schema v{st.schema_version})")
    else:
        click.echo(
            f"Ledger {st.path} already exists (schema v{st.schema_version}, {st.events} events)"
        )


def _print_postgres_status(dsn: str, zone: Zone, as_json: bool) -> None:
    from hermes_ledger.gateway.sessions.postgres import open_postgres
    from hermes_ledger.ledger.postgres.reading import status

    with open_postgres(dsn, projections=False) as log:
        st = status(log)
        plugin = plugin_status_for(dsn, log)
    if as_json:
        print_json(st.to_dict() if plugin is None else {**st.to_dict(), "plugin": plugin})
        return
    rows = [
        ("ledger", st.where),
        ("backend", f"PostgreSQL (schema v{st.schema_version})"),
        ("events", f"{st.events} (head position {st.head})"),
        ("streams", str(st.streams)),
        ("sessions", str(st.sessions) if st.sessions is not None else "(no projections)"),
        ("first event", show_time_and_age(st.first_recorded_at, zone)),
        ("last event", show_time_and_age(st.last_recorded_at, zone)),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        click.echo(f"{key + ':':<{width}} {value}")
    if plugin is not None:
        print_plugin_status(plugin, width)


@click.command("status")
@postgres_ready
@db_option
@tz_option
@json_option
@reports_errors
def status_cmd(db: Path | str | None, tz: Zone, as_json: bool) -> None:
    """Show where the ledger is and what it holds.

    The first and last event are when they were recorded, in UTC (or in --tz's
    zone, else $TZ's), with how long ago; --json gives the UTC times alone.

    With the Hermes plugin enabled in the home, also the records waiting in its
    spool and whether a backfill is due. On a PostgreSQL ledger (--db
    postgresql://…): the database (never its password), head, events, streams and
    sessions.
    """
    target = resolve_ledger(db)
    if isinstance(target, str):
        _print_postgres_status(target, tz, as_json)
        return
    path = target
    st = admin.status(path)
    plugin = plugin_status_for(path)
    if as_json:
        print_json(st.to_dict() if plugin is None else {**st.to_dict(), "plugin": plugin})
    else:
        _print_status(st, tz, plugin)


@click.command("vacuum")
@postgres_ready
@db_option
@click.option(
    "--wait",
    type=Seconds(),
    default=admin.DEFAULT_VACUUM_WAIT,
    show_default=True,
    help="How long to wait for another process's write lock (on PostgreSQL: for each"
    " table's lock) before refusing.",
)
@json_option
@reports_errors
def vacuum_cmd(db: Path | str | None, wait: float, as_json: bool) -> None:
    """Return the ledger's free pages to the disk (VACUUM).

    \b
    A replay leaves the old projection tables' pages free: later writes reuse
    them, but the file does not shrink. `status` shows how many there are.
    vacuum rewrites the file without them, in place and atomically (an
    interrupted vacuum leaves the ledger as it was), after checking that there
    is free disk space for it (about the size of the ledger, twice when the
    temporary directory is on the same disk).

    \b
    Beside a running gateway: readers go on; writers wait until it is done, up
    to their busy timeout (30 s), which a ledger of several GiB can exceed: stop
    the gateway first for those (the Hermes plugin keeps what it captures in its
    spool meanwhile). If another process holds the write lock for more than
    --wait seconds, vacuum refuses and changes nothing.

    \b
    On a PostgreSQL ledger (--db postgresql://…): VACUUM (ANALYZE) of each of
    the ledger's tables, which makes their dead tuples (the projections' updates,
    erased payloads) reusable and refreshes the planner's statistics, and prints
    the dead tuples and sizes before and after. It needs the tables' owner (the
    database's owner or a superuser); a plain VACUUM, not FULL: the files seldom
    shrink (the first VACUUM even adds each table's free-space and visibility
    maps to its size). Appends wait while the events table is vacuumed.
    """
    target = resolve_ledger(db)
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions.postgres import open_postgres
        from hermes_ledger.ledger.postgres.vacuum import vacuum_postgres

        with open_postgres(target, projections=False) as log:
            print_report(vacuum_postgres(log, wait=wait), as_json)
        return
    with progress_bar("vacuuming", show=not as_json) as progress:
        report = admin.vacuum(target, wait=wait, progress=progress)
    print_report(report, as_json)
