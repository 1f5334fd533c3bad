"""The session code's reads on a PostgreSQL ledger: ``LogReads``, what the session
store, the close sequence and the reads of ``gateway.sessions.reads`` use of a
SQLite ``Ledger`` (``append``, ``query``, ``stream_version``), over a ``PostgresLog``.

The session code's statements are written once, in standard SQL, against tables
both backends have: ``events`` and the projections ``session_map``,
``session_history`` and ``messages`` (``projections.postgres`` keeps them with the
SQLite columns and meaning, inside every append's transaction). ``query`` runs
such a statement on PostgreSQL: ``?`` and ``?N`` placeholders become ``%s`` (the
arguments reordered, repeated for a ``?N`` used twice), ``%`` is escaped. One
statement is one snapshot on both (PostgreSQL's READ COMMITTED takes one per
statement), so a key's version and its session, read together, are the ones an
expected-version append then checks.

``reads.session_ledger(ledger)`` chooses by the backend: a SQLite ``Ledger`` as it
is, a ``PostgresLog`` through ``over_postgres`` (this module, and so psycopg, is
imported only then).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import psycopg

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.events import EventModel
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.records import AppendResult
from hermes_ledger.ledger.versions import ANY, ExpectedVersion

__all__ = ["LogReads", "over_postgres", "to_postgres"]

_PLACEHOLDER = re.compile(r"\?(\d*)")


def to_postgres(sql: str, args: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """``sql`` (SQLite's ``?`` or ``?N`` placeholders, not both) and ``args`` as
    psycopg runs them: ``%s`` placeholders with their arguments in order."""
    ordered: list[Any] = []
    numbered: set[bool] = set()

    def one(match: re.Match[str]) -> str:
        number = match.group(1)
        numbered.add(bool(number))
        index = int(number) - 1 if number else len(ordered)
        if not 0 <= index < len(args):
            raise LedgerError(f"the statement names argument {index + 1} of {len(args)}")
        ordered.append(args[index])
        return "%s"

    text = _PLACEHOLDER.sub(one, sql.replace("%", "%%"))
    if len(numbered) > 1:
        raise LedgerError("a statement mixes ? and ?N placeholders")
    return text, tuple(ordered)


class LogReads:
    """What the session code uses of a ``Ledger``, over a ``PostgresLog`` (see the
    module docstring). Calls take turns with the log's own (its lock), so threads
    may share one; ``log`` is the log itself."""

    def __init__(self, log: PostgresLog) -> None:
        self.log = log

    def append(
        self,
        stream: str,
        events: Iterable[EventModel | Mapping[str, Any]],
        expected_version: ExpectedVersion = ANY,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> AppendResult:
        return self.log.append(stream, events, expected_version, meta=meta)

    def stream_version(self, stream: str) -> int:
        return self.log.stream_version(stream)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Rows of one standard-SQL statement written for SQLite (``?`` / ``?N``)."""
        text, ordered = to_postgres(sql, args)
        with self.log._lock:  # one connection: take turns with appends (as projections do)
            try:
                return self.log.connection.execute(text, ordered).fetchall()
            except psycopg.Error as exc:
                raise LedgerError(f"{self.log.where}: {str(exc).strip()}") from exc


def over_postgres(log: PostgresLog | LogReads) -> Ledger:
    """``log`` as the session code reads and appends through it (``LogReads``), with
    the PostgreSQL projections attached (its reads need them; idempotent)."""
    if isinstance(log, LogReads):
        return cast(Ledger, log)
    from hermes_ledger.projections import postgres as pg_projections

    pg_projections.attach(log)
    return cast(Ledger, LogReads(log))  # what the session code uses of a Ledger
