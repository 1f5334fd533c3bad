"""Small SQL helpers every layer shares, each written once: the head position
query, reading one value from a connection, and an event's business time.

Since schema v3 the log has the business time as a column, ``events.occurred_at``
(migrations/0003_occurred_at.sql, generated from ``business_time('data',
'recorded_at')``): filters and readers of the log use the column; ``business_time``
is for SQL over other rows (a body bound as a parameter, a scratch table).

The time helpers are about event bodies (``occurred_at`` in ``data``, else the
row's ``recorded_at``), so they live here, below everything that reads the log:
the projections, the SQLite export and the gateway all derive times from them.
"""

from __future__ import annotations

from typing import Any

import apsw

from hermes_ledger.ledger.clock import format_utc, parse_utc

__all__ = ["SQL_HEAD_POSITION", "business_time", "business_time_of", "scalar", "utc_text"]

SQL_HEAD_POSITION = "SELECT coalesce(max(position), 0) FROM main.events"
"""The newest position in the log, 0 for an empty log.

The log is named with its schema: a connection that also holds temporary tables
(a projection's scratch replay) still reads the ledger's own ``events``."""


def scalar(conn: apsw.Connection, sql: str, args: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row (None if there is no row)."""
    row: Any = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def utc_text(x: str) -> str:
    """SQL: ISO-8601 text ``x`` with any offset (as pydantic writes it) as fixed-width
    UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, the format of ``recorded_at``; NULL stays NULL.

    Whole seconds go through strftime (which applies the offset); the fraction is
    copied as digits, so no precision is lost or rounded."""
    tz = f"ltrim(substr({x}, 21), '0123456789')"
    digits = f"substr({x}, 21, length({x}) - 20 - length({tz}))"
    return (
        f"CASE WHEN {x} IS NULL THEN NULL"
        f" WHEN substr({x}, 20, 1) = '.' THEN"
        f" strftime('%Y-%m-%dT%H:%M:%S', substr({x}, 1, 19) || {tz})"
        f" || '.' || substr({digits} || '000000', 1, 6) || 'Z'"
        f" ELSE strftime('%Y-%m-%dT%H:%M:%S', {x}) || '.000000Z' END"
    )


_OCCURRED_AT = "'$.occurred_at'"


def business_time(data: str, recorded_at: str) -> str:
    """SQL: an event's business time, from the SQL of its ``data`` (JSON text) and of
    its ``recorded_at``: ``occurred_at`` (when it happened, in the producer's clock) if
    set, else ``recorded_at``, as UTC text in the format of ``recorded_at``."""
    return f"coalesce({utc_text(f'({data} ->> {_OCCURRED_AT})')}, {recorded_at})"


def business_time_of(data: dict[str, Any], recorded_at: str) -> str:
    """Python: what ``business_time`` gives for a decoded body ``data`` and its
    ``recorded_at`` text (a row read without its ``occurred_at`` column)."""
    occurred = data.get("occurred_at")
    if not isinstance(occurred, str):
        return recorded_at
    try:
        return format_utc(parse_utc(occurred))
    except ValueError:
        return recorded_at
