"""What ``status`` says about the plugin: its spool and the records waiting there,
the ledger hooks' directory, and the home's history the ledger lacks (which
``hermes ledger backfill`` imports)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hermes_ledger.gateway.config.paths import default_ledger_hooks_dir
from hermes_ledger.gateway.hermes.held import first_plugin_event, has_session, reads_of
from hermes_ledger.gateway.plugin.spool import pending_records, spool_dir
from hermes_ledger.ledger import EventLog, Ledger, LedgerError
from hermes_ledger.ledger.clock import format_utc, parse_utc

__all__ = ["HistoryGap", "history_gap", "plugin_status"]


@dataclass(frozen=True)
class HistoryGap:
    """What the ledger lacks of a home's history: ``sessions`` in ``state.db`` that
    started before the plugin's first event (``plugin_started``: when that event
    happened, e.g. the start of the first session the plugin recorded; None while
    the plugin has recorded nothing) and are not in the ledger, the first of which
    started at ``first_started_at``."""

    home: Path
    sessions: int
    first_started_at: str | None
    plugin_started: str | None

    def message(self) -> str:
        return (
            f"{self.home / 'state.db'} has {self.sessions} session(s) from before the plugin"
            f" started recording (the first started {self.first_started_at}) that the ledger"
            " lacks; run `hermes ledger backfill` to import them (it adds only what is missing)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "first_started_at": self.first_started_at,
            "plugin_started": self.plugin_started,
            "hint": "hermes ledger backfill" if self.sessions else None,
        }


def history_gap(ledger: EventLog | Ledger, home: str | os.PathLike[str]) -> HistoryGap | None:
    """The home's history the ledger (either backend) lacks (see ``HistoryGap``);
    None without a ``state.db``. Reads ``state.db`` in place, read-only. The plugin's
    first event is when it happened (Hermes's time: a start is the session's start),
    not when it was written: sessions Hermes started after it are the plugin's to
    record, even while their records still wait in the spool."""
    from hermes_ledger.gateway.hermes.reading import HermesImportError, open_hermes_home

    home = Path(home)
    reads = reads_of(ledger)
    since = first_plugin_event(reads)
    if since is None:
        return HistoryGap(home, 0, None, None)
    cutoff = parse_utc(since).timestamp()
    try:
        hermes = open_hermes_home(home, snapshot=False)
    except HermesImportError:
        return None
    with hermes:
        missing = [
            s.started_at
            for s in hermes.sessions()
            if s.started_at < cutoff and not has_session(reads, s.id)
        ]
    first = format_utc(datetime.fromtimestamp(min(missing), UTC)) if missing else None
    return HistoryGap(home, len(missing), first, since)


def plugin_status(
    home: str | os.PathLike[str], ledger: EventLog | Ledger | None = None
) -> dict[str, Any]:
    """The plugin's part of ``status`` for ``home``: the spool, the records waiting
    there, the ledger hooks' directory and (given the home's ``ledger``) the
    history it lacks (``backfill``: ``HistoryGap.to_dict()``, or None)."""
    home = Path(home)
    try:
        waiting: int | str = len(pending_records(home))
    except OSError as exc:  # an unsafe or unreadable spool: say so, do not fail status
        waiting = f"unreadable: {exc}"
    gap = None
    if ledger is not None:
        with contextlib.suppress(LedgerError, OSError):
            gap = history_gap(ledger, home)
    return {
        "enabled": True,
        "spool": str(spool_dir(home)),
        "waiting": waiting,
        "ledger_hooks": str(default_ledger_hooks_dir(home)),
        "backfill": gap.to_dict() if gap is not None and gap.sessions else None,
    }
