"""Whole-ledger operations behind ``hermes-ledger init`` and ``status``."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hermes_ledger.ledger.schema import latest_version
from hermes_ledger.ledger.store import Ledger

__all__ = ["LedgerStatus", "init", "status"]

SQL_STATUS = (
    "SELECT count(*), min(recorded_at), max(recorded_at),"
    " (SELECT count(*) FROM (SELECT DISTINCT stream FROM events)),"
    " (SELECT count(*) FROM (SELECT DISTINCT session_id FROM events WHERE session_id IS NOT NULL))"
    " FROM events"
)
SQL_SCHEMA_VERSION = "PRAGMA user_version"


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    path: str
    created: bool
    schema_version: int
    latest_schema_version: int
    events: int
    head: int
    streams: int
    sessions: int
    first_recorded_at: str | None
    last_recorded_at: str | None
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status(led: Ledger, created: bool) -> LedgerStatus:
    conn = led.connection
    row: Any = conn.execute(SQL_STATUS).fetchone()
    events, first, last, streams, sessions = row
    version: Any = conn.execute(SQL_SCHEMA_VERSION).fetchone()
    version = version[0]
    size = sum(os.path.getsize(p) for p in (led.path, Path(f"{led.path}-wal")) if os.path.exists(p))
    return LedgerStatus(
        path=str(led.path),
        created=created,
        schema_version=version,
        latest_schema_version=latest_version(),
        events=events,
        head=led.head(),
        streams=streams,
        sessions=sessions,
        first_recorded_at=first,
        last_recorded_at=last,
        size_bytes=size,
    )


def init(path: str | os.PathLike[str]) -> LedgerStatus:
    """Create (or migrate) the ledger at ``path``; ``created`` says whether it is new."""
    path = Path(path)
    created = not path.exists() or path.stat().st_size == 0
    with Ledger.open(path) as led:
        return _status(led, created)


def status(path: str | os.PathLike[str]) -> LedgerStatus:
    """Describe an existing ledger (migrating it if it is older than this code)."""
    with Ledger.open_existing(path) as led:
        return _status(led, False)
