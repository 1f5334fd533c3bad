"""``hermes-ledger serve``: browse the ledger in a browser (Datasette, read-only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from hermes_ledger.gateway.cli.options import db_option, postgres_ready, reports_errors
from hermes_ledger.gateway.config.paths import resolve_ledger
from hermes_ledger.gateway.web import server

if TYPE_CHECKING:
    from hermes_ledger.gateway.web.snapshot import PostgresSnapshot

__all__ = ["serve_cmd"]


@click.command("serve")
@postgres_ready
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on: a loopback address unless --allow-remote.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8001,
    show_default=True,
    help="Port to listen on (0: any free port; the URL line says which).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host other machines can reach: they can read every transcript.",
)
@reports_errors
def serve_cmd(db: Path | str | None, host: str, port: int, allow_remote: bool) -> None:
    """Browse sessions, transcripts and audit reports in a browser.

    \b
    Runs Datasette (the `web` extra: pip install 'hermes-ledger[web]') on the
    ledger, read-only: the tables and views with their descriptions, the audit
    queries (`hermes-ledger report --list`) as canned queries, and full-text search
    on messages.
    A running gateway's appends show on the next page load. Listens on
    127.0.0.1 only, unless --allow-remote. Ctrl-C stops it.

    \b
    On a PostgreSQL ledger (--db postgresql://…) Datasette, which reads SQLite
    only, serves a read-only SQLite snapshot taken when serve starts: the log
    (checked against its hash chain) and its projections, not later appends
    (restart to refresh) nor the scheduler's and hooks' tables. The snapshot is
    a file only this user may read, in a temporary directory removed when serve
    stops.
    """
    if not server.is_loopback(host):
        if not allow_remote:
            raise click.BadParameter(
                f"{host!r} is not a loopback address: other machines could read every"
                " transcript (add --allow-remote to mean it)",
                param_hint="'--host'",
            )
        click.echo(
            f"Warning: serving the ledger on {host}: anyone who can reach this port reads"
            " every session and transcript, without a password",
            err=True,
        )
    target = resolve_ledger(db)
    if isinstance(target, str):

        def ready_snapshot(url: str, snap: PostgresSnapshot) -> None:
            click.echo(
                f"Serving a snapshot of {snap.source} (PostgreSQL, up to position"
                f" {snap.position}, taken {snap.taken_at}) read-only at {url} (Ctrl-C stops)"
            )
            click.echo(
                "Note: Datasette reads SQLite only, so this is a SQLite copy of the log and its"
                " projections: later appends are not shown (restart serve to see them), the"
                " scheduler's and hooks' tables are not copied; the copy is removed when serve"
                " stops"
            )

        server.serve_postgres(target, host=host, port=port, ready=ready_snapshot)
        return

    def ready(url: str) -> None:
        click.echo(f"Serving {target} read-only at {url} (Ctrl-C stops)")

    server.serve(target, host=host, port=port, ready=ready)
