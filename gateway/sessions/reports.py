"""Read-side helpers behind ``hermes-ledger sessions / history / transcript / verify``.

Each returns plain data (dicts of the projection tables' columns) so the CLI can
print it as a table or as JSON, and tests can call it directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_ledger import projections
from hermes_ledger.gateway.sessions.reads import load_transcript
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.records import VerifyReport as ChainReport

__all__ = [
    "FullVerifyReport",
    "history",
    "open_existing",
    "sessions",
    "transcript",
    "verify_all",
]

SESSION_COLUMNS = (
    "session_key, session_id, status, platform, chat_type, display_name, created_at,"
    " updated_at, message_count, input_tokens, output_tokens, next_deadline"
)
# session_map with the scheduler's deadline for the key's current session (the
# projection itself is derived from the log only; the deadline is scheduler state).
_SESSIONS_WITH_DEADLINES = (
    "(SELECT m.*, d.deadline AS next_deadline FROM session_map AS m"
    " LEFT JOIN session_deadlines AS d"
    " ON d.session_key = m.session_key AND d.session_id = m.session_id)"
)
SQL_SESSIONS_OPEN = (
    f"SELECT {SESSION_COLUMNS} FROM {_SESSIONS_WITH_DEADLINES} WHERE status = 'open'"
    " ORDER BY updated_at DESC LIMIT ?"
)
SQL_SESSIONS_ALL = (
    f"SELECT {SESSION_COLUMNS} FROM {_SESSIONS_WITH_DEADLINES} ORDER BY updated_at DESC LIMIT ?"
)
HISTORY_COLUMNS = (
    "session_id, started_at, ended_at, end_reason, start_reason, message_count,"
    " input_tokens, output_tokens, flush_status, close_cause, close_detail"
)
SQL_HISTORY = (
    f"SELECT {HISTORY_COLUMNS} FROM session_history WHERE session_key = ?"
    " ORDER BY started_at, session_id"
)
SQL_SESSION_KNOWN = "SELECT 1 FROM session_history WHERE session_id = ?"


def open_existing(path: str | os.PathLike[str]) -> Ledger:
    """Open a ledger that must already exist (NoLedgerError if there is none), with
    its projections attached."""
    ledger = Ledger.open_existing(path)
    try:
        projections.attach(ledger)
    except BaseException:
        ledger.close()
        raise
    return ledger


def _dicts(columns: str, rows: list[Any]) -> list[dict[str, Any]]:
    names = [c.strip() for c in columns.split(",")]
    return [dict(zip(names, row, strict=True)) for row in rows]


def sessions(ledger: Ledger, *, all_: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
    """Sessions by key, most recently active first (open ones unless ``all_``)."""
    sql = SQL_SESSIONS_ALL if all_ else SQL_SESSIONS_OPEN
    return _dicts(SESSION_COLUMNS, ledger.query(sql, (limit,)))


def history(ledger: Ledger, session_key: str) -> list[dict[str, Any]]:
    """Every session (transcript) a key has had, oldest first."""
    rows = _dicts(HISTORY_COLUMNS, ledger.query(SQL_HISTORY, (session_key,)))
    if not rows:
        raise LedgerError(
            f"no sessions with key {session_key!r}",
            hint="list keys with `hermes-ledger sessions --all`",
        )
    return rows


def transcript(ledger: Ledger, session_id: str) -> list[dict[str, Any]]:
    """A session's messages in order (synthetic flush turns excluded)."""
    if not ledger.query(SQL_SESSION_KNOWN, (session_id,)):
        raise LedgerError(
            f"no session with id {session_id!r}",
            hint="find ids with `hermes-ledger sessions` or `hermes-ledger history KEY`",
        )
    return load_transcript(ledger, session_id)


@dataclass(frozen=True)
class FullVerifyReport:
    chain: ChainReport
    projections: projections.VerifyReport

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.projections.ok

    def lines(self) -> list[str]:
        return [f"hash chain: {self.chain}", f"projections: {self.projections}"]


def verify_all(
    ledger: Ledger, progress: Callable[[int, int], None] | None = None
) -> FullVerifyReport:
    """The hash chain end to end, then the live projections against a replay."""
    chain = ledger.verify(progress=progress)
    return FullVerifyReport(chain, projections.verify(ledger, progress=progress))
