"""``hermes-ledger sync`` (``hermes ledger sync``), and the plugin's lines in ``status``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hermes_ledger.gateway.cli.options import json_option, reports_errors
from hermes_ledger.gateway.cli.output import print_report
from hermes_ledger.gateway.config.files import ledger_plugin_enabled
from hermes_ledger.gateway.config.paths import hermes_home
from hermes_ledger.ledger import EventLog

__all__ = ["plugin_status_for", "print_plugin_status", "sync_cmd"]


@click.command("sync")
@click.option("--no-hooks", is_flag=True, help="Record the spool only; deliver no ledger hooks.")
@json_option
@reports_errors
def sync_cmd(no_hooks: bool, as_json: bool) -> None:
    """Record the plugin's spool now, then deliver ledger hooks.

    \b
    With the plugin enabled, a Hermes gateway drains $HERMES_HOME/ledger-spool
    into the home's ledger itself. What `hermes chat` (or any Hermes process
    without a gateway) captured waits there until a gateway runs, as does what a
    gateway could not record while its ledger was unreachable; `sync` records it
    now and delivers the hooks in $HERMES_HOME/ledger-hooks. The ledger is the
    plugin's: HERMES_LEDGER_DB if set, else `ledger: {db: …}` in config.yaml (a
    file, or a postgresql:// URI that several gateway hosts share), else
    $HERMES_HOME/ledger.db. Safe beside a running gateway; running it again adds
    nothing.
    """
    from hermes_ledger.gateway.plugin.worker import sync_home

    report = sync_home(hermes_home(), hooks=not no_hooks)
    print_report(report, as_json)


def plugin_status_for(target: Path | str, log: EventLog | None = None) -> dict[str, Any] | None:
    """The plugin's part of ``status`` when ``target`` (a file, or a PostgreSQL URI)
    is the ledger of a home that has the plugin enabled (``plugin.location``); None
    otherwise (standalone output unchanged). ``log`` is the ledger already open."""
    from hermes_ledger.gateway.plugin.location import plugin_ledger

    home = hermes_home()
    try:
        if not ledger_plugin_enabled(home) or not _same(target, plugin_ledger(home)):
            return None
    except Exception:  # an unreadable config.yaml: status reports the ledger only
        return None
    from hermes_ledger.gateway.plugin.status import plugin_status
    from hermes_ledger.ledger import Ledger, LedgerError

    if log is not None:
        return plugin_status(home, log)
    if isinstance(target, str):
        return plugin_status(home)
    try:
        with Ledger.open(target, readonly=True) as ledger:
            return plugin_status(home, ledger)
    except LedgerError:  # busy, say: the spool without the history check
        return plugin_status(home)


def _same(target: Path | str, plugin: Path | str) -> bool:
    if isinstance(target, str) or isinstance(plugin, str):
        return target == plugin
    return target.resolve() == plugin.resolve()


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
