"""Opening a ledger file: identity checks, connection setup, and migrations.

The order matters. A file is identified (is it SQLite? is it ours? is it too
new?) with read-only queries *before* anything can write to it, so a file that
is refused is left byte-for-byte untouched. Only then is the connection set up
(WAL, synchronous, foreign keys) and the migrations applied, each in one
``BEGIN IMMEDIATE`` transaction together with its record.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import apsw

from hermes_ledger.ledger.errors import (
    LedgerBusyError,
    LedgerError,
    LedgerTooNewError,
    NotALedgerError,
    translate,
)

__all__ = [
    "APPLICATION_ID",
    "SYNCHRONOUS_MODES",
    "Migration",
    "busy_handler",
    "connect",
    "latest_version",
    "load_migrations",
    "migrate",
]

APPLICATION_ID = int.from_bytes(b"HRML", "big")
"""``PRAGMA application_id`` of every hermes-ledger (0x48524D4C)."""

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
CACHE_KIB = 16 * 1024
_MIGRATION_WAIT = 60.0  # seconds another process may hold the lock while migrating

SQL_IDENTITY = (
    "SELECT (SELECT application_id FROM pragma_application_id),"
    " (SELECT user_version FROM pragma_user_version),"
    " (SELECT count(*) FROM sqlite_schema)"
)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The migrations shipped in the ``migrations`` package, in order, checked for gaps."""
    found = []
    for entry in resources.files("hermes_ledger.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migrations are not numbered 1..n: {migration.name} is #{expected}")
    return found


def latest_version() -> int:
    return len(load_migrations())


def _create_private(path: Path) -> None:
    """Create an empty file only its owner can read; SQLite gives -wal/-shm the same mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except FileNotFoundError:
        raise LedgerError(
            f"cannot create {path}: the directory {path.parent} does not exist",
            hint=f"create it first (mkdir -p {path.parent}) or choose another --db path",
        ) from None
    except PermissionError:
        raise LedgerError(
            f"cannot create {path}: permission denied",
            hint="choose a --db path in a directory you can write to",
        ) from None
    os.close(fd)


def retry_busy(action: Callable[[], object], timeout: float, path: str | os.PathLike[str]) -> None:
    """Run ``action``, retrying with jittered backoff while SQLite says the file is busy."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            action()
            return
        except apsw.BusyError as exc:
            if time.monotonic() >= deadline:
                raise LedgerBusyError(
                    f"{path}: another process held the write lock for more than {timeout:g}s"
                ) from exc
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.05)


_BUSY_FIRST = 0.0005  # seconds a busy connection first sleeps before trying again
_BUSY_GROWTH = 1.3  # each further try sleeps this much longer …
_BUSY_MAX = 0.0025  # … up to this (every sleep is jittered by ±50%)


def busy_handler(timeout: float) -> Callable[[int], bool]:
    """A busy handler for ``Connection.set_busy_handler``: retry after a short jittered
    sleep that starts at 0.5 ms and grows by 1.3x per try up to 2.5 ms, until
    ``timeout`` seconds have passed since the first try of this wait, then give up
    (SQLite returns SQLITE_BUSY). The cap keeps every waiter close to the lock; the
    growth keeps many waiters on 2 cores from spending the writer's CPU on polling.

    SQLite's own handler (``sqlite3_busy_timeout``) sleeps in growing steps of up to
    100 ms, so under contention an unlucky writer sleeps through many commits of the
    others and stalls for hundreds of milliseconds; short steps let every waiter take
    the lock soon after it is released.
    """
    deadline = 0.0

    def handler(count: int) -> bool:
        nonlocal deadline
        now = time.monotonic()
        if count == 0:
            deadline = now + timeout
        elif now >= deadline:
            return False
        step = min(_BUSY_FIRST * _BUSY_GROWTH**count, _BUSY_MAX) * random.uniform(0.5, 1.5)
        time.sleep(min(step, max(deadline - now, 0.0)))
        return True

    return handler


def _one(conn: apsw.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _identify(conn: apsw.Connection, path: Path, latest: int) -> int:
    """Return the ledger's schema version (0 for a blank file) or refuse the file."""
    # One statement, so one consistent snapshot: a process that migrates the file
    # between two separate reads must not make it look like a foreign database.
    row: Any = conn.execute(SQL_IDENTITY).fetchone()
    app_id, user_version, objects = row
    if app_id == APPLICATION_ID:
        if user_version > latest:
            raise LedgerTooNewError(
                f"{path} was written by a newer hermes-ledger (schema {user_version}; "
                f"this version knows up to {latest})",
                hint="upgrade hermes-ledger (pip install -U hermes-ledger); the file is unchanged",
            )
        return user_version
    if app_id == 0 and objects == 0:
        return 0
    what = f"application_id {app_id:#x}" if app_id else f"{objects} tables or indexes of its own"
    raise NotALedgerError(
        f"{path} is a SQLite database but not a hermes-ledger ({what})",
        hint="point --db (or HERMES_LEDGER_DB) at a ledger file, or at a new path to create one; "
        "the file was not changed",
    )


def _pragma(conn: apsw.Connection, name: str, value: str) -> None:
    """Set one pragma per call (apsw runs multi-statement text lazily) and check it took."""
    conn.execute(f"PRAGMA {name} = {value}").fetchall()
    actual = _one(conn, f"PRAGMA {name}")
    wanted = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3, "ON": 1}.get(value.upper(), value)
    if str(actual).lower() != str(wanted).lower():
        raise LedgerError(f"could not set PRAGMA {name} to {value} (it is {actual})")


def connect(
    path: str | os.PathLike[str],
    *,
    synchronous: str = "NORMAL",
    busy_timeout: float = 30.0,
    readonly: bool = False,
    cache_kib: int = CACHE_KIB,
    migrations: Sequence[Migration] | None = None,
) -> tuple[apsw.Connection, int]:
    """Open ``path`` as a ledger connection; return it and the file's schema version.

    The one function that sets up every ledger connection: refuses files that are
    not ledgers (before writing anything), then WAL, ``synchronous`` (NORMAL by
    default), foreign keys and a busy handler (``busy_handler``) that waits up to
    ``busy_timeout`` seconds for the write lock. Does not migrate (see ``migrate``).
    A file newer than ``migrations`` (default: ``load_migrations()``) is refused.
    """
    path = Path(path)
    mode = synchronous.upper()
    if mode not in SYNCHRONOUS_MODES:
        raise LedgerError(
            f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}"
        )
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError(
            f"the path {str(path).encode('utf-8', 'surrogateescape')!r} is not valid UTF-8, "
            "which SQLite needs",
            hint="give --db a path whose name is UTF-8 text",
        ) from None
    if readonly:
        if not path.exists():
            raise LedgerError(f"{path} does not exist", hint="create it with `hermes-ledger init`")
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        _create_private(path)
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    if path.is_dir():
        raise LedgerError(f"{path} is a directory", hint="give --db a file path, e.g. ledger.db")
    try:
        conn = apsw.Connection(str(path), flags=flags)
    except apsw.Error as exc:
        translate(exc, path=str(path))
    try:
        if busy_timeout > 0:
            conn.set_busy_handler(busy_handler(busy_timeout))
        else:
            conn.setbusytimeout(0)  # no waiting: a busy lock is an error at once
        newest = latest_version() if migrations is None else len(migrations)
        version = _identify(conn, path, newest)
        if not readonly:
            if _one(conn, "PRAGMA journal_mode") != "wal":
                # SQLite does not wait on the busy timeout for this switch.
                retry_busy(lambda: _pragma(conn, "journal_mode", "WAL"), busy_timeout, path)
            _pragma(conn, "synchronous", mode)
            # Deleted and moved content is overwritten with zeros, so that what an
            # erasure deletes leaves no copy in free space (docs/erasure.md).
            _pragma(conn, "secure_delete", "ON")
        _pragma(conn, "foreign_keys", "ON")
        # A page cache big enough for the session indexes of a busy gateway
        # (SQLite's default is 2 MiB); it is a ceiling, not an allocation.
        _pragma(conn, "cache_size", str(-cache_kib))
    except apsw.Error as exc:
        conn.close()
        translate(exc, path=str(path))
    except BaseException:
        conn.close()
        raise
    return conn, version


def migrate(
    conn: apsw.Connection,
    path: str | os.PathLike[str],
    migrations: Sequence[Migration] | None = None,
) -> int:
    """Apply every pending migration, each in its own transaction with its record.

    Safe when several processes open a new ledger at once: each migration re-reads
    ``user_version`` under the write lock and is skipped if another process applied it.
    Returns the schema version after migrating. ``migrations`` default to the
    shipped ones (``load_migrations()``).
    """
    if migrations is None:
        migrations = load_migrations()
    for migration in migrations:
        if _one(conn, "PRAGMA user_version") >= migration.version:  # type: ignore[operator]
            continue
        try:
            retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), _MIGRATION_WAIT, path)
            try:
                if _one(conn, "PRAGMA user_version") >= migration.version:  # type: ignore[operator]
                    conn.execute("ROLLBACK")
                    continue
                for _ in conn.execute(migration.sql):
                    pass  # drain: apsw runs a multi-statement script as it is consumed
                for _ in conn.execute(
                    "CREATE TABLE IF NOT EXISTS ledger_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL"
                    ") STRICT"
                ):
                    pass
                conn.execute(
                    "INSERT INTO ledger_migrations (version, name, applied_at)"
                    " VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    (migration.version, migration.name),
                )
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {migration.version}")
                conn.execute("COMMIT")
            except BaseException:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
                raise
        except apsw.Error as exc:
            translate(exc, path=str(path))
    return len(migrations)
