"""Where a session's close stands, read from its events, and how it ends.

A close is cause (``session_reset`` / ``session_expired``) → flush outcome(s) →
``session_ended``. The message path writes all of it in one append; the
scheduler writes the cause first, then the outcome and the end (a failed flush
may be retried on later ticks). Anyone who finds a session half-closed (status
``closing``: after a crash, or while a flush is being retried) reads its
progress here and finishes it the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import parse_utc

__all__ = ["CloseProgress", "close_progress", "end_reason_for"]

SQL_CLOSE_EVENTS = (
    "SELECT type, data, recorded_at FROM events WHERE session_id = ?"
    " AND type IN ('session_reset', 'session_expired', 'memory_flushed',"
    " 'memory_flush_failed', 'memory_flush_skipped', 'session_ended')"
    " ORDER BY position"
)

_EXPIRY_END = {"idle": "idle_expiry", "daily": "daily_reset", "cron": "cron_reset"}


@dataclass(frozen=True)
class CloseProgress:
    """``cause`` is None when the session has no close in progress."""

    cause: str | None = None
    cause_reason: str | None = None
    deadline: datetime | None = None
    flushed: bool = False
    failures: int = 0
    last_failure_at: datetime | None = None
    ended: bool = False


def end_reason_for(cause: str | None, cause_reason: str | None) -> str:
    """The ``session_ended`` reason that a cause leads to."""
    if cause == "session_expired":
        return _EXPIRY_END.get(cause_reason or "", "idle_expiry")
    if cause_reason == "shutdown":
        return "shutdown"
    return "manual_reset"


def close_progress(ledger: Ledger, session_id: str) -> CloseProgress:
    """Read the close events of one session (an indexed lookup by session_id)."""
    cause = reason = None
    deadline = last_failure = None
    flushed = ended = False
    failures = 0
    for event_type, data, recorded_at in ledger.query(SQL_CLOSE_EVENTS, (session_id,)):
        body = json.loads(data)
        when = parse_utc(body.get("occurred_at") or recorded_at)
        if event_type in ("session_reset", "session_expired") and cause is None:
            cause = event_type
            reason = body.get("reason") if event_type == "session_expired" else body.get("trigger")
            if event_type == "session_expired":
                deadline = parse_utc(body["deadline"])
        elif event_type in ("memory_flushed", "memory_flush_skipped"):
            flushed = True
        elif event_type == "memory_flush_failed":
            failures += 1
            last_failure = when
        elif event_type == "session_ended":
            ended = True
    return CloseProgress(cause, reason, deadline, flushed, failures, last_failure, ended)
