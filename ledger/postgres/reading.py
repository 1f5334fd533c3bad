"""Reading a PostgreSQL log for the command line: what it holds (``status``), the
events an ``EventFilter`` chooses (``events``), and the JSONL export, line for line
the SQLite export's format (``ledger.export``), so ``hermes-ledger import`` restores
it into a SQLite ledger.

Every statement reads ``event_bodies`` (each event whole, its payload merged in,
"[erased]" once erased) in one ``REPEATABLE READ`` snapshot.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any, cast

import psycopg

from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.errors import InvalidInputError, LedgerError
from hermes_ledger.ledger.export import ExportManifest, format_for
from hermes_ledger.ledger.outfiles import check_target, private_temp, remove_dead_parts
from hermes_ledger.ledger.postgres.log import PostgresLog
from hermes_ledger.ledger.query import EventFilter
from hermes_ledger.ledger.records import Recorded

__all__ = [
    "PostgresStatus",
    "export",
    "export_jsonl",
    "matching_events",
    "migrations_applied_here",
    "snapshot",
    "status",
]

Connection = psycopg.Connection[Any]
Progress = Callable[[int, int], None]

_COLUMNS = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"
_PAGE = 1000

SQL_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
SQL_STATUS = (
    "SELECT count(*), coalesce(max(position), 0), count(DISTINCT stream),"
    " min(recorded_at), max(recorded_at) FROM events"
)
SQL_HEAD_HASH = "SELECT hash FROM events ORDER BY position DESC LIMIT 1"
SQL_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_migrations"
SQL_HAS_SESSION_MAP = "SELECT to_regclass('session_map') IS NOT NULL"
SQL_SESSIONS = "SELECT count(*) FROM session_map"
SQL_APPLIED_HERE = (
    "SELECT count(*) FROM schema_migrations WHERE applied_at >="
    " (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())"
)
"""How many migrations this connection applied (``PostgresLog.open`` applies the
missing ones): all of them when it created the ledger."""
SQL_PAGE = (
    f"SELECT {_COLUMNS} FROM event_bodies WHERE position > %s{{where}} ORDER BY position LIMIT %s"
)
SQL_TAIL = (
    f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS} FROM event_bodies WHERE TRUE{{where}}"
    " ORDER BY position DESC LIMIT %s) AS newest ORDER BY position"
)
SQL_COUNT_AFTER = "SELECT count(*) FROM event_bodies WHERE position > %s{where}"
SQL_EXPORT_PAGE = (
    "SELECT b.position, b.event_id, b.stream, b.version, b.type, b.session_id, b.data,"
    " b.meta, b.recorded_at, b.occurred_at, b.hash, encode(p.salt, 'hex')"
    " FROM event_bodies AS b LEFT JOIN payloads AS p ON p.position = b.position"
    " WHERE b.position > %s{where} ORDER BY b.position LIMIT %s"
)
_TIME_COLUMN = {False: "occurred_at", True: "recorded_at"}


@dataclass(frozen=True)
class PostgresStatus:
    """What ``hermes-ledger status`` says about a PostgreSQL ledger. ``where`` is
    ``host:port/dbname as user`` (never a password); ``sessions`` is None when the
    projections are not there."""

    backend: str
    where: str
    schema_version: int
    events: int
    head: int
    head_hash: str | None
    streams: int
    sessions: int | None
    first_recorded_at: str | None
    last_recorded_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def snapshot(log: PostgresLog) -> Iterator[Connection]:
    """One read-only repeatable-read transaction on the log's connection."""
    conn = log.connection
    try:
        with conn.transaction():
            conn.execute(SQL_SNAPSHOT)
            yield conn
    except psycopg.Error as exc:
        raise LedgerError(
            f"cannot read the ledger at {log.where}: {str(exc).strip()}",
            hint="check the connection string and that this role may read the ledger",
        ) from None


def status(log: PostgresLog) -> PostgresStatus:
    """Counts, head and times of ``log``, in one snapshot."""
    with snapshot(log) as conn:
        row: Any = conn.execute(SQL_STATUS).fetchone()
        head_hash: Any = conn.execute(SQL_HEAD_HASH).fetchone()
        version: Any = conn.execute(SQL_SCHEMA_VERSION).fetchone()
        has_map: Any = conn.execute(SQL_HAS_SESSION_MAP).fetchone()
        sessions: Any = conn.execute(SQL_SESSIONS).fetchone() if has_map[0] else None
    return PostgresStatus(
        backend="postgresql",
        where=log.where,
        schema_version=int(version[0]),
        events=int(row[0]),
        head=int(row[1]),
        head_hash=head_hash[0] if head_hash else None,
        streams=int(row[2]),
        sessions=int(sessions[0]) if sessions is not None else None,
        first_recorded_at=row[3],
        last_recorded_at=row[4],
    )


def migrations_applied_here(log: PostgresLog) -> int:
    """How many schema migrations ``log``'s connection applied when it opened."""
    with snapshot(log) as conn:
        row: Any = conn.execute(SQL_APPLIED_HERE).fetchone()
    return int(row[0])


def _where(events: EventFilter) -> tuple[str, tuple[Any, ...]]:
    """``events`` as ``" AND …"`` conditions on ``event_bodies`` and their bindings."""
    if events.user is not None:
        raise LedgerError(
            "choosing a user's events (--user) does not work on a PostgreSQL ledger yet",
            hint="choose by --session-key or --session-id instead",
        )
    conditions: list[tuple[str, Any]] = [
        ("stream = %s", events.session_key),
        ("session_id = %s", events.session_id),
        ("type = ANY(%s)", list(events.types) or None),
        (f"{_TIME_COLUMN[events.recorded]} >= %s", events.since),
        (f"{_TIME_COLUMN[events.recorded]} < %s", events.until),
        ("position >= %s", events.from_position),
        ("position <= %s", events.to_position),
    ]
    given = [(sql, value) for sql, value in conditions if value is not None]
    return "".join(f" AND {sql}" for sql, _ in given), tuple(value for _, value in given)


def matching_events(
    log: PostgresLog,
    events: EventFilter | None = None,
    *,
    limit: int | None = None,
    tail: int | None = None,
    on_more: Callable[[int], None] | None = None,
) -> Iterator[Recorded]:
    """The events ``events`` chooses, oldest first: the oldest ``limit`` (then
    ``on_more(count)`` with how many more match, when some do) or the newest
    ``tail``. One snapshot, read in pages."""
    if limit is not None and tail is not None:
        raise InvalidInputError("give a limit or a tail, not both")
    where, args = _where(events or EventFilter())
    with snapshot(log) as conn:
        if tail is not None:
            for row in conn.execute(SQL_TAIL.format(where=where), (*args, tail)):
                yield Recorded(*row)
            return
        after, remaining = 0, limit
        while remaining is None or remaining > 0:
            size = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = conn.execute(SQL_PAGE.format(where=where), (after, *args, size)).fetchall()
            for row in rows:
                yield Recorded(*row)
            if len(rows) < size:
                return
            after = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
        more: Any = conn.execute(SQL_COUNT_AFTER.format(where=where), (after, *args)).fetchone()
        if more[0] and on_more is not None:
            on_more(int(more[0]))


def _embedded(name: str, text: str) -> str:
    """A ``data`` or ``meta`` text as the SQLite export embeds it: verbatim, or, when
    it holds a line break (which the ledger never writes), re-serialised on one line
    followed by its exact text as ``<name>_text``."""
    if "\n" not in text and "\r" not in text:
        return text
    compact = json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    return f'{compact},"{name}_text":{_quoted(text)}'


def _quoted(value: str | None) -> str:
    return json.dumps(value, ensure_ascii=False)


def _line(row: tuple[Any, ...]) -> str:
    """One export line: the SQLite export's keys in its order (``ledger.export``)."""
    pos, event_id, stream, version, type_, session_id, data, meta, rec, occ, hash_, salt = row
    payload = f',"payload":{{"salt":"{salt}"}}' if salt is not None else ""
    return (
        f'{{"position":{pos},"event_id":{_quoted(event_id)},"stream":{_quoted(stream)},'
        f'"version":{version},"type":{_quoted(type_)},"session_id":{_quoted(session_id)},'
        f'"data":{_embedded("data", data)},"meta":{_embedded("meta", meta)},'
        f'"recorded_at":{_quoted(rec)},"occurred_at":{_quoted(occ)},"hash":{_quoted(hash_)}'
        f"{payload}}}\n"
    )


def _generator() -> str:
    try:
        return f"hermes-ledger {metadata.version('hermes-ledger')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "hermes-ledger"


def export_jsonl(
    log: PostgresLog,
    out: IO[bytes],
    events: EventFilter | None = None,
    *,
    progress: Progress | None = None,
    clock: Clock = system_clock,
) -> ExportManifest:
    """Write the chosen events of ``log`` to ``out`` as the SQLite ledger's JSONL
    export (one event per line, then the manifest line), from one snapshot."""
    events = events or EventFilter()
    where, args = _where(events)
    count = after = 0
    first: int | None = None
    last_hash: str | None = None
    with snapshot(log) as conn:
        while True:
            rows = conn.execute(SQL_EXPORT_PAGE.format(where=where), (after, *args, _PAGE))
            page = rows.fetchall()
            if not page:
                break
            out.write("".join(_line(row) for row in page).encode())
            first = page[0][0] if first is None else first
            after, last_hash = page[-1][0], page[-1][10]
            count += len(page)
            if progress is not None:
                progress(count, count)
    manifest = ExportManifest(
        export_format="jsonl",
        count=count,
        first_position=first,
        last_position=after or None,
        last_hash=last_hash,
        filters=events.describe(),
        exported_at=format_utc(clock()),
        generator=_generator(),
    )
    out.write(manifest.jsonl_line())
    return manifest


def export(
    log: PostgresLog,
    output: str | os.PathLike[str] | None,
    *,
    format: str | None = None,
    events: EventFilter | None = None,
    progress: Progress | None = None,
    stdout: IO[bytes] | None = None,
    clock: Clock = system_clock,
) -> ExportManifest:
    """``ledger.export.export`` for a PostgreSQL ledger, JSONL only: to ``output``
    (created owner-only, complete or not at all; ``.gz`` compresses) or ``stdout``."""
    fmt = format or format_for(output)
    if fmt != "jsonl":
        raise LedgerError(
            f"the {fmt} export does not work on a PostgreSQL ledger yet",
            hint="export JSONL (--format jsonl), then `hermes-ledger import` it into a"
            " SQLite ledger and export that",
        )
    if output is None:
        if stdout is None:
            raise LedgerError("export needs an output path or a stream")
        return export_jsonl(log, stdout, events, progress=progress, clock=clock)
    target = Path(output)
    check_target(target, Path(os.devnull))
    remove_dead_parts(target)
    try:
        with private_temp(target) as temp, open(temp, "wb") as raw:
            if not target.name.lower().endswith(".gz"):
                return export_jsonl(log, raw, events, progress=progress, clock=clock)
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
                out = cast(IO[bytes], zipped)
                return export_jsonl(log, out, events, progress=progress, clock=clock)
    except OSError as exc:
        raise LedgerError(
            f"cannot write {target}: {exc.strerror or exc}",
            hint=f"check the free space and permissions of {target.parent}; nothing was"
            " written (a previous file at that path is unchanged)",
        ) from None
