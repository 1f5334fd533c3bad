"""Restoring a JSONL export into an empty ledger: the same rows, byte for byte.

An export line carries every column of its row, with ``data`` and ``meta``
embedded verbatim. A restore writes the rows back with their original positions,
event ids, ``recorded_at`` and hashes, so the new ledger is indistinguishable
from the old one: ``verify()`` passes and the last hash equals the manifest's.

Everything is checked as the lines are read (JSON, fields, positions contiguous
from 1, per-stream versions, each row's hash against its content and the row
before, each body against its event model, then the manifest's count and last
hash), inside ONE write transaction on a ledger that must be empty. Any problem
raises a ``RestoreError`` naming the line, and the transaction is rolled back:
nothing is written. A ledger file that did not exist is built under a temporary
name and appears only when the restore succeeded.

The hash chain proves that a file was not damaged, not who wrote it: anyone can
recompute it after editing. What the body checks add is that every imported row
is one ``Ledger.append`` could have written (a known type, a body its model
accepts, with JSON types exactly as the model serialises them, and the
``session_id`` column the body's), so a forged file cannot break the read models.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import apsw
import pydantic

from hermes_ledger.ledger.chain import GENESIS, row_hash
from hermes_ledger.ledger.errors import EventValidationError, LedgerError
from hermes_ledger.ledger.events import EVENT_TYPES, parse
from hermes_ledger.ledger.export import (
    EXPORT_FORMAT,
    FORMAT_VERSION,
    _sync_directory,
    claim_part,
    remove_dead_parts,
)
from hermes_ledger.ledger.sql import SQL_HEAD_POSITION, scalar
from hermes_ledger.ledger.store import SQL_INSERT, Ledger, _check_name

__all__ = ["RestoreError", "RestoreResult", "import_jsonl", "open_input", "restore_jsonl"]

SQL_HAS_EVENTS = "SELECT EXISTS (SELECT 1 FROM events)"
SQL_CACHE_SIZE = "PRAGMA cache_size"

_FIELDS = (
    "position", "event_id", "stream", "version", "type", "session_id", "data", "meta",
    "recorded_at", "hash",
)  # fmt: skip
_OPTIONAL = ("data_text", "meta_text")
_KNOWN = frozenset(_FIELDS + _OPTIONAL)
_WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()
_RECORDED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_COLUMN_KEYS = ("type", "event_id", "schema_version")  # never inside a stored body
_BODY_HINT = (
    "the file holds an event this hermes-ledger would never write (edited, or made by "
    "something else); nothing was imported. Export the ledger again"
)
_PROGRESS_EVERY = 10_000
_BATCH = 1000
_CACHE_KIB = 32768  # page cache while restoring (the unique indexes get random inserts)


class RestoreError(LedgerError):
    """The input cannot be restored; ``line`` is the 1-based line at fault (if any)."""

    hint = "nothing was imported; export the ledger again and import the new file"

    def __init__(self, message: str, *, line: int | None = None, hint: str | None = None) -> None:
        self.line = line
        super().__init__(message if line is None else f"line {line}: {message}", hint=hint)


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore wrote: ``count`` events, the last one's position and hash."""

    count: int
    last_position: int | None
    last_hash: str | None


# -- reading one line ------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _loads(text: str) -> Any:
    """``json.loads``, refusing an object with a key twice (readers disagree on
    which one counts: Python the last, SQLite's ``->>`` the first)."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


def _member_spans(text: str, *, padded: bool) -> dict[str, tuple[int, int]]:
    """Where each top-level member's value is in the object ``text``: the value
    alone, or (``padded``) with the whitespace written around it. ``text`` is
    known to be valid JSON."""
    spans: dict[str, tuple[int, int]] = {}
    i = _skip(text, _skip(text, 0) + 1)  # past "{"
    while i < len(text) and text[i] == '"':
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        colon = _skip(text, i)
        start = _skip(text, colon + 1)
        _value, end = _DECODER.raw_decode(text, start)
        after = _skip(text, end)
        spans[key] = (colon + 1, after) if padded else (start, end)
        i = _skip(text, after + 1)  # past "," (or "}": then the loop ends)
    return spans


def _quick_spans(text: str) -> dict[str, tuple[int, int]]:
    """The spans of ``data`` and ``meta`` in a line as ``export`` writes it (they
    follow each other, with nothing around them); ``{}`` if the line is laid out
    otherwise. A wrong guess only costs a second look (see ``_verbatim``)."""
    spans: dict[str, tuple[int, int]] = {}
    at = 0
    for key, marker in (("data", ',"data":'), ("meta", ',"meta":')):
        found = text.find(marker, at)
        if found < 0:
            return {}
        start = found + len(marker)
        try:
            _value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            return {}
        spans[key] = (start, end)
        at = end
    return spans


def _field_text(obj: dict[str, Any], text: str, spans: dict[str, tuple[int, int]], key: str) -> str:
    """The exact stored text of ``data`` or ``meta``: ``<key>_text`` when the export
    had to give it that way, else the member's verbatim span in the line."""
    exact = obj.get(f"{key}_text")
    if exact is not None:
        return cast(str, exact)
    start, end = spans[key]
    return text[start:end]


def _check_fields(obj: dict[str, Any], n: int) -> None:
    missing = [f for f in _FIELDS if f not in obj]
    if missing:
        raise RestoreError(f"the event has no {missing[0]!r}", line=n)
    extra = sorted(set(obj) - _KNOWN)
    if extra:
        raise RestoreError(f"unexpected key {extra[0]!r} in an event", line=n)
    for name in ("position", "version"):
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RestoreError(f"{name!r} must be an integer >= 1, not {value!r}", line=n)
    for name in ("event_id", "stream", "type", "recorded_at", "hash"):
        if not isinstance(obj[name], str):
            raise RestoreError(f"{name!r} must be a string, not {obj[name]!r}", line=n)
    if obj["session_id"] is not None and not isinstance(obj["session_id"], str):
        raise RestoreError(
            f"'session_id' must be a string or null, not {obj['session_id']!r}", line=n
        )
    for key in ("data", "meta"):
        exact = obj.get(f"{key}_text")
        if exact is None:
            continue
        try:
            same = isinstance(exact, str) and _loads(exact) == obj[key]
        except (json.JSONDecodeError, _DuplicateKey):
            same = False
        if not same:
            raise RestoreError(f"'{key}_text' does not hold the same JSON as {key!r}", line=n)


def _hash(obj: dict[str, Any], previous: str, data: str, meta: str) -> str:
    return row_hash(
        previous, obj["position"], obj["event_id"], obj["stream"], obj["version"], obj["type"],
        obj["session_id"], data, meta, obj["recorded_at"],
    )  # fmt: skip


def _verbatim(obj: dict[str, Any], text: str, previous: str, n: int) -> tuple[str, str]:
    """The exact ``data`` and ``meta`` texts of the line, checked against its hash.

    A line as ``export`` writes it is read by position (``_quick_spans``); any
    other layout member by member, with and then without the whitespace around
    each value. The hash decides which reading is the stored text.
    """
    readings = (
        lambda: _quick_spans(text),
        lambda: _member_spans(text, padded=False),
        lambda: _member_spans(text, padded=True),
    )
    for reading in readings:
        spans = reading()
        if not spans:
            continue
        data = _field_text(obj, text, spans, "data")
        meta = _field_text(obj, text, spans, "meta")
        if _hash(obj, previous, data, meta) == obj["hash"]:
            return data, meta
    raise RestoreError(
        f"position {obj['position']}: the hash does not match the event's content "
        "and the previous event's hash",
        line=n,
        hint="the file was edited or damaged after it was exported; nothing was imported. "
        "Export the ledger again",
    )


class _BadEvent(Exception):
    """What ``_check_event`` found; the caller adds the line and position."""

    def __init__(self, message: str, hint: str = _BODY_HINT) -> None:
        super().__init__(message)
        self.hint = hint


def _check_event(obj: dict[str, Any], data: str, n: int) -> None:
    """Refuse a row ``Ledger.append`` could not have written: an unknown type, a
    name it refuses, a malformed ``recorded_at``, a body (upcast from its stored
    version) that its model rejects or that holds other JSON types than the model
    writes, or a ``session_id`` column that is not the body's. ``data`` is the
    body's stored text (``obj["data"]`` is its value)."""
    try:
        _check_row(obj, data)
    except _BadEvent as bad:
        raise RestoreError(f"position {obj['position']}: {bad}", line=n, hint=bad.hint) from None


def _check_row(obj: dict[str, Any], data: str) -> None:
    event_type, event_id, session_id = obj["type"], obj["event_id"], obj["session_id"]
    model = EVENT_TYPES.get(event_type)
    if model is None:
        known = ", ".join(sorted(EVENT_TYPES))
        raise _BadEvent(f"unknown event type {event_type!r} (known types: {known})")
    try:
        _check_name("event_id", event_id)
        _check_name("stream", obj["stream"])
        if session_id is not None:
            _check_name("session_id", session_id)
    except EventValidationError as exc:
        raise _BadEvent(str(exc)) from None
    if not _RECORDED_AT.fullmatch(obj["recorded_at"]):
        raise _BadEvent(
            f"recorded_at {obj['recorded_at']!r} is not a UTC time as the ledger writes it "
            "(YYYY-MM-DDTHH:MM:SS.ffffffZ)"
        )
    body, meta = obj["data"], obj["meta"]
    for key, value in (("data", body), ("meta", meta)):
        if type(value) is not dict:
            raise _BadEvent(f"{key!r} must be a JSON object, not {type(value).__name__}")
    for key in _COLUMN_KEYS:
        if key in body:
            raise _BadEvent(f"'data' may not hold {key!r} (it is kept outside the body)")
    version = meta.get("schema_version")
    if type(version) is not int or version < 1:
        raise _BadEvent(f"meta.schema_version must be an integer >= 1, not {version!r}")
    try:
        if version == model.schema_version:
            # The model, strictly: JSON types exactly as the model writes them
            # ("true" is no boolean to SQL, where the read models read bodies, nor
            # "5" a number). The stored text with type and event_id spliced in, as
            # events.from_stored does (no key is twice, and neither is in the body).
            head = f'{{"type":{json.dumps(event_type)},"event_id":{json.dumps(event_id)}'
            text = head + ("," + data.lstrip()[1:] if body else "}")
            event = model.model_validate_json(text, strict=True)
        else:
            # An older shape: upcast, then the model, as every reader does.
            event = parse(
                {"type": event_type, "event_id": event_id, **body}, schema_version=version
            )
    except EventValidationError as exc:
        raise _BadEvent(str(exc), exc.hint if "newer than" in str(exc) else _BODY_HINT) from None
    except pydantic.ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        raise _BadEvent(f"invalid {event_type} event: {problems}") from None
    except Exception as exc:  # an upcaster meeting a body it cannot read
        raise _BadEvent(f"invalid {event_type} event: {type(exc).__name__}: {exc}") from None
    if getattr(event, "session_id", None) != session_id:
        raise _BadEvent(
            f"the session_id column is {session_id!r} but the body says "
            f"{getattr(event, 'session_id', None)!r}"
        )


# -- the restore -----------------------------------------------------------------


class _Restore:
    """The running state of one restore: what the next line must continue."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self.count = 0
        self.position = 0
        self.hash = GENESIS
        self.versions: dict[str, int] = {}
        self.manifest: dict[str, Any] | None = None
        self.manifest_line = 0
        self.pending: list[tuple[Any, ...]] = []
        self.pending_lines: list[int] = []

    def event(self, obj: dict[str, Any], text: str, n: int) -> None:
        _check_fields(obj, n)
        position = obj["position"]
        if position != self.position + 1:
            if self.position == 0:
                raise RestoreError(
                    f"the export starts at position {position}, not 1",
                    line=n,
                    hint="only a complete export can be imported (no --from, --session-key, "
                    "--type, --since or --until); nothing was imported",
                )
            raise RestoreError(
                f"position {position} follows position {self.position}: events are missing "
                "or out of order",
                line=n,
                hint="a filtered export cannot be imported; export the whole ledger again",
            )
        stream, version = obj["stream"], obj["version"]
        if version != self.versions.get(stream, 0) + 1:
            raise RestoreError(
                f"stream {stream!r} jumps from version {self.versions.get(stream, 0)} to {version}",
                line=n,
            )
        data, meta = _verbatim(obj, text, self.hash, n)
        _check_event(obj, data, n)
        self.pending.append(
            (position, obj["event_id"], stream, version, obj["type"], obj["session_id"],
             data, meta, obj["recorded_at"], obj["hash"])
        )  # fmt: skip
        self.pending_lines.append(n)
        if len(self.pending) >= _BATCH:
            self.flush()
        self.versions[stream] = version
        self.position = position
        self.hash = obj["hash"]
        self.count += 1

    def flush(self) -> None:
        """Insert the checked rows waiting in ``pending``."""
        if not self.pending:
            return
        try:
            self.conn.executemany(SQL_INSERT, self.pending)
        except apsw.ConstraintError as exc:
            # Rows before the refused one went in (until the rollback): it is the next.
            last = scalar(self.conn, SQL_HEAD_POSITION)
            line = self.pending_lines[last - self.pending[0][0] + 1]
            reason = str(exc).split("ConstraintError: ")[-1]
            raise RestoreError(f"the ledger refused the event: {reason}", line=line) from None
        self.pending.clear()
        self.pending_lines.clear()

    def finish(self, lines: int) -> RestoreResult:
        self.flush()
        manifest = self.manifest
        if manifest is None:
            where = f"after line {lines}" if lines else "before its first line"
            raise RestoreError(
                f"the input ends {where} without the export's manifest line: it is truncated"
                if lines
                else "the input is empty: it holds no export",
                hint="export the ledger again (the manifest is the last line of every export)",
            )
        n = self.manifest_line
        if manifest.get("format") != EXPORT_FORMAT:
            raise RestoreError(
                f"the last line is not a {EXPORT_FORMAT} manifest", line=n, hint=_EXPORT_HINT
            )
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise RestoreError(
                f"the export's format version is {version!r}; this hermes-ledger reads "
                f"version {FORMAT_VERSION}",
                line=n,
                hint="upgrade hermes-ledger (pip install -U hermes-ledger)",
            )
        last_position = self.position or None
        last_hash = self.hash if self.count else None
        checks = (
            ("count", self.count),
            ("last_position", last_position),
            ("last_hash", last_hash),
        )
        for key, actual in checks:
            if manifest.get(key) != actual:
                raise RestoreError(
                    f"the manifest says {key} is {manifest.get(key)!r}, but the events "
                    f"before it give {actual!r}: events are missing or were added",
                    line=n,
                )
        return RestoreResult(self.count, last_position, last_hash)


_EXPORT_HINT = "import a file written by `hermes-ledger export` (JSONL)"


def _decode(raw: bytes | str, n: int) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise RestoreError(f"the line is not UTF-8 text ({exc.reason})", line=n) from None


def restore_jsonl(
    led: Ledger,
    lines: Iterable[bytes | str],
    *,
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Write the events of a JSONL export (``lines``) into the empty ledger ``led``.

    Every row is written with its original position, event_id, recorded_at and
    hash, in one transaction, after checking it against the hash chain; the
    manifest is checked at the end. Raises ``RestoreError`` (naming the line) and
    writes nothing when anything is wrong, or when ``led`` already has events.
    ``progress(count)`` is called every 10,000 events when given.
    """

    def work(conn: apsw.Connection) -> RestoreResult:
        row: Any = conn.execute(SQL_HAS_EVENTS).fetchone()
        if row[0]:
            raise RestoreError(
                f"{led.path} already has events; an export is restored only into an empty ledger",
                hint="import into a new file: hermes-ledger import --db NEW.db FILE",
            )
        state = _Restore(conn)
        cache: Any = conn.execute(SQL_CACHE_SIZE).fetchone()
        conn.execute(f"{SQL_CACHE_SIZE} = -{_CACHE_KIB}").fetchall()
        try:
            return _read(state, lines, progress)
        finally:
            conn.execute(f"{SQL_CACHE_SIZE} = {int(cache[0])}").fetchall()

    try:
        return cast(RestoreResult, led.write(work))
    except apsw.Error as exc:  # pragma: no cover - I/O errors, a full disk
        raise LedgerError(f"{led.path}: the restore failed and was rolled back: {exc}") from exc


def _read(
    state: _Restore, lines: Iterable[bytes | str], progress: Callable[[int], None] | None
) -> RestoreResult:
    """Check and insert every line (inside the restore's transaction)."""
    n = 0
    for n, raw in enumerate(lines, start=1):
        text = _decode(raw, n)
        if state.manifest is not None:
            raise RestoreError(
                f"there is more after the manifest (line {state.manifest_line})", line=n
            )
        if not text.strip():
            raise RestoreError("the line is empty", line=n, hint=_EXPORT_HINT)
        try:
            obj = _loads(text)
        except json.JSONDecodeError as exc:
            raise RestoreError(
                f"not valid JSON ({exc.msg} at column {exc.colno}); "
                "the file is damaged or truncated",
                line=n,
                hint=_EXPORT_HINT,
            ) from None
        except _DuplicateKey as exc:
            raise RestoreError(
                f"the key {exc.args[0]!r} appears twice in one object", line=n, hint=_BODY_HINT
            ) from None
        if not isinstance(obj, dict):
            raise RestoreError("the line is not a JSON object", line=n, hint=_EXPORT_HINT)
        if "manifest" in obj and len(obj) == 1:
            if not isinstance(obj["manifest"], dict):
                raise RestoreError("the manifest is not a JSON object", line=n)
            state.manifest = obj["manifest"]
            state.manifest_line = n
            continue
        state.event(obj, text, n)
        if progress is not None and state.count % _PROGRESS_EVERY == 0:
            progress(state.count)
    result = state.finish(n)
    if progress is not None:
        progress(result.count)
    return result


# -- files -----------------------------------------------------------------------


@contextmanager
def open_input(
    path: str | os.PathLike[str] | None, stdin: IO[bytes] | None = None
) -> Iterator[IO[bytes]]:
    """The export at ``path`` (``None`` or ``-``: ``stdin``) as a binary stream;
    gzip-compressed input is recognised by its first bytes and decompressed."""
    if path is None or str(path) == "-":
        source = stdin if stdin is not None else sys.stdin.buffer
        reader = source if hasattr(source, "peek") else io.BufferedReader(cast(Any, source))
        close = False
    else:
        try:
            reader = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise LedgerError(
                f"there is no file {path}", hint="give the path of an export (or - for stdin)"
            ) from None
        except IsADirectoryError:
            raise LedgerError(
                f"{path} is a directory", hint="give the path of an export file"
            ) from None
        except OSError as exc:
            raise LedgerError(
                f"cannot read {path}: {exc.strerror or exc}",
                hint="give the path of an export you can read (or - for stdin)",
            ) from None
        close = True
    try:
        if cast(Any, reader).peek(2)[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=reader, mode="rb") as unzipped:
                yield cast(IO[bytes], unzipped)
        else:
            yield reader
    except (OSError, EOFError) as exc:
        if isinstance(exc, (gzip.BadGzipFile, EOFError)):
            raise RestoreError(f"the compressed input is damaged: {exc}") from None
        shown = "stdin" if close is False else str(path)
        raise RestoreError(f"cannot read {shown}: {exc.strerror or exc}") from None
    finally:
        if close:
            reader.close()


def import_jsonl(
    ledger_path: str | os.PathLike[str],
    source: str | os.PathLike[str] | None,
    *,
    stdin: IO[bytes] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Restore the JSONL export ``source`` (a path, ``-`` or None for stdin) into
    the ledger at ``ledger_path``, which is created if needed and must be empty.

    A ledger that does not exist yet is built as ``.NAME.XXXXXXXX.part`` next to
    it and given its name only when everything was checked and written: a refused
    or interrupted import creates no file at ``ledger_path`` (and the next import
    to that path removes what a killed one left). An existing empty ledger is
    restored into in one transaction, rolled back on any problem."""
    target = Path(ledger_path)
    with open_input(source, stdin) as stream:
        if os.path.lexists(target):
            with Ledger.open(target) as led:
                return restore_jsonl(led, stream, progress=progress)
        return _restore_new(target, stream, progress)


def _restore_new(
    target: Path, stream: IO[bytes], progress: Callable[[int], None] | None
) -> RestoreResult:
    """Restore into a new file built under a temporary name, then linked to ``target``."""
    if not target.parent.is_dir():
        raise LedgerError(
            f"cannot create {target}: the directory {target.parent} does not exist",
            hint=f"create it first (mkdir -p {target.parent}) or choose another --db path",
        )
    remove_dead_parts(target)
    temp, lock = claim_part(target, what="--db")
    try:
        try:
            with Ledger.open(temp) as led:
                result = restore_jsonl(led, stream, progress=progress)
                # Everything into the main file, so it can move without its -wal.
                led.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            with open(temp, "rb") as done:
                os.fsync(done.fileno())
            try:
                os.link(temp, target)
            except FileExistsError:
                raise RestoreError(
                    f"{target} was created by something else while the export was being "
                    "imported; nothing was imported into it",
                    hint="import into a new file: hermes-ledger import --db NEW.db FILE",
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                os.replace(temp, target)  # a file system without hard links
        except apsw.Error as exc:
            raise LedgerError(f"{target}: the import failed: {exc}") from None
        except OSError as exc:
            raise LedgerError(
                f"cannot create {target}: {exc.strerror or exc}",
                hint=f"check the free space and permissions of {target.parent}; "
                "nothing was imported",
            ) from None
        finally:
            for leftover in (temp, *(Path(f"{temp}{s}") for s in ("-journal", "-wal", "-shm"))):
                leftover.unlink(missing_ok=True)
    finally:
        os.close(lock)
    _sync_directory(target.parent)
    return result
