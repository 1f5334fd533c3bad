"""Exporting the log: JSON Lines (with a manifest), CSV, or a standalone SQLite database.

The JSONL form is the ledger's backup format: one event per line, every column
as stored (``data`` and ``meta`` embedded verbatim, so ``hermes-ledger import``
can rebuild the exact rows and hashes) and the business time ``occurred_at``
(derived from ``data`` and ``recorded_at``, as in the ledger), then one manifest
line. Every form keeps both times.

One writer per format, for both backends: each reads an ``ExportRows`` (the row
source of one snapshot: ``ledger.export_rows`` for SQLite, ``ledger.postgres.reading``
for PostgreSQL), so an export of a PostgreSQL ledger is the same file as the export
of the same events in a SQLite one, and imports the same way.

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
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import IO, Any, cast

import apsw

from hermes_ledger.ledger.backend import is_dsn, open_log
from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.events import EVENT_TYPES
from hermes_ledger.ledger.export_markdown import write_markdown
from hermes_ledger.ledger.export_rows import (
    EXPORT_COLUMNS,
    PAGE,
    ExportRows,
    Summary,
    sqlite_rows,
)
from hermes_ledger.ledger.outfiles import (
    check_target,
    private_temp,
    remove_dead_parts,
    scratch,
)
from hermes_ledger.ledger.query import EventFilter
from hermes_ledger.ledger.store import Ledger
from hermes_ledger.ledger.transcript import (
    SYNTHETIC,
    TRANSCRIPT_COLUMNS,
    TRANSCRIPT_KEY,
    TRANSCRIPT_SEARCHED,
    TRANSCRIPT_TOKENIZER,
    transcript_names,
    transcript_values,
)

__all__ = [
    "EXPORT_COLUMNS",
    "EXPORT_FORMAT",
    "FORMATS",
    "ExportManifest",
    "OpenRows",
    "Progress",
    "export",
    "export_rows",
    "export_to_stream",
    "format_for",
    "stream_rows",
]

FORMATS = ("jsonl", "csv", "sqlite", "markdown")
EXPORT_FORMAT = "hermes-ledger-export"
"""``manifest.format`` of a JSONL export; ``manifest.format_version`` is 1."""
FORMAT_VERSION = 1

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while exporting."""
OpenRows = Callable[[EventFilter], AbstractContextManager[ExportRows]]
"""Opens the row source of a filter in one snapshot of a log (``export_rows.sqlite_rows``
of a SQLite ledger, ``postgres.reading.postgres_rows`` of a PostgreSQL one)."""

_GZIP_LEVEL = 6
_STREAMED = ("jsonl", "csv", "markdown")


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
# computed in the export's own database from the events it holds (``data`` whole,
# so no payload: ``private`` stays NULL), whichever backend they came from;
# synthetic turns are not in it.
_MESSAGE_BODY = _stored_message_body()
MESSAGE_COLUMNS = {c.name: c.python_type for c in TRANSCRIPT_COLUMNS}
SQL_EXPORT_MESSAGES = (
    f"INSERT INTO messages ({transcript_names()}) SELECT "
    + transcript_values(position="position", stream="stream", session_id="session_id",
                        body=_MESSAGE_BODY, ts="occurred_at")
    + " FROM events WHERE type = 'message_appended' AND NOT "
    + SYNTHETIC.format(body=_MESSAGE_BODY)
    + " ORDER BY position"
)  # fmt: skip


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


def _manifest(summary: Summary, events: EventFilter, fmt: str, now: Clock) -> ExportManifest:
    count, first, last, last_hash = summary
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


# -- one writer per format ---------------------------------------------------------


def _write_jsonl(
    rows: ExportRows, out: IO[bytes], events: EventFilter, progress: Progress | None, now: Clock
) -> ExportManifest:
    total = rows.count() if progress is not None else 0
    count = after = 0
    first_position: int | None = None
    for page in rows.jsonl_pages():
        text, size, first, last = page
        out.write(text)
        del page, text  # before the next page is read: one page in memory at a time
        if first_position is None:
            first_position = first
        count += size
        after = last
        if progress is not None:
            progress(count, total)
    last_hash = rows.hash_at(after) if count else None
    manifest = _manifest((count, first_position, after or None, last_hash), events, "jsonl", now)
    out.write(manifest.jsonl_line())
    if progress is not None and not count:
        progress(0, total)
    return manifest


def _write_csv(
    rows: ExportRows, out: IO[bytes], events: EventFilter, progress: Progress | None, now: Clock
) -> ExportManifest:
    manifest = _manifest(rows.summary(), events, "csv", now)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    try:
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        done = 0
        for row in rows.rows():
            writer.writerow(row)
            done += 1
            if progress is not None and done % PAGE == 0:
                progress(done, manifest.count)
        if progress is not None:
            progress(done, manifest.count)
        text.flush()
    finally:
        text.detach()
    return manifest


def _write_markdown(
    rows: ExportRows, out: IO[bytes], events: EventFilter, progress: Progress | None, now: Clock
) -> ExportManifest:
    """Readable, one section per session (``ledger.export_markdown``)."""
    manifest = _manifest(rows.summary(), events, "markdown", now)
    write_markdown(
        rows,
        out,
        events,
        count=manifest.count,
        exported_at=manifest.exported_at,
        generator=manifest.generator,
    )
    if progress is not None:
        progress(manifest.count, manifest.count)
    return manifest


def _write_sqlite(
    rows: ExportRows, target: Path, events: EventFilter, progress: Progress | None, now: Clock
) -> ExportManifest:
    """A standalone database built with sqlite-utils: ``events`` (as in the ledger,
    without its triggers; ``occurred_at`` stored), ``messages`` with a full-text index
    ``messages_fts``, and a one-row ``export_manifest``.

    ``messages`` is computed from the exported ``events`` by one statement
    (``SQL_EXPORT_MESSAGES``), run with apsw's SQLite (which has the JSON operators
    the transcript's SQL uses, whatever SQLite Python's own module was built with)."""

    manifest = _manifest(rows.summary(), events, "sqlite", now)
    columns = {c: int if c in ("position", "version") else str for c in EXPORT_COLUMNS}
    names = list(columns)
    done = 0

    def dicts() -> Iterator[dict[str, Any]]:
        nonlocal done
        for row in rows.rows():
            done += 1
            if progress is not None and done % PAGE == 0:
                progress(done, manifest.count)
            yield dict(zip(names, row, strict=True))

    with _export_database(target) as db:
        events_table = db.table("events")
        events_table.create(columns, pk="position", not_null=set(columns) - {"session_id"})
        events_table.insert_all(dicts(), batch_size=PAGE)
        events_table.create_index(["event_id"], unique=True)
        events_table.create_index(["stream", "version"], unique=True)
        events_table.create_index(["session_id", "position"])
        events_table.create_index(["type"])
        events_table.create_index(["occurred_at"])
        db.table("messages").create(MESSAGE_COLUMNS, pk=TRANSCRIPT_KEY)
    conn = apsw.Connection(str(target))
    try:
        conn.execute("PRAGMA journal_mode = OFF").fetchall()  # a scratch file until renamed
        conn.execute("PRAGMA synchronous = OFF").fetchall()
        conn.execute(SQL_EXPORT_MESSAGES).fetchall()
    finally:
        conn.close()
    with _export_database(target) as db:
        messages = db.table("messages")
        messages.create_index(["session_id", "position"])
        messages.enable_fts([TRANSCRIPT_SEARCHED], tokenize=TRANSCRIPT_TOKENIZER)
        body = manifest.to_dict()
        body["filters"] = json.dumps(body["filters"], ensure_ascii=False)
        db.table("export_manifest").insert({"format": EXPORT_FORMAT, **body}, pk="format")
    if progress is not None:
        progress(done, manifest.count)
    return manifest


@contextmanager
def _export_database(target: Path) -> Iterator[Any]:
    """The export's database (sqlite-utils), unjournalled: a scratch file until renamed."""
    import sqlite_utils

    db = sqlite_utils.Database(target)
    try:
        db.conn.execute("PRAGMA journal_mode = OFF")
        db.conn.execute("PRAGMA synchronous = OFF")
        yield db
    finally:
        db.close()


# -- streams and files -------------------------------------------------------------


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


def stream_rows(
    open_rows: OpenRows,
    out: IO[bytes],
    *,
    format: str = "jsonl",
    events: EventFilter | None = None,
    progress: Progress | None = None,
    clock: Clock = system_clock,
) -> ExportManifest:
    """``export_to_stream`` from any backend's row source ``open_rows``."""
    if format not in _STREAMED:
        raise LedgerError(
            f"the {format!r} format needs an output file",
            hint="pass -o FILE (e.g. -o export.db)",
        )
    events = events or EventFilter()
    writer = {"jsonl": _write_jsonl, "csv": _write_csv, "markdown": _write_markdown}[format]
    with open_rows(events) as rows:
        return writer(rows, out, events, progress, clock)


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
    (ending with the manifest line), CSV (a header row, then one row per event) or
    Markdown.

    Reads one consistent snapshot in constant memory. ``led`` should be a ledger
    of its own (e.g. ``Ledger.open(path, readonly=True)``): the export holds one
    read transaction on its connection. ``progress(done, total)`` is called every
    few thousand events when given.
    """
    return stream_rows(
        partial(sqlite_rows, led), out, format=format, events=events, progress=progress,
        clock=clock,
    )  # fmt: skip


def export(
    ledger: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    format: str | None = None,
    events: EventFilter | None = None,
    progress: Progress | None = None,
    stdout: IO[bytes] | None = None,
    clock: Clock = system_clock,
) -> ExportManifest:
    """Export the ledger at ``ledger`` (a SQLite file, or a ``postgresql://`` URI) to
    ``output`` (a path; None for ``stdout``); both backends give the same files.

    ``format`` is ``jsonl``, ``csv``, ``sqlite`` or ``markdown``; by default it
    follows the output name (``.csv``, ``.db``/``.sqlite``, ``.md``; otherwise JSONL).
    A name ending in ``.gz`` is gzip-compressed. The file is created owner-only
    (0600) and appears, complete, only when the export succeeds. ``events`` selects
    what is exported.
    """
    _check_format(format or format_for(output))
    if is_dsn(ledger):
        from hermes_ledger.ledger.postgres.reading import export as export_postgres

        with cast(Any, open_log(ledger)) as log:
            return export_postgres(
                log, output, format=format, events=events, progress=progress,
                stdout=stdout, clock=clock,
            )  # fmt: skip
    ledger_path = Path(ledger)
    with Ledger.open(ledger_path, readonly=True) as led:
        return export_rows(
            partial(sqlite_rows, led), output, format=format, events=events,
            progress=progress, stdout=stdout, clock=clock, ledger_file=ledger_path,
        )  # fmt: skip


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise LedgerError(f"unknown export format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")


def export_rows(
    open_rows: OpenRows,
    output: str | os.PathLike[str] | None,
    *,
    format: str | None = None,
    events: EventFilter | None = None,
    progress: Progress | None = None,
    stdout: IO[bytes] | None = None,
    clock: Clock = system_clock,
    ledger_file: Path | None = None,
) -> ExportManifest:
    """``export`` from any backend's row source ``open_rows``: to the file ``output``
    (never over ``ledger_file``, the ledger's own file if it has one) or ``stdout``."""
    fmt = format or format_for(output)
    _check_format(fmt)
    events = events or EventFilter()
    if output is None:
        if stdout is None:
            raise LedgerError("export needs an output path or a stream")
        return stream_rows(
            open_rows, stdout, format=fmt, events=events, progress=progress, clock=clock
        )
    target = Path(output)
    check_target(target, ledger_file)
    remove_dead_parts(target)
    try:
        return _export_file(open_rows, target, fmt, events, progress, clock)
    except (OSError, sqlite3.Error, apsw.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LedgerError(
            f"cannot write {target}: {reason}",
            hint=f"check the free space and permissions of {target.parent}; nothing was "
            "written (a previous file at that path is unchanged)",
        ) from None


def _export_file(
    open_rows: OpenRows,
    target: Path,
    fmt: str,
    events: EventFilter,
    progress: Progress | None,
    clock: Clock,
) -> ExportManifest:
    compress = target.name.lower().endswith(".gz")
    with private_temp(target) as temp:
        if fmt == "sqlite":
            with open_rows(events) as rows:
                if not compress:
                    return _write_sqlite(rows, temp, events, progress, clock)
                with scratch(target) as plain:
                    manifest = _write_sqlite(rows, plain, events, progress, clock)
                    with open(plain, "rb") as src, _open_output(temp, True) as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                return manifest
        with _open_output(temp, compress) as out:
            return stream_rows(
                open_rows, out, format=fmt, events=events, progress=progress, clock=clock
            )
