"""Whole-ledger operations behind ``hermes-ledger init``, ``status`` and ``vacuum``."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw

from hermes_ledger.ledger.errors import LedgerBusyError, LedgerError, translate
from hermes_ledger.ledger.schema import latest_version
from hermes_ledger.ledger.store import Ledger

__all__ = [
    "DEFAULT_VACUUM_WAIT",
    "LedgerStatus",
    "Space",
    "VacuumReport",
    "init",
    "space",
    "status",
    "vacuum",
]

SQL_STATUS = (
    "SELECT count(*), min(recorded_at), max(recorded_at),"
    " (SELECT count(*) FROM (SELECT DISTINCT stream FROM events)),"
    " (SELECT count(*) FROM (SELECT DISTINCT session_id FROM events WHERE session_id IS NOT NULL))"
    " FROM events"
)
SQL_SCHEMA_VERSION = "PRAGMA user_version"
# The file's pages: their size, how many, and how many are free (left by dropped
# tables: the old projection tables a rebuild swapped out).
SQL_SPACE = (
    "SELECT (SELECT page_size FROM pragma_page_size), (SELECT page_count FROM pragma_page_count),"
    " (SELECT freelist_count FROM pragma_freelist_count)"
)
# Rewrites the whole file without its free pages, under the write lock (WAL readers go on).
SQL_VACUUM = "VACUUM"
# Copies the WAL (which VACUUM fills with the whole rewritten file) back and empties it.
SQL_CHECKPOINT_TRUNCATE = "PRAGMA wal_checkpoint(TRUNCATE)"


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    path: str
    created: bool
    schema_version: int
    latest_schema_version: int
    events: int
    head: int
    streams: int
    sessions: int
    first_recorded_at: str | None
    last_recorded_at: str | None
    size_bytes: int
    page_size: int
    pages: int
    free_pages: int
    free_bytes: int
    """Bytes in free pages: what ``vacuum`` returns to the disk."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Space:
    """The file's pages: ``page_size`` bytes each, ``pages`` in all, ``free_pages``
    of them free (reused by later writes, returned to the disk only by ``vacuum``)."""

    page_size: int
    pages: int
    free_pages: int

    @property
    def free_bytes(self) -> int:
        return self.free_pages * self.page_size

    @property
    def used_bytes(self) -> int:
        return (self.pages - self.free_pages) * self.page_size


def space(conn: apsw.Connection) -> Space:
    """The page counts of the ledger open on ``conn``."""
    row: Any = conn.execute(SQL_SPACE).fetchone()
    return Space(*row)


def _files_size(path: Path) -> int:
    """The ledger file and its WAL, in bytes."""
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if os.path.exists(p))


def _status(led: Ledger, created: bool) -> LedgerStatus:
    conn = led.connection
    row: Any = conn.execute(SQL_STATUS).fetchone()
    events, first, last, streams, sessions = row
    version: Any = conn.execute(SQL_SCHEMA_VERSION).fetchone()
    version = version[0]
    pages = space(conn)
    return LedgerStatus(
        path=str(led.path),
        created=created,
        schema_version=version,
        latest_schema_version=latest_version(),
        events=events,
        head=led.head(),
        streams=streams,
        sessions=sessions,
        first_recorded_at=first,
        last_recorded_at=last,
        size_bytes=_files_size(led.path),
        page_size=pages.page_size,
        pages=pages.pages,
        free_pages=pages.free_pages,
        free_bytes=pages.free_bytes,
    )


def init(path: str | os.PathLike[str]) -> LedgerStatus:
    """Create (or migrate) the ledger at ``path``; ``created`` says whether it is new."""
    path = Path(path)
    created = not path.exists() or path.stat().st_size == 0
    with Ledger.open(path) as led:
        return _status(led, created)


def status(path: str | os.PathLike[str]) -> LedgerStatus:
    """Describe an existing ledger (migrating it if it is older than this code)."""
    with Ledger.open_existing(path) as led:
        return _status(led, False)


# -- vacuum --------------------------------------------------------------------------

DEFAULT_VACUUM_WAIT = 5.0
"""Seconds ``vacuum`` waits for another process's write lock before refusing."""

_STEPS = 1000  # SQLite VM instructions between two calls of the progress handler
_STEPS_PER_PAGE = 135  # about what VACUUM executes per page in use (measured on ledgers)
_MARGIN = 1.1  # free disk space asked for beyond the estimate


@dataclass(frozen=True)
class VacuumReport:
    """What ``vacuum`` did: the files' size (ledger + WAL) and free pages before and
    after, and how long it took."""

    path: str
    size_before: int
    size_after: int
    free_pages_before: int
    free_pages_after: int
    page_size: int
    seconds: float
    warnings: tuple[str, ...] = field(default=())

    @property
    def reclaimed_bytes(self) -> int:
        return max(0, self.size_before - self.size_after)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reclaimed_bytes": self.reclaimed_bytes}

    def summary(self) -> list[str]:
        return [
            f"Vacuumed {self.path} in {self.seconds:.1f}s: {_size(self.size_before)} -> "
            f"{_size(self.size_after)} ({_size(self.reclaimed_bytes)} returned to the disk; "
            f"{self.free_pages_before} free pages before, {self.free_pages_after} after)"
        ]


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _sqlite_temp_dir() -> Path:
    """Where SQLite puts VACUUM's temporary copy on this system: the first writable
    directory of $SQLITE_TMPDIR, $TMPDIR, /var/tmp, /usr/tmp, /tmp (SQLite's order)."""
    for candidate in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"),
                      "/var/tmp", "/usr/tmp", "/tmp"):  # fmt: skip
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return Path(".")


def _check_disk_space(path: Path, used: int) -> None:
    """VACUUM writes a temporary copy of the pages in use (in SQLite's temporary
    directory), then the whole rewritten file into the WAL beside the ledger: refuse,
    before touching anything, when either place lacks the room."""
    needs: dict[int, tuple[Path, int]] = {}
    for where in (_sqlite_temp_dir(), path.resolve().parent):
        device = os.stat(where).st_dev
        place, total = needs.get(device, (where, 0))
        needs[device] = (place, total + int(used * _MARGIN))
    for place, needed in needs.values():
        free = shutil.disk_usage(place).free
        if free < needed:
            raise LedgerError(
                f"not enough free disk space to vacuum {path}: it needs about {_size(needed)}"
                f" in {place}, and {_size(free)} is free; nothing was changed",
                hint="free some space there (or point SQLITE_TMPDIR at a roomier disk for "
                "the temporary copy) and run it again",
            )


def vacuum(
    path: str | os.PathLike[str],
    *,
    wait: float = DEFAULT_VACUUM_WAIT,
    progress: Callable[[int, int], None] | None = None,
) -> VacuumReport:
    """Rewrite the ledger without its free pages (SQLite's VACUUM) and return them to
    the disk.

    The rewrite is in place (same file, same owner-only mode) and atomic: it commits
    whole or not at all, so a crash or a kill during it leaves the ledger as it was.
    Beside running processes: readers go on (WAL); writers wait for the write lock
    until it is done, up to their own busy timeout (30 s by default). It refuses with
    ``LedgerBusyError`` if another process holds the write lock for more than
    ``wait`` seconds, and with a ``LedgerError`` if there is not enough free disk
    space (about the size of the pages in use, twice if the temporary directory is on
    the same disk); either way nothing is changed.

    ``progress(done, total)`` is called as the rewrite goes, in pages (an estimate:
    SQLite does not say how far a VACUUM has got).
    """
    path = Path(path)
    started = time.perf_counter()
    with Ledger.open_existing(path, busy_timeout=wait) as led:
        conn = led.connection
        before = space(conn)
        size_before = _files_size(path)
        _check_disk_space(path, before.used_bytes)
        total = max(before.used_bytes // before.page_size, 1)
        if progress is not None:
            progress(0, total)
        steps = 0

        def step() -> bool:
            nonlocal steps
            steps += 1
            assert progress is not None
            progress(min(steps * _STEPS // _STEPS_PER_PAGE, total - 1), total)
            return False  # go on

        if progress is not None:
            conn.set_progress_handler(step, _STEPS)
        try:
            conn.execute(SQL_VACUUM)
        except apsw.BusyError as exc:
            raise LedgerBusyError(
                f"{path}: another process held the write lock for more than {wait:g}s;"
                " the vacuum did not start and nothing was changed",
                hint="retry when it is done (a replay or a large import holds the lock "
                "for a while), or wait longer with --wait SECONDS",
            ) from exc
        except apsw.FullError as exc:
            raise LedgerError(
                f"the disk filled up during the vacuum of {path}; it was rolled back and "
                "the ledger is as it was",
                hint="free some disk space and run it again",
            ) from exc
        except apsw.Error as exc:
            translate(exc, path=str(path))
        finally:
            conn.set_progress_handler(None)
        warnings: list[str] = []
        try:
            busy, _, _ = conn.execute(SQL_CHECKPOINT_TRUNCATE).fetchone()  # type: ignore[misc]
        except apsw.BusyError:
            busy = 1
        if busy:
            warnings.append(
                f"a reader kept the WAL from being emptied: {path}-wal is still "
                f"{_size(os.path.getsize(f'{path}-wal'))} (later writes reuse it; run "
                "vacuum again when fewer processes read the ledger to shrink it)"
            )
        after = space(conn)
        if progress is not None:
            progress(total, total)
    return VacuumReport(
        path=str(path),
        size_before=size_before,
        size_after=_files_size(path),
        free_pages_before=before.free_pages,
        free_pages_after=after.free_pages,
        page_size=before.page_size,
        seconds=time.perf_counter() - started,
        warnings=tuple(warnings),
    )
