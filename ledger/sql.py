"""Small SQL helpers every layer shares, each written once: the head position
query and reading one value from a connection."""

from __future__ import annotations

from typing import Any

import apsw

__all__ = ["SQL_HEAD_POSITION", "scalar"]

SQL_HEAD_POSITION = "SELECT coalesce(max(position), 0) FROM main.events"
"""The newest position in the log, 0 for an empty log.

The log is named with its schema: a connection that also holds temporary tables
(a projection's scratch replay) still reads the ledger's own ``events``."""


def scalar(conn: apsw.Connection, sql: str, args: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row (None if there is no row)."""
    row: Any = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]
