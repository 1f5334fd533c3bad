"""What an export reads from a SQLite ledger: the row source behind every format of
``ledger.export`` (``ledger.postgres.reading`` has PostgreSQL's).

``ExportRows`` is what a writer of ``ledger.export`` may ask for: a summary
(count, first and last position, last hash), the rows (``EXPORT_COLUMNS``, each
event whole: its personal fields merged in, "[erased]" once erased), the JSONL
lines a page at a time, the bodies for the Markdown form, and the start of a
session. One ``ExportRows`` reads one filter in one snapshot.

Here SQLite builds the JSONL lines (``SQL_JSONL_PAGE``), a page at a time, so an
export streams in constant memory at close to the speed of reading the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import apsw

from hermes_ledger.ledger.errors import translate
from hermes_ledger.ledger.personal import merged_sql
from hermes_ledger.ledger.query import EventFilter
from hermes_ledger.ledger.records import Recorded
from hermes_ledger.ledger.store import Ledger

__all__ = [
    "EXPORT_COLUMNS",
    "ExportRows",
    "JsonlPage",
    "SqliteRows",
    "Summary",
    "sqlite_rows",
]

EXPORT_COLUMNS = (
    "position", "event_id", "stream", "version", "type", "session_id", "data", "meta",
    "recorded_at", "occurred_at", "hash",
)  # fmt: skip
"""The columns of a CSV export and of a SQLite export's ``events``, in order: the
log's stored columns (``ledger.query.COLUMNS``) with the business time beside
``recorded_at``."""

Summary = tuple[int, int | None, int | None, str | None]
"""(count, first position, last position, hash of the last event) of a selection."""
JsonlPage = tuple[bytes, int, int, int]
"""(lines, how many, first position, last position) of a page of JSONL lines."""

PAGE = 2000
"""Events per page (and between two progress calls)."""


class ExportRows(Protocol):
    """The events one filter selects, read from one snapshot of a log, in position
    order: what every export format is written from (``ledger.export``)."""

    def summary(self) -> Summary:
        """The selection's count, first and last position and last hash."""
        ...

    def count(self) -> int:
        """How many events the selection holds."""
        ...

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """One tuple of ``EXPORT_COLUMNS`` per event, ``data`` whole."""
        ...

    def jsonl_pages(self) -> Iterator[JsonlPage]:
        """The JSONL lines of the selection (``ledger.export``'s module docstring
        says what a line holds), a page at a time."""
        ...

    def hash_at(self, position: int) -> str | None:
        """The hash of the event at ``position``."""
        ...

    def bodies(self) -> Iterator[Recorded]:
        """Each selected event whole (for the Markdown form)."""
        ...

    def session_start(self, session_id: str) -> tuple[str, str] | None:
        """``(data, recorded_at)`` of the ``session_started`` of ``session_id``, in or
        out of the selection; None when the log has none."""
        ...


# ``data`` as the event said it: its payload (its personal fields, ``ledger.personal``)
# merged in, or "[erased]" in their place once erased. An event with a payload gets
# "payload": {"salt": hex} after its hash, so that an import can split the body again
# into the stored row and payload (and check both, against the hash and the digest
# in meta); an erased event has none, and its data is the stored text.
_WHOLE_DATA = (
    "coalesce((SELECT json_patch(events.data, p.body) FROM payloads AS p"
    " WHERE p.position = events.position), events.data)"
)
_PAYLOAD_MEMBER = (
    'coalesce((SELECT \',"payload":{"salt":"\' || lower(hex(p.salt)) || \'"}\''
    " FROM payloads AS p WHERE p.position = events.position), '')"
)


def _jsonl_page(data: str, meta: str, ordered: bool) -> str:
    """The statement turning a page of events into JSONL, given the SQL for the
    ``data`` and ``meta`` values: ``(text, count, first position, last position)``
    for the first ``?`` (limit) events after position ``?`` that match ``{where}``.

    Each line is one printf() (faster than a chain of ``||``), and the page comes
    back as one UTF-8 blob, so Python handles a page, not a row. The lines are
    concatenated in the order the subquery yields them (SQLite keeps a
    subquery's ORDER BY for an aggregate over it; the caller checks the ends of
    every page); ``ordered`` adds group_concat's own ORDER BY, which is slower.
    """
    layout = (
        '{"position":%d,"event_id":%s,"stream":%s,"version":%d,"type":%s,'
        '"session_id":%s,"data":%s,"meta":%s,"recorded_at":%s,"occurred_at":%s,"hash":%s%s}\n'
    )
    line = (
        f"printf('{layout}', position, json_quote(event_id), json_quote(stream), version,"
        f" json_quote(type), json_quote(session_id), {data}, {meta}, json_quote(recorded_at),"
        f" json_quote(occurred_at), json_quote(hash), {_PAYLOAD_MEMBER})"
    )
    order = " ORDER BY position" if ordered else ""
    return (
        f"SELECT CAST(group_concat(line, ''{order}) AS BLOB), count(*), min(position),"
        f" max(position) FROM (SELECT position, {line} AS line FROM events"
        " WHERE position > ?{where} ORDER BY position LIMIT ?)"
    )


# A page of events, one line each: ``data`` and ``meta`` embedded as stored,
# byte for byte, so an import can restore them exactly.
SQL_JSONL_PAGE = _jsonl_page(_WHOLE_DATA, "meta", ordered=False)
# The same page, for the rare page the fast form does not suit: some event's data
# or meta holds a line break (legal JSON whitespace, though the ledger never writes
# one), so that value is embedded re-serialised and its exact text follows as
# "data_text" / "meta_text"; and the order is group_concat's own.
_ONE_LINE = (
    "CASE WHEN instr({c}, char(10)) OR instr({c}, char(13))"
    " THEN json({c}) || ',\"{name}_text\":' || json_quote({c}) ELSE {c} END"
)
SQL_JSONL_SAFE_PAGE = _jsonl_page(
    _ONE_LINE.format(c=_WHOLE_DATA, name="data"),
    _ONE_LINE.format(c="meta", name="meta"),
    ordered=True,
)
SQL_HASH_AT = "SELECT hash FROM events WHERE position = ?"
SQL_ROWS = (
    "SELECT "
    + ", ".join(_WHOLE_DATA if c == "data" else c for c in EXPORT_COLUMNS)
    + " FROM events WHERE 1{where} ORDER BY position"
)
SQL_COUNT = "SELECT count(*) FROM events WHERE 1{where}"
SQL_SUMMARY = (
    "SELECT count(*), min(position), max(position),"
    " (SELECT hash FROM events WHERE 1{where} ORDER BY position DESC LIMIT 1)"
    " FROM events WHERE 1{where}"
)
# The selected events whole, as Recorded rows (for the Markdown form).
SQL_SELECTED_BODIES = (
    "SELECT e.position, e.event_id, e.stream, e.version, e.type, e.session_id, "
    + merged_sql("e.data", "p.body")
    + ", e.meta, e.recorded_at, e.hash FROM events AS e"
    " LEFT JOIN payloads AS p ON p.position = e.position"
    " WHERE e.position IN (SELECT position FROM events WHERE 1{where}) ORDER BY e.position"
)
# The start of one session, for the heading of a session whose start is not exported.
SQL_SESSION_START = (
    "SELECT data, recorded_at FROM events WHERE type = 'session_started' AND session_id = ?"
    " ORDER BY position LIMIT 1"
)


def _filtered(template: str, where: str) -> str:
    """``template`` with its ``{where}`` replaced by EventFilter.where()'s conditions."""
    return template.replace("{where}", where)


class SqliteRows:
    """``ExportRows`` of a SQLite ledger, inside the read transaction ``sqlite_rows`` opened."""

    def __init__(self, conn: apsw.Connection, events: EventFilter) -> None:
        self._conn = conn
        self._where, self._args = events.where()

    def summary(self) -> Summary:
        sql = _filtered(SQL_SUMMARY, self._where)
        row: Any = self._conn.execute(sql, self._args + self._args).fetchone()
        return int(row[0]), row[1], row[2], row[3]

    def count(self) -> int:
        row: Any = self._conn.execute(_filtered(SQL_COUNT, self._where), self._args).fetchone()
        return int(row[0])

    def rows(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._conn.execute(_filtered(SQL_ROWS, self._where), self._args))

    def jsonl_pages(self) -> Iterator[JsonlPage]:
        page_sql = _filtered(SQL_JSONL_PAGE, self._where)
        after = 0
        while True:
            row: Any = self._conn.execute(page_sql, (after, *self._args, PAGE)).fetchone()
            text, size, first, last = row
            del row
            if not size:
                return
            if not _page_is_sound(text, size, first, last):
                safe_sql = _filtered(SQL_JSONL_SAFE_PAGE, self._where)
                safe: Any = self._conn.execute(safe_sql, (after, *self._args, PAGE)).fetchone()
                text = safe[0]
                del safe
            after = last
            yield text, size, first, last
            del text  # before the next page is read: one page in memory at a time

    def hash_at(self, position: int) -> str | None:
        row: Any = self._conn.execute(SQL_HASH_AT, (position,)).fetchone()
        return None if row is None else row[0]

    def bodies(self) -> Iterator[Recorded]:
        sql = _filtered(SQL_SELECTED_BODIES, self._where)
        return (Recorded(*row) for row in self._conn.execute(sql, self._args))

    def session_start(self, session_id: str) -> tuple[str, str] | None:
        row: Any = self._conn.execute(SQL_SESSION_START, (session_id,)).fetchone()
        return None if row is None else (row[0], row[1])


def _page_is_sound(text: bytes, size: int, first: int, last: int) -> bool:
    """One line per event, and the page starts and ends with its first and last
    positions (a cheap check on the concatenation order)."""
    if text.count(b"\n") != size or b"\r" in text:
        return False
    start = text.rfind(b'\n{"position":', 0, len(text) - 1) + 1
    return _position_of(text) == first and _position_of(text, start) == last


def _position_of(text: bytes, start: int = 0) -> int:
    """``{"position":123,…`` at ``start`` -> 123 (lines as SQL_JSONL_PAGE writes them)."""
    begin = start + len(b'{"position":')
    return int(text[begin : text.index(b",", begin)])


@contextmanager
def sqlite_rows(led: Ledger, events: EventFilter) -> Iterator[SqliteRows]:
    """The rows of ``events`` in ``led``, in one read transaction: the count, the rows
    and the manifest agree."""
    conn = led.connection
    try:
        conn.execute("BEGIN").fetchall()
        try:
            yield SqliteRows(conn, events)
        finally:
            if not conn.getautocommit():
                conn.execute("COMMIT").fetchall()
    except apsw.Error as exc:
        translate(exc, path=str(led.path))
