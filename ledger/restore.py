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
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import apsw

from hermes_ledger.ledger.chain import GENESIS
from hermes_ledger.ledger.erasure import (
    ErasureReport,
    check_payloads,
    erase,
    recorded_scopes,
)
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.export import EXPORT_FORMAT, FORMAT_VERSION
from hermes_ledger.ledger.export_lines import (
    BODY_HINT,
    DuplicateKey,
    RestoreError,
    check_event,
    check_fields,
    check_payload,
    load_line,
    verbatim,
)
from hermes_ledger.ledger.outfiles import claim_part, remove_dead_parts, sync_directory
from hermes_ledger.ledger.sql import SQL_HEAD_POSITION, scalar
from hermes_ledger.ledger.store import SQL_INSERT, SQL_INSERT_PAYLOAD, Ledger

__all__ = [
    "RestoreError",
    "RestoreResult",
    "import_jsonl",
    "open_input",
    "reapply_erasures",
    "recorded_erasures",
    "restore_jsonl",
]

SQL_HAS_EVENTS = "SELECT EXISTS (SELECT 1 FROM events)"
SQL_OCCURRED_AT_RANGE = (
    "SELECT position, occurred_at FROM events WHERE position BETWEEN ?1 AND ?2 ORDER BY position"
)
"""The business times the ledger derived for the rows just restored."""
SQL_CACHE_SIZE = "PRAGMA cache_size"

_PROGRESS_EVERY = 10_000
_BATCH = 1000
_CACHE_KIB = 32768  # page cache while restoring (the unique indexes get random inserts)


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore wrote: ``count`` events, the last one's position and hash."""

    count: int
    last_position: int | None
    last_hash: str | None


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
        self.pending_occurred: list[str | None] = []
        self.payloads: list[tuple[int, bytes, str]] = []

    def event(self, obj: dict[str, Any], text: str, n: int) -> None:
        check_fields(obj, n)
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
        data, meta, whole = verbatim(obj, text, self.hash, n)
        check_event(obj, whole, n)
        payload = check_payload(obj, whole, meta, n)
        if payload is not None:
            self.payloads.append((position, *payload))
        self.pending.append(
            (position, obj["event_id"], stream, version, obj["type"], obj["session_id"],
             data, meta, obj["recorded_at"], obj["hash"])
        )  # fmt: skip
        self.pending_lines.append(n)
        self.pending_occurred.append(obj.get("occurred_at"))
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
        self._check_occurred_at()
        if self.payloads:
            self.conn.executemany(SQL_INSERT_PAYLOAD, self.payloads)
            self.payloads.clear()
        self.pending.clear()
        self.pending_lines.clear()
        self.pending_occurred.clear()

    def _check_occurred_at(self) -> None:
        """Each line's ``occurred_at`` (when it has one) is the business time the
        ledger derives from the row: it is not stored, so a line that says otherwise
        was edited."""
        rows = self.derived_occurred_at(self.pending[0][0], self.pending[-1][0])
        for (position, derived), given, n in zip(
            rows, self.pending_occurred, self.pending_lines, strict=True
        ):
            if given is not None and given != derived:
                raise RestoreError(
                    f"position {position}: occurred_at {given!r} is not the event's business "
                    f"time {derived!r} (its data's occurred_at, else its recorded_at)",
                    line=n,
                    hint="the file was edited after it was exported; nothing was imported. "
                    "Export the ledger again",
                )

    def derived_occurred_at(self, first: int, last: int) -> Iterable[tuple[int, str]]:
        """(position, occurred_at) the ledger derived for the rows ``first..last``."""
        return cast(
            Iterable[tuple[int, str]], self.conn.execute(SQL_OCCURRED_AT_RANGE, (first, last))
        )

    def payload_problem(self) -> tuple[int | None, str] | None:
        """``verify``'s payload check of the rows written (``erasure.check_payloads``)."""
        return check_payloads(self.conn, self.position)

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
        bad = self.payload_problem()
        if bad is not None:
            where = f"position {bad[0]}: " if bad[0] is not None else ""
            raise RestoreError(f"{where}{bad[1]}", hint="export the ledger again")
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
            obj = load_line(text)
        except RecursionError:
            raise RestoreError(
                "the JSON is nested too deeply to be an export line",
                line=n,
                hint=_EXPORT_HINT,
            ) from None
        except json.JSONDecodeError as exc:
            raise RestoreError(
                f"not valid JSON ({exc.msg} at column {exc.colno}); "
                "the file is damaged or truncated",
                line=n,
                hint=_EXPORT_HINT,
            ) from None
        except DuplicateKey as exc:
            raise RestoreError(
                f"the key {exc.args[0]!r} appears twice in one object", line=n, hint=BODY_HINT
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


def recorded_erasures(source: str | os.PathLike[str]) -> list[tuple[Any, ...]]:
    """The erasures the ledger at ``source`` recorded: (position, scope, through,
    requested_by) each (``erasure.recorded_scopes``)."""
    with Ledger.open_existing(source, readonly=True) as src, src._lock:
        return recorded_scopes(src.connection, who=True)


def reapply_erasures(
    led: Ledger, source: str | os.PathLike[str], recorded: list[tuple[Any, ...]] | None = None
) -> list[ErasureReport]:
    """Re-apply to ``led`` (just restored from an export) every erasure recorded in
    the ledger at ``source`` (or ``recorded``, as ``recorded_erasures`` read them) that
    covers content ``led`` still holds: an export made before an erasure would
    otherwise bring the content back. Each is appended to ``led`` as its own
    ``subject_erased`` (same scope, bounded by the original's ``through``,
    requested_by naming the original), then scrubbed as ``erase`` does."""
    if recorded is None:
        recorded = recorded_erasures(source)
    reports = []
    for position, scope, through, by in recorded:
        dry = erase(led, scope, requested_by=by, dry_run=True, through=through)
        if not dry.payloads:
            continue
        note = f"{by} (re-applied from {source}, position {position})"
        reports.append(
            erase(led, scope, requested_by=note, dry_run=False, through=through,
                  scrubbers=tuple(led._scrubbers))
        )  # fmt: skip
    return reports


def import_jsonl(
    ledger_path: str | os.PathLike[str],
    source: str | os.PathLike[str] | None,
    *,
    stdin: IO[bytes] | None = None,
    progress: Callable[[int], None] | None = None,
    erasures_from: str | os.PathLike[str] | None = None,
) -> RestoreResult:
    """Restore the JSONL export ``source`` (a path, ``-`` or None for stdin) into
    the ledger at ``ledger_path``, which is created if needed and must be empty.

    A ledger that does not exist yet is built as ``.NAME.XXXXXXXX.part`` next to
    it and given its name only when everything was checked and written: a refused
    or interrupted import creates no file at ``ledger_path`` (and the next import
    to that path removes what a killed one left). An existing empty ledger is
    restored into in one transaction, rolled back on any problem. ``erasures_from``
    names a ledger whose recorded erasures are re-applied (``reapply_erasures``)
    before the imported ledger is given its name."""
    target = Path(ledger_path)
    # Read first: a ledger that cannot be read must not leave the import unerased.
    recorded = None if erasures_from is None else recorded_erasures(erasures_from)
    with open_input(source, stdin) as stream:
        # A 0-byte file is built like a new one (then replaces it), so a refused
        # import leaves it 0 bytes rather than a migrated empty ledger.
        if os.path.lexists(target) and not _zero_bytes(target):
            with Ledger.open(target) as led:
                result = restore_jsonl(led, stream, progress=progress)
                if erasures_from is not None:
                    reapply_erasures(led, erasures_from, recorded)
                return result
        return _restore_new(target, stream, progress, erasures_from, recorded)


def _zero_bytes(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and path.stat().st_size == 0


def _restore_new(
    target: Path,
    stream: IO[bytes],
    progress: Callable[[int], None] | None,
    erasures_from: str | os.PathLike[str] | None = None,
    recorded: list[tuple[Any, ...]] | None = None,
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
                if erasures_from is not None:
                    reapply_erasures(led, erasures_from, recorded)
                # Everything into the main file, so it can move without its -wal.
                led.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            with open(temp, "rb") as done:
                os.fsync(done.fileno())
            try:
                os.link(temp, target)
            except FileExistsError:
                if _zero_bytes(target):
                    os.replace(temp, target)
                    sync_directory(target.parent)
                    return result
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
    sync_directory(target.parent)
    return result
