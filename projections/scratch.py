"""Replays into private scratch tables, on a separate read-only connection.

``verify`` and ``state_at`` open their own connection to the ledger file (so
they never hold the Ledger's lock or its write transaction), start a read
transaction (one consistent snapshot of the log and the live tables), and replay
into tables in the connection's ``temp`` schema, which SQLite keeps in a
temporary file and drops when the connection closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import apsw

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.schema import connect
from hermes_ledger.projections.definitions import Projection
from hermes_ledger.projections.quoting import SCRATCH
from hermes_ledger.projections.replay import create_tables, prepare_connection, replay_chunks

__all__ = ["build_scratch", "snapshot"]


@contextmanager
def snapshot(ledger: Ledger) -> Iterator[apsw.Connection]:
    """A read-only connection to ``ledger``'s file inside one read transaction."""
    conn, _version = connect(ledger.path, readonly=True)
    try:
        prepare_connection(conn)
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
    finally:
        conn.close()


def build_scratch(
    conn: apsw.Connection,
    projections: tuple[Projection, ...],
    until: int,
    chunk_size: int,
    progress: Callable[[int, int], None] | None = None,
    occurred_by: str | None = None,
) -> None:
    """Create ``projections``' tables in ``temp`` and replay positions 1..``until``
    (with ``occurred_by``, only those that happened at or before it).
    (No secondary indexes: nothing here looks rows up by anything but their key.)"""
    for projection in projections:
        create_tables(conn, projection, SCRATCH, indexes=False)
    replay_chunks(conn, projections, SCRATCH, 0, until, chunk_size, progress, occurred_by)
