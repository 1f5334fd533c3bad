"""``hermes-ledger sync`` (``hermes ledger sync``), and the plugin's lines in ``status``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hermes_ledger.gateway.cli.options import json_option, reports_errors
from hermes_ledger.gateway.cli.output import print_report
from hermes_ledger.gateway.config.files import ledger_plugin_enabled
from hermes_ledger.gateway.config.paths import hermes_home

__all__ = ["plugin_status_for", "print_plugin_status", "sync_cmd"]


@click.command("sync")
@click.option("--no-hooks", is_flag=True, help="Record the spool only; deliver no ledger hooks.")
@json_option
@reports_errors
def sync_cmd(no_hooks: bool, as_json: bool) -> None:
    """Record the plugin's spool now, then deliver ledger hooks.

    \b
    With the plugin enabled, a Hermes gateway drains $HERMES_HOME/ledger-spool
    into $HERMES_HOME/ledger.db itself. What `hermes chat` (or any Hermes process
    without a gateway) captured waits there until a gateway runs; `sync` records
    it now and delivers the hooks in $HERMES_HOME/ledger-hooks. It always uses the
    home's ledger.db (the plugin's), whatever --db / HERMES_LEDGER_DB say
    elsewhere. Safe beside a running gateway; running it again adds nothing.
    """
    from hermes_ledger.gateway.plugin.worker import sync_home

    report = sync_home(hermes_home(), hooks=not no_hooks)
    print_report(report, as_json)


def plugin_status_for(path: Path) -> dict[str, Any] | None:
    """The plugin's part of ``status`` when ``path`` is the ledger of a home that
    has the plugin enabled; None otherwise (standalone output unchanged)."""
    home = hermes_home()
    try:
        if path.resolve() != (home / "ledger.db").resolve() or not ledger_plugin_enabled(home):
            return None
    except Exception:  # an unreadable config.yaml: status reports the ledger only
        return None
    from hermes_ledger.gateway.plugin.status import plugin_status
    from hermes_ledger.ledger import Ledger, LedgerError

    try:
        with Ledger.open(path, readonly=True) as ledger:
            return plugin_status(home, ledger)
    except LedgerError:  # busy, say: the spool without the history check
        return plugin_status(home)


def print_plugin_status(info: dict[str, Any], width: int) -> None:
    rows = [
        ("plugin", f"enabled (ledger hooks: {info['ledger_hooks']})"),
        ("spool", f"{info['waiting']} record(s) waiting in {info['spool']}"),
    ]
    gap = info.get("backfill")
    if gap:
        rows.append((
            "backfill",
            f"{gap['sessions']} session(s) from before the plugin are not in the ledger"
            " (run `hermes ledger backfill`)",
        ))  # fmt: skip
    for key, value in rows:
        click.echo(f"{key + ':':<{width}} {value}")
