"""The plugin's durable spool: what the hook callbacks saw, kept until the ledger has it.

Hermes calls the plugin's callbacks on its asyncio loop and in agent worker
threads, where nothing may block; the ledger (one SQLite file) may be busy,
locked by another process, full or damaged. So a callback never writes the
ledger: it appends one JSON line to the spool, and a worker thread drains the
spool into the ledger later (``plugin.worker``).

Layout, under ``$HERMES_HOME/ledger-spool/`` (a directory of mode 0700, owned by
the gateway's user; one that is a symlink, owned by someone else or writable by
group or others is refused)::

    00001732260000123456789-4242-3f9a1c.jsonl        one file per writing process
    00001732260000123456789-4242-3f9a1c.jsonl.done   drained up to this byte offset
    drain.lock                                       flock'ed by whoever drains

**Writing.** ``SpoolWriter.append(record)`` encodes the record as one line of
ASCII JSON and hands it to the kernel with a single ``os.write`` on an
``O_APPEND`` descriptor. Once that call returns the line is in the page cache:
it survives the process being killed (``kill -9``, a crash, an OOM kill) at any
later instruction. There is deliberately **no fsync** per record (it would put a
disk flush on Hermes's event loop): a power loss or kernel crash may lose the
last records written before it, a process kill cannot. Each process writes its
own file (created 0600, never following a symlink), so lines of two processes
never share a file. A file is renamed into place only after its writer holds a
shared ``flock`` on it, and the writer keeps that lock while it lives: whether
a file's writer is gone (exited, killed, or finished with the file after
rotating to a new one at ``ROTATE_BYTES``) is exactly whether an exclusive
``flock`` on it can be taken, which no reused pid can fool. A line that could
not be written (disk full…) is kept in a small in-memory backlog and written
before the next record.

**Draining.** ``drain(home, apply)`` takes ``drain.lock`` exclusively (so two
processes never drain at once), reads every spool file after its ``.done``
offset (its own, other live processes' and dead processes'), merges the lines
by their ``at`` time (each file's own order is kept), hands them to ``apply`` in
batches and, only after ``apply`` returned, advances each file's ``.done``
offset (written to a temporary file and renamed). A crash between the two means
the batch is handed over again: ``apply`` (``LiveRecorder.apply``) is
idempotent. If ``apply`` raises, nothing of that batch is marked and the error
propagates: the records stay spooled for the next drain. A last line without its
newline is a write still in progress (or a writer killed in mid-``write``): it
is left alone, and dropped only when its file is abandoned. A file whose writer
is gone is deleted once it is drained. A line that is not a JSON object is
skipped (counted and logged), never handed over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BATCH",
    "LOCK_NAME",
    "ROTATE_BYTES",
    "SPOOL_DIRNAME",
    "DrainReport",
    "SpoolBusyError",
    "SpoolError",
    "SpoolWriter",
    "drain",
    "pending_records",
    "spool_dir",
]

log = logging.getLogger("hermes_plugins.ledger")

SPOOL_DIRNAME = "ledger-spool"
LOCK_NAME = "drain.lock"
SUFFIX = ".jsonl"
DONE_SUFFIX = ".done"
ROTATE_BYTES = 4 * 1024 * 1024
"""A writer starts a new file once its current one holds this much."""
BATCH = 500
"""Records per ``apply`` call."""
BACKLOG = 10_000
"""Lines kept in memory while the spool cannot be written; the oldest go first."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

ApplyFn = Callable[[Sequence[Mapping[str, Any]]], Any]


class SpoolError(OSError):
    """The spool directory or a spool file cannot be used safely."""


class SpoolBusyError(SpoolError):
    """Another process kept ``drain.lock`` for longer than the lock timeout."""


def spool_dir(home: str | os.PathLike[str]) -> Path:
    """``<home>/ledger-spool``."""
    return Path(home) / SPOOL_DIRNAME


def _open_dir(home: Path, *, create: bool) -> int:
    """A descriptor of ``<home>/ledger-spool`` after the safety checks (see module doc)."""
    path = spool_dir(home)
    if create:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SpoolError(
                exc.errno, f"{path} is not a directory (a symlink?); refused"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise SpoolError(errno.EPERM, f"{path} belongs to uid {st.st_uid}, not to us; refused")
        if st.st_mode & 0o022:
            raise SpoolError(
                errno.EPERM, f"{path} is writable by other users; refused (chmod 700 it)"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _encode(record: Mapping[str, Any]) -> bytes:
    # ASCII JSON cannot hold a raw newline, so one record is always one line;
    # ``default=str`` turns an unexpected value into text instead of an error.
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=True, default=str)
    return text.encode("ascii") + b"\n"


class SpoolWriter:
    """Appends records to this process's spool file in ``<home>/ledger-spool``.

    Thread-safe. Opens (creates) its file on the first ``append``; after a
    ``fork`` the child starts a file of its own. Never raises from ``append``
    for an I/O problem: the line goes to the backlog and the problem to the log
    (once until it is solved).
    """

    def __init__(self, home: str | os.PathLike[str], *, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.home = Path(home)
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._name: str | None = None
        self._size = 0
        self._backlog: deque[bytes] = deque(maxlen=BACKLOG)
        self._failing: str | None = None  # the problem last logged, until writes work again

    @property
    def current_file(self) -> str | None:
        """The name of the file this writer appends to (None before the first append)."""
        return self._name

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def append(self, record: Mapping[str, Any]) -> bool:
        """Spool ``record``; True once it is in the file (False: kept in the backlog).

        Raises only for a record that cannot be encoded (``TypeError``/``ValueError``).
        """
        line = _encode(record)
        with self._lock:
            if self._backlog and not self._write_backlog():
                self._backlog.append(line)
                return False
            if self._write(line):
                return True
            self._backlog.append(line)
            return False

    def flush_backlog(self) -> int:
        """Write what the backlog holds; returns what is left in it."""
        with self._lock:
            if self._backlog:
                self._write_backlog()
            return len(self._backlog)

    def close(self) -> None:
        """Close the file (which releases it to drainers: it is then abandoned)."""
        with self._lock:
            self._close()

    # -- under self._lock ------------------------------------------------------

    def _write_backlog(self) -> bool:
        while self._backlog:
            if not self._write(self._backlog[0]):
                return False
            self._backlog.popleft()
        return True

    def _write(self, line: bytes) -> bool:
        try:
            fd = self._file()
            written = os.write(fd, line)
            if written != len(line):
                # Only a full disk (or a file size limit) shortens a write to a
                # regular file: leave the torn line behind in an abandoned file and
                # write the record whole into a new one.
                self._close()
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            self._size += written
            if self._size >= self.rotate_bytes:
                self._close()
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
            if self._failing is None:
                log.warning(
                    "ledger plugin: cannot write the spool in %s (%s); keeping records in "
                    "memory (up to %d) until it can",
                    spool_dir(self.home), problem, BACKLOG,
                )  # fmt: skip
            self._failing = problem
            if self._fd is not None and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._close()
            return False
        if self._failing is not None:
            log.warning("ledger plugin: the spool in %s is writable again", spool_dir(self.home))
            self._failing = None
        return True

    def _file(self) -> int:
        if self._pid != os.getpid():  # forked: the parent's file is the parent's
            if self._fd is not None:
                os.close(self._fd)  # our copy only; the parent's lock stays
            self._fd, self._name, self._size, self._pid = None, None, 0, os.getpid()
        if self._fd is None:
            self._fd, self._name = _create_file(self.home)
            self._size = 0
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._name = self._fd, None, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _create_file(home: Path) -> tuple[int, str]:
    """Create a new spool file, locked shared before any drainer can see it."""
    dir_fd = _open_dir(home, create=True)
    try:
        name = f"{time.time_ns():023d}-{os.getpid()}-{secrets.token_hex(3)}{SUFFIX}"
        temp = f".{name}.new"
        fd = os.open(temp, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.close(fd)
            _unlink(temp, dir_fd)
            raise
        return fd, name
    finally:
        os.close(dir_fd)


# -- draining ------------------------------------------------------------------------


@dataclass
class DrainReport:
    """What one ``drain`` did."""

    applied: int = 0
    """Records handed to ``apply`` (and returned from it)."""
    batches: int = 0
    files: int = 0
    """Spool files read."""
    deleted: int = 0
    """Files of finished writers removed after draining."""
    bad_lines: int = 0
    """Complete lines that were not JSON objects (skipped)."""
    torn_dropped: int = 0
    """Incomplete last lines of abandoned files (dropped with their file)."""
    results: list[Any] = field(default_factory=list)
    """What ``apply`` returned, per batch."""


@dataclass
class _File:
    name: str
    fd: int
    done: int  # offset drained so far
    end: int  # offset of the last complete line read
    size: int
    abandoned: bool


def drain(
    home: str | os.PathLike[str],
    apply: ApplyFn,
    *,
    lock_timeout: float = 10.0,
    batch: int = BATCH,
) -> DrainReport:
    """Hand every spooled, not yet drained record to ``apply`` (see module doc).

    Raises ``SpoolBusyError`` if ``drain.lock`` stays taken for ``lock_timeout``
    seconds, ``SpoolError`` for an unsafe spool directory, and whatever ``apply``
    raises (the records of that batch and later stay spooled). A home without a
    spool is drained at once (nothing to do).
    """
    home = Path(home)
    report = DrainReport()
    if not spool_dir(home).is_dir() and not spool_dir(home).is_symlink():
        return report
    dir_fd = _open_dir(home, create=False)
    try:
        lock_fd = _take_lock(dir_fd, lock_timeout)
        try:
            _drain_locked(dir_fd, apply, batch, report)
        finally:
            os.close(lock_fd)  # releases the flock
    finally:
        os.close(dir_fd)
    return report


def pending_records(home: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The spooled records not yet drained, in drain order, without draining them
    (and without the drain lock: a snapshot for tests and ``status`` displays)."""
    home = Path(home)
    if not spool_dir(home).is_dir():
        return []
    dir_fd = _open_dir(home, create=False)
    try:
        files = _open_files(dir_fd, probe=False)
        try:
            return [rec for _key, _f, _end, rec in _merged(files, None) if rec is not None]
        finally:
            for f in files:
                os.close(f.fd)
    finally:
        os.close(dir_fd)


def _take_lock(dir_fd: int, timeout: float) -> int:
    fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)  # fmt: skip
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SpoolBusyError(
                    errno.EWOULDBLOCK,
                    f"another process has been draining the spool for more than {timeout:g}s",
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise


def _drain_locked(dir_fd: int, apply: ApplyFn, batch: int, report: DrainReport) -> None:
    _remove_orphan_offsets(dir_fd)
    files = _open_files(dir_fd, probe=True)
    report.files = len(files)
    try:
        pending: list[Mapping[str, Any]] = []
        marks: dict[int, int] = {}  # file index → offset reached by the batch
        for _key, index, end, record in _merged(files, report):
            marks[index] = end
            if record is not None:
                pending.append(record)
            if len(pending) >= batch:
                _apply(apply, pending, report)
                _mark(dir_fd, files, marks)
                pending, marks = [], {}
        if pending:
            _apply(apply, pending, report)
        _mark(dir_fd, files, marks)
        for f in files:
            if f.abandoned and f.done == f.end:
                if f.size > f.end:
                    report.torn_dropped += 1
                    log.warning(
                        "ledger plugin: spool file %s ended in an incomplete line (its writer "
                        "was killed while writing it); that line is dropped", f.name,
                    )  # fmt: skip
                _unlink(f.name, dir_fd)
                _unlink(f.name + DONE_SUFFIX, dir_fd)
                report.deleted += 1
    finally:
        for f in files:
            os.close(f.fd)


def _apply(apply: ApplyFn, records: list[Mapping[str, Any]], report: DrainReport) -> None:
    result = apply(records)
    report.applied += len(records)
    report.batches += 1
    report.results.append(result)


def _mark(dir_fd: int, files: list[_File], marks: dict[int, int]) -> None:
    for index, end in marks.items():
        f = files[index]
        if end > f.done:
            _write_offset(dir_fd, f.name, end)
            f.done = end


def _write_offset(dir_fd: int, name: str, offset: int) -> None:
    temp = f".{name}{DONE_SUFFIX}.new"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)  # fmt: skip
    try:
        os.write(fd, f"{offset}\n".encode("ascii"))
    finally:
        os.close(fd)
    os.replace(temp, name + DONE_SUFFIX, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _read_offset(dir_fd: int, name: str) -> int:
    try:
        fd = os.open(name + DONE_SUFFIX, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    try:
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else 0


def _open_files(dir_fd: int, *, probe: bool) -> list[_File]:
    """The spool files in name (= creation) order, opened for reading; with
    ``probe``, each is flock'ed exclusively if its writer is gone (``abandoned``)."""
    files: list[_File] = []
    for name in sorted(os.listdir(dir_fd)):
        if not name.endswith(SUFFIX) or name.startswith("."):
            continue
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            continue  # deleted meanwhile (only by a drainer; we hold the lock)
        except OSError as exc:
            log.warning("ledger plugin: spool file %s cannot be opened (%s); skipped", name, exc)
            continue
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            log.warning("ledger plugin: %s in the spool is not our regular file; skipped", name)
            continue
        abandoned = False
        if probe:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                abandoned = True
            except BlockingIOError:
                pass
            st = os.fstat(fd)  # an abandoned file no longer grows
        done = min(_read_offset(dir_fd, name), st.st_size)
        files.append(_File(name, fd, done, done, st.st_size, abandoned))
    return files


def _lines(f: _File) -> Iterator[tuple[int, bytes]]:
    """(end offset, line) of each complete line after ``f.done``, in order."""
    offset = f.done
    remainder = b""
    while offset < f.size:
        chunk = os.pread(f.fd, min(1 << 20, f.size - offset), offset)
        if not chunk:
            break
        start = offset - len(remainder)
        data = remainder + chunk
        offset += len(chunk)
        pos = 0
        while (newline := data.find(b"\n", pos)) != -1:
            yield start + newline + 1, data[pos:newline]
            pos = newline + 1
        remainder = data[pos:]


def _records(
    f: _File, index: int, report: DrainReport | None
) -> Iterator[tuple[str, int, int, dict[str, Any] | None]]:
    key = ""
    for end, line in _lines(f):
        f.end = end
        record: dict[str, Any] | None = None
        try:
            value = json.loads(line)
            if isinstance(value, dict):
                record = value
        except ValueError:
            pass
        if record is None:
            if report is not None:
                report.bad_lines += 1
                log.warning(
                    "ledger plugin: spool file %s has a line that is not a JSON object at "
                    "offset %d; skipped", f.name, end - len(line) - 1,
                )  # fmt: skip
        elif isinstance(record.get("at"), str):
            key = record["at"]
        yield key, index, end, record


def _merged(
    files: list[_File], report: DrainReport | None
) -> Iterator[tuple[str, int, int, dict[str, Any] | None]]:
    """All files' records merged by ``at`` (ties: file order); each file's order is kept."""
    return heapq.merge(*(_records(f, i, report) for i, f in enumerate(files)),
                       key=lambda item: (item[0], item[1]))  # fmt: skip


_STALE_TEMP = 300.0  # seconds after which a writer's unrenamed temporary file is litter


def _remove_orphan_offsets(dir_fd: int) -> None:
    """Under the drain lock: remove offset files whose spool file is gone, offset
    temporaries (only drainers write them), and writers' temporaries that were
    never renamed into place (a writer killed while creating its file)."""
    names = set(os.listdir(dir_fd))
    for name in names:
        if (name.endswith(SUFFIX + DONE_SUFFIX) and name[: -len(DONE_SUFFIX)] not in names) or (
            name.startswith(".") and name.endswith(DONE_SUFFIX + ".new")
        ):
            _unlink(name, dir_fd)
        elif name.startswith(".") and name.endswith(SUFFIX + ".new"):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if time.time() - st.st_mtime > _STALE_TEMP:
                _unlink(name, dir_fd)


def _unlink(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
