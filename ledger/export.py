"""Exporting the log: JSON Lines (with a manifest), CSV, or a standalone SQLite database.

The JSONL form is the ledger's backup format: one event per line, every column
as stored (``data`` and ``meta`` embedded verbatim, so ``hermes-ledger import``
can rebuild the exact rows and hashes) and the business time ``occurred_at``
(derived from ``data`` and ``recorded_at``, as in the ledger), then one manifest
line. Every form keeps both times. SQLite builds
the lines, a page at a time (``SQL_JSONL_PAGE``), so an export streams in
constant memory at close to the speed of reading the table.

Files are written to a temporary file next to the target (``.NAME.XXXXXXXX.part``),
created readable by their owner only and locked while it is written, and renamed
into place when complete: a reader never sees half an export, and a failed export
leaves nothing behind. The ``.part`` files of an export that was killed (their
lock is gone with the process) are removed by the next export to the same place.
Only a regular file is ever replaced: a directory, device, FIFO, socket or
symbolic link at the target is refused. A name ending in ``.gz`` is
gzip-compressed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any, cast

import apsw

from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.errors import LedgerError, translate
from hermes_ledger.ledger.events import EVENT_TYPES
from hermes_ledger.ledger.export_markdown import write_markdown
from hermes_ledger.ledger.outfiles import (
    check_target,
    private_temp,
    remove_dead_parts,
    scratch,
)
from hermes_ledger.ledger.query import EventFilter
from hermes_ledger.ledger.sql import business_time
from hermes_ledger.ledger.store import Ledger
from hermes_ledger.ledger.transcript import (
    SYNTHETIC,
    TRANSCRIPT_COLUMNS,
    TRANSCRIPT_KEY,
    TRANSCRIPT_SEARCHED,
    TRANSCRIPT_TOKENIZER,
    transcript_values,
)

__all__ = [
    "EXPORT_COLUMNS",
    "EXPORT_FORMAT",
    "FORMATS",
    "ExportManifest",
    "Progress",
    "export",
    "export_to_stream",
    "format_for",
]

FORMATS = ("jsonl", "csv", "sqlite", "markdown")
EXPORT_FORMAT = "hermes-ledger-export"
"""``manifest.format`` of a JSONL export; ``manifest.format_version`` is 1."""
FORMAT_VERSION = 1

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while exporting."""

_CHUNK = 2000
_GZIP_LEVEL = 6


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
_PAYLOAD_BODY = "(SELECT p.body FROM payloads AS p WHERE p.position = events.position)"


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
EXPORT_COLUMNS = (
    "position", "event_id", "stream", "version", "type", "session_id", "data", "meta",
    "recorded_at", "occurred_at", "hash",
)  # fmt: skip
"""The columns of a CSV export and of a SQLite export's ``events``, in order: the
log's stored columns (``ledger.query.COLUMNS``) with the business time beside
``recorded_at``."""
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


def _stored_message_body() -> str:
    """SQL: a ``message_appended`` body in its current shape, read from the row.

    The export has no upcasters in SQL (the projections register one); while the
    type has one schema version, every stored body already is in its shape."""
    if EVENT_TYPES["message_appended"].schema_version != 1:  # pragma: no cover
        raise NotImplementedError(
            "message_appended has older stored shapes: the SQLite export must upcast them"
        )
    return "data"


# The transcript of a SQLite export: the rows ``ledger.transcript`` declares (the
# columns of the live ``messages`` projection, business time ``ts`` included),
# computed from the exported events themselves; synthetic turns are not in it.
_MESSAGE_BODY = _stored_message_body()
MESSAGE_COLUMNS = {c.name: c.python_type for c in TRANSCRIPT_COLUMNS}
SQL_MESSAGES = (
    "SELECT "
    + transcript_values(position="position", stream="stream", session_id="session_id",
                        body=_MESSAGE_BODY, ts=business_time(_MESSAGE_BODY, "recorded_at"),
                        private=_PAYLOAD_BODY)
    + " FROM events WHERE type = 'message_appended' AND NOT "
    + SYNTHETIC.format(body=_MESSAGE_BODY)
    + "{where} ORDER BY position"
)  # fmt: skip


def _filtered(template: str, where: str) -> str:
    """``template`` with its ``{where}`` replaced by EventFilter.where()'s conditions."""
    return template.replace("{where}", where)


@dataclass(frozen=True)
class ExportManifest:
    """What an export holds: the last line of a JSONL export, and the return value."""

    export_format: str
    count: int
    first_position: int | None
    last_position: int | None
    last_hash: str | None
    filters: dict[str, Any] = field(default_factory=dict)
    exported_at: str = ""
    generator: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def jsonl_line(self) -> bytes:
        """The manifest as the last line of a JSONL export."""
        body = {"format": EXPORT_FORMAT, "format_version": FORMAT_VERSION, **self.to_dict()}
        del body["export_format"]
        text = json.dumps({"manifest": body}, ensure_ascii=False, separators=(",", ":"))
        return text.encode() + b"\n"


def format_for(path: str | os.PathLike[str] | None) -> str:
    """The format a file name asks for: ``.csv`` CSV, ``.db``/``.sqlite`` SQLite, else JSONL."""
    if path is None:
        return "jsonl"
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".md", ".markdown")):
        return "markdown"
    if name.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite"
    return "jsonl"


def _generator() -> str:
    try:
        return f"hermes-ledger {metadata.version('hermes-ledger')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "hermes-ledger"


# -- snapshot reads --------------------------------------------------------------


@contextmanager
def _snapshot(led: Ledger) -> Iterator[apsw.Connection]:
    """One read transaction: the count, the rows and the manifest agree."""
    conn = led.connection
    try:
        conn.execute("BEGIN").fetchall()
        try:
            yield conn
        finally:
            if not conn.getautocommit():
                conn.execute("COMMIT").fetchall()
    except apsw.Error as exc:
        translate(exc, path=str(led.path))


def _total(conn: apsw.Connection, where: str, args: tuple[Any, ...]) -> int:
    row: Any = conn.execute(_filtered(SQL_COUNT, where), args).fetchone()
    return int(row[0])


def _write_jsonl(
    conn: apsw.Connection,
    out: IO[bytes],
    events: EventFilter,
    progress: Progress | None,
    now: Clock,
) -> ExportManifest:
    where, args = events.where()
    total = _total(conn, where, args) if progress is not None else 0
    page_sql = _filtered(SQL_JSONL_PAGE, where)
    count = after = 0
    first_position: int | None = None
    while True:
        row: Any = conn.execute(page_sql, (after, *args, _CHUNK)).fetchone()
        text, size, first, last = row
        if not size:
            break
        if not _page_is_sound(text, size, first, last):
            safe_sql = _filtered(SQL_JSONL_SAFE_PAGE, where)
            safe: Any = conn.execute(safe_sql, (after, *args, _CHUNK)).fetchone()
            text = safe[0]
        out.write(text)
        del text, row  # before the next page is read: one page in memory at a time
        if first_position is None:
            first_position = first
        count += size
        after = last
        if progress is not None:
            progress(count, total)
    last_hash: Any = conn.execute(SQL_HASH_AT, (after,)).fetchone() if count else (None,)
    manifest = ExportManifest(
        export_format="jsonl",
        count=count,
        first_position=first_position,
        last_position=after or None,
        last_hash=last_hash[0],
        filters=events.describe(),
        exported_at=format_utc(now()),
        generator=_generator(),
    )
    out.write(manifest.jsonl_line())
    if progress is not None and not count:
        progress(0, total)
    return manifest


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


def _summary(conn: apsw.Connection, events: EventFilter, fmt: str, now: Clock) -> ExportManifest:
    where, args = events.where()
    row: Any = conn.execute(_filtered(SQL_SUMMARY, where), args + args).fetchone()
    count, first, last, last_hash = row
    return ExportManifest(
        export_format=fmt,
        count=count,
        first_position=first,
        last_position=last,
        last_hash=last_hash,
        filters=events.describe(),
        exported_at=format_utc(now()),
        generator=_generator(),
    )


def _write_csv(
    conn: apsw.Connection,
    out: IO[bytes],
    events: EventFilter,
    progress: Progress | None,
    now: Clock,
) -> ExportManifest:
    where, args = events.where()
    manifest = _summary(conn, events, "csv", now)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    try:
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        done = 0
        for row in conn.execute(_filtered(SQL_ROWS, where), args):
            writer.writerow(row)
            done += 1
            if progress is not None and done % _CHUNK == 0:
                progress(done, manifest.count)
        if progress is not None:
            progress(done, manifest.count)
        text.flush()
    finally:
        text.detach()
    return manifest


def _write_sqlite(
    conn: apsw.Connection,
    target: Path,
    events: EventFilter,
    progress: Progress | None,
    now: Clock,
) -> ExportManifest:
    """A standalone database built with sqlite-utils: ``events`` (as in the ledger,
    without its triggers; ``occurred_at`` stored), ``messages`` with a full-text index
    ``messages_fts``, and a one-row ``export_manifest``."""
    import sqlite_utils

    where, args = events.where()
    manifest = _summary(conn, events, "sqlite", now)
    db = sqlite_utils.Database(target)
    try:
        db.conn.execute("PRAGMA journal_mode = OFF")  # a scratch file until it is renamed
        db.conn.execute("PRAGMA synchronous = OFF")
        columns = {c: int if c in ("position", "version") else str for c in EXPORT_COLUMNS}
        events_table = db.table("events")
        events_table.create(columns, pk="position", not_null=set(columns) - {"session_id"})
        names = list(columns)
        done = 0

        def rows() -> Iterator[dict[str, Any]]:
            nonlocal done
            for row in conn.execute(_filtered(SQL_ROWS, where), args):
                done += 1
                if progress is not None and done % _CHUNK == 0:
                    progress(done, manifest.count)
                yield dict(zip(names, row, strict=True))

        events_table.insert_all(rows(), batch_size=_CHUNK)
        events_table.create_index(["event_id"], unique=True)
        events_table.create_index(["stream", "version"], unique=True)
        events_table.create_index(["session_id", "position"])
        events_table.create_index(["type"])
        events_table.create_index(["occurred_at"])
        messages = db.table("messages")
        messages.create(MESSAGE_COLUMNS, pk=TRANSCRIPT_KEY)
        message_names = list(MESSAGE_COLUMNS)
        messages.insert_all(
            (
                dict(zip(message_names, row, strict=True))
                for row in conn.execute(_filtered(SQL_MESSAGES, where), args)
            ),
            batch_size=_CHUNK,
        )
        messages.create_index(["session_id", "position"])
        messages.enable_fts([TRANSCRIPT_SEARCHED], tokenize=TRANSCRIPT_TOKENIZER)
        body = manifest.to_dict()
        body["filters"] = json.dumps(body["filters"], ensure_ascii=False)
        db.table("export_manifest").insert({"format": EXPORT_FORMAT, **body}, pk="format")
        if progress is not None:
            progress(done, manifest.count)
    finally:
        db.close()
    return manifest


@contextmanager
def _open_output(path: Path, compress: bool) -> Iterator[IO[bytes]]:
    """``path`` opened for writing bytes, through gzip if ``compress``."""
    with open(path, "wb") as raw:
        if compress:
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0
            ) as zipped:
                yield cast(IO[bytes], zipped)
        else:
            yield raw


def export_to_stream(
    led: Ledger,
    out: IO[bytes],
    *,
    format: str = "jsonl",
    events: EventFilter | None = None,
    progress: Progress | None = None,
    clock: Clock = system_clock,
) -> ExportManifest:
    """Write the matching events of ``led`` to the binary stream ``out`` as JSONL
    (ending with the manifest line) or CSV (a header row, then one row per event).

    Reads one consistent snapshot in constant memory. ``led`` should be a ledger
    of its own (e.g. ``Ledger.open(path, readonly=True)``): the export holds one
    read transaction on its connection. ``progress(done, total)`` is called every
    few thousand events when given.
    """
    if format not in ("jsonl", "csv", "markdown"):
        raise LedgerError(
            f"the {format!r} format needs an output file",
            hint="pass -o FILE (e.g. -o export.db)",
        )
    events = events or EventFilter()
    with _snapshot(led) as conn:
        if format == "jsonl":
            return _write_jsonl(conn, out, events, progress, clock)
        if format == "markdown":  # readable, one section per session (export_markdown)
            manifest = _summary(conn, events, "markdown", clock)
            write_markdown(
                led,
                out,
                events,
                count=manifest.count,
                exported_at=manifest.exported_at,
                generator=manifest.generator,
            )
            return manifest
        return _write_csv(conn, out, events, progress, clock)


def export(
    ledger_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    format: str | None = None,
    events: EventFilter | None = None,
    progress: Progress | None = None,
    stdout: IO[bytes] | None = None,
    clock: Clock = system_clock,
) -> ExportManifest:
    """Export the ledger at ``ledger_path`` to ``output`` (a path; None for ``stdout``).

    ``format`` is ``jsonl``, ``csv`` or ``sqlite``; by default it follows the output
    name (``.csv``, ``.db``/``.sqlite``; otherwise JSONL). A name ending in ``.gz``
    is gzip-compressed. The file is created owner-only (0600) and appears, complete,
    only when the export succeeds. ``events`` selects what is exported.
    """
    fmt = format or format_for(output)
    if fmt not in FORMATS:
        raise LedgerError(f"unknown export format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    ledger_path = Path(ledger_path)
    events = events or EventFilter()
    with Ledger.open(ledger_path, readonly=True) as led:
        if output is None:
            if stdout is None:
                raise LedgerError("export needs an output path or a stream")
            return export_to_stream(
                led, stdout, format=fmt, events=events, progress=progress, clock=clock
            )
        target = Path(output)
        check_target(target, ledger_path)
        remove_dead_parts(target)
        try:
            return _export_file(led, target, fmt, events, progress, clock)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LedgerError(
                f"cannot write {target}: {reason}",
                hint=f"check the free space and permissions of {target.parent}; nothing was "
                "written (a previous file at that path is unchanged)",
            ) from None


def _export_file(
    led: Ledger,
    target: Path,
    fmt: str,
    events: EventFilter,
    progress: Progress | None,
    clock: Clock,
) -> ExportManifest:
    compress = target.name.lower().endswith(".gz")
    with private_temp(target) as temp:
        if fmt == "sqlite":
            with _snapshot(led) as conn:
                if not compress:
                    return _write_sqlite(conn, temp, events, progress, clock)
                with scratch(target) as plain:
                    manifest = _write_sqlite(conn, plain, events, progress, clock)
                    with open(plain, "rb") as src, _open_output(temp, True) as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                return manifest
        with _open_output(temp, compress) as out:
            return export_to_stream(
                led, out, format=fmt, events=events, progress=progress, clock=clock
            )
