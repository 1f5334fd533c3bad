"""Reading a Hermes home: one read-only snapshot of ``state.db``, plus its routing.

A Hermes 0.19 home keeps every session (CLI, TUI and gateway) in ``state.db``
(schema version 22: ``sessions``, ``messages``, ``gateway_routing`` …) and the
gateway's key → session mapping in the ``gateway_routing`` table (mirrored in the
legacy ``sessions/sessions.json``). ``open_hermes_home`` checks that a path is such
a home and opens one consistent, read-only snapshot of its ``state.db``; the
``HermesHome`` it returns reads sessions, messages and routes from that snapshot.
With ``snapshot=False`` (the live recorder, ``hermes.live``, reading a home Hermes
is running in) it reads ``state.db`` in place through a read-only connection
instead of copying it, for targeted reads (``session``, ``messages(after=)``,
``routes(only=)``). The Hermes files are never written. ``hermes.importing``
turns what is read into ledger events.

``state.db`` is read through Python's own ``sqlite3``, the SQLite library Hermes
writes it with, never through apsw's bundled copy: the live recorder reads it
inside the Hermes process, and two SQLite libraries on one WAL database in one
process break each other's POSIX locks. A connection of the second library sees
none of the first one's locks, takes itself for the only user, truncates the
``-shm`` file Hermes has mapped (SIGBUS in the gateway), and on close releases
every lock the process held on the file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from hermes_ledger.gateway.sessions.keys import SESSION_ID_MAX
from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.text import has_ascii_controls

__all__ = [
    "SUPPORTED_SCHEMA_VERSIONS",
    "HermesHome",
    "HermesImportError",
    "open_hermes_home",
]

SUPPORTED_SCHEMA_VERSIONS: Final = frozenset({22})
"""The ``state.db`` schema versions this import reads (22 is Hermes 0.19's)."""

# -- state.db: one statement per purpose ------------------------------------------

SQL_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
SQL_SCHEMA_VERSION = "SELECT max(version) FROM schema_version"
SQL_COLUMNS = "SELECT name FROM pragma_table_info(?)"
_SESSION_COLUMNS: Final = (
    "id", "source", "user_id", "session_key", "chat_id", "chat_type", "thread_id",
    "display_name", "origin_json", "parent_session_id", "profile_name", "started_at", "ended_at",
    "end_reason", "model", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "estimated_cost_usd", "actual_cost_usd",
)  # fmt: skip
_MESSAGE_COLUMNS: Final = (
    "id", "role", "content", "tool_call_id", "tool_calls", "tool_name", "timestamp",
    "token_count", "platform_message_id", "active",
)  # fmt: skip
SQL_SESSIONS = f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions ORDER BY started_at, id"
SQL_SESSION = f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions WHERE id = ?"
SQL_MESSAGES = (
    f"SELECT {', '.join(_MESSAGE_COLUMNS)} FROM messages WHERE session_id = ? AND id > ?"
    " ORDER BY id"
)
SQL_MESSAGE_IDS = "SELECT id FROM messages WHERE session_id = ? ORDER BY id"
SQL_ROUTING = "SELECT session_key, entry_json FROM gateway_routing ORDER BY scope, session_key"
SQL_ROUTING_OF = (
    "SELECT session_key, entry_json FROM gateway_routing"
    " WHERE json_valid(entry_json) AND entry_json ->> '$.session_id' = ?"
    " ORDER BY scope, session_key"
)
SQL_HAS_ROUTING = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gateway_routing'"

_REQUIRED: Final = {"sessions": _SESSION_COLUMNS, "messages": ("session_id", *_MESSAGE_COLUMNS)}


class HermesImportError(LedgerError):
    """The path is not a Hermes home this import can read; nothing was written."""

    hint = "pass the Hermes home directory (the one holding state.db, usually ~/.hermes)"


# -- reading a Hermes home ----------------------------------------------------------


@dataclass(frozen=True)
class _Session:
    """One ``sessions`` row, as far as the import uses it."""

    id: str
    platform: str
    user_id: str | None
    session_key: str | None
    chat_id: str | None
    chat_type: str | None
    thread_id: str | None
    display_name: str | None
    origin_json: str | None
    parent_id: str | None
    profile: str | None
    started_at: float
    ended_at: float | None
    end_reason: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    estimated_cost: float | None
    actual_cost: float | None


@dataclass(frozen=True)
class _Route:
    key: str
    origin: Mapping[str, Any] | None


class HermesHome:
    """A Hermes home opened for reading: one read-only snapshot of its ``state.db``
    plus its routing (``gateway_routing``, then ``sessions.json``).

    Made by ``open_hermes_home``; use it as a context manager.
    """

    def __init__(
        self,
        path: Path,
        state_db: Path,
        conn: sqlite3.Connection,
        scratch: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.path = path
        self.state_db = state_db
        self._conn = conn
        self._scratch = scratch
        self.warnings: list[str] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._conn.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    def sessions(self) -> list[_Session]:
        """Every session row, oldest first."""
        rows = (self._session(row) for row in self._conn.execute(SQL_SESSIONS))
        return [s for s in rows if s is not None]

    def session(self, session_id: str) -> _Session | None:
        """One session row (None: no such row, or one the ledger cannot hold)."""
        rows = self._conn.execute(SQL_SESSION, (session_id,)).fetchall()
        return self._session(rows[0]) if rows else None

    def _session(self, row: tuple[Any, ...]) -> _Session | None:
        (sid, source, user_id, key, chat_id, chat_type, thread_id, display_name, origin,
         parent, profile, started, ended, reason, model, *usage) = row  # fmt: skip
        tin, tout, tcr, tcw, est, act = usage
        if not _usable_id(sid) or not _number(started):
            self.warnings.append(f"a session with id {sid!r} and start {started!r} is left out")
            return None
        return _Session(
            id=sid,
            platform=_text(source) or "unknown",
            user_id=_text(user_id),
            session_key=_text(key),
            chat_id=_text(chat_id),
            chat_type=_text(chat_type),
            thread_id=_text(thread_id),
            display_name=_text(display_name),
            origin_json=_text(origin),
            parent_id=_text(parent),
            profile=_text(profile),
            started_at=float(started),
            ended_at=float(ended) if _number(ended) else None,
            end_reason=_text(reason),
            model=_text(model),
            input_tokens=_count(tin),
            output_tokens=_count(tout),
            cache_read_tokens=_count(tcr),
            cache_write_tokens=_count(tcw),
            estimated_cost=float(est) if _number(est) else None,
            actual_cost=float(act) if _number(act) else None,
        )

    def messages(self, session_id: str, after: int = 0) -> Iterator[tuple[Any, ...]]:
        """The session's message rows in insertion (id) order, inactive ones included;
        only those with an id above ``after`` when given."""
        return self._conn.execute(SQL_MESSAGES, (session_id, after))

    def message_ids(self, session_id: str) -> list[int]:
        """The ids of the session's message rows, in order."""
        return [mid for (mid,) in self._conn.execute(SQL_MESSAGE_IDS, (session_id,))]

    def routes(self, only: str | None = None) -> dict[str, _Route]:
        """session_id → (key, origin) from ``gateway_routing``, then ``sessions.json``
        for session ids the table does not map (as Hermes folds the legacy file in);
        just the entry of session ``only`` when given."""
        routes: dict[str, _Route] = {}
        table = self._conn.execute(SQL_HAS_ROUTING).fetchall()
        query = (SQL_ROUTING, ()) if only is None else (SQL_ROUTING_OF, (only,))
        for key, entry_json in self._conn.execute(*query) if table else ():
            try:
                entry = json.loads(entry_json)
            except (TypeError, ValueError):
                self.warnings.append(f"gateway_routing entry {key!r} is not JSON; ignored")
                continue
            self._add_route(routes, key, entry, "gateway_routing")
        legacy = self._sessions_json()
        if legacy is not None:
            try:
                data = json.loads(legacy.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                self.warnings.append(f"{legacy} could not be read ({exc}); ignored")
                return routes
            for key, entry in data.items():
                mine = isinstance(entry, dict) and entry.get("session_id") == only
                if (only is None or mine) and not key.startswith("_"):
                    self._add_route(routes, key, entry, legacy.name)
        return routes

    def _add_route(self, routes: dict[str, _Route], key: object, entry: object, where: str) -> None:
        if not isinstance(entry, dict) or not isinstance(key, str) or not key:
            self.warnings.append(f"{where} entry {key!r} is not a session entry; ignored")
            return
        sid = entry.get("session_id")
        if not isinstance(sid, str) or not sid or sid in routes:
            return
        origin = entry.get("origin")
        routes[sid] = _Route(key, origin if isinstance(origin, dict) else None)

    def _sessions_json(self) -> Path | None:
        for candidate in (self.path / "sessions" / "sessions.json", self.path / "sessions.json"):
            if candidate.is_file():
                return candidate
        return None


def _connect(db: Path, *, immutable: bool = False) -> sqlite3.Connection:
    """A read-only connection (``immutable``: no locks and no WAL index either),
    in autocommit mode so that ``BEGIN`` opens the one read transaction."""
    uri = db.absolute().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(SQL_TABLES).fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _snapshot(state_db: Path) -> tuple[sqlite3.Connection, tempfile.TemporaryDirectory[str] | None]:
    """A read-only connection to one consistent state of ``state_db`` that leaves
    nothing behind in the Hermes home.

    Without a ``state.db-wal`` no Hermes process has the database open and the file
    alone is the database: it is copied (and the copy used only if the file did not
    change meanwhile), so SQLite's WAL companions are made beside the copy, not in
    the home. With a WAL (Hermes is running, or stopped uncleanly) it is read in
    place, read-only, through the companions SQLite already keeps there.
    """
    if not state_db.with_name(state_db.name + "-wal").exists():
        for _ in range(3):
            before = _stamp(state_db)
            scratch = tempfile.TemporaryDirectory(prefix="hermes-import-")
            copy = Path(scratch.name) / "state.db"
            try:
                shutil.copyfile(state_db, copy)
                if _stamp(state_db) == before:
                    return _connect(copy, immutable=True), scratch
            except BaseException:
                scratch.cleanup()
                raise
            scratch.cleanup()
    return _in_place(state_db)


def _in_place(state_db: Path) -> tuple[sqlite3.Connection, None]:
    """A read-only connection to ``state_db`` where it is (no copy): for the short,
    targeted reads of the live recorder while Hermes runs."""
    try:
        return _connect(state_db), None
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_CANTOPEN:
            raise
        # read-only storage: the WAL index cannot be made there
        return _connect(state_db, immutable=True), None


def open_hermes_home(path: str | os.PathLike[str], *, snapshot: bool = True) -> HermesHome:
    """Open a Hermes home (or its ``state.db``) for reading, or refuse it.

    Raises HermesImportError, naming the file, when the path does not exist, has
    no ``state.db``, or holds a ``state.db`` that is not SQLite, not Hermes', or
    of a schema version this import does not know. Nothing is ever written there.
    ``snapshot=False`` never copies the file: it is read in place, read-only (one
    read transaction all the same).
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise HermesImportError(f"{given} does not exist")
    if given.is_file():
        if given.name != "state.db":
            raise HermesImportError(f"{given} is a file, not a Hermes home directory")
        given = given.parent
    state_db = given / "state.db"
    if not state_db.is_file():
        raise HermesImportError(f"{given} is not a Hermes home: it has no state.db")
    try:
        conn, scratch = _snapshot(state_db) if snapshot else _in_place(state_db)
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_NOTADB:
            raise HermesImportError(
                f"cannot read {state_db}: {exc}", hint="check the file's permissions"
            ) from None
        raise HermesImportError(
            f"{state_db} is not a SQLite database",
            hint="point --from-hermes at a Hermes home whose state.db Hermes wrote",
        ) from None
    except OSError as exc:
        raise HermesImportError(
            f"cannot read {state_db}: {exc}", hint="check the file's permissions"
        ) from None
    try:
        _check_schema(conn, state_db)
        conn.execute("BEGIN")  # one snapshot for the whole import
        conn.execute(SQL_SCHEMA_VERSION).fetchall()  # starts the read transaction
    except BaseException:
        conn.close()
        if scratch is not None:
            scratch.cleanup()
        raise
    return HermesHome(given, state_db, conn, scratch)


def _check_schema(conn: sqlite3.Connection, state_db: Path) -> None:
    tables = {name for (name,) in conn.execute(SQL_TABLES)}
    if "schema_version" not in tables or "sessions" not in tables:
        raise HermesImportError(
            f"{state_db} is not a Hermes state.db (it has no schema_version or sessions table)",
            hint="point --from-hermes at a Hermes home (the directory holding Hermes' state.db)",
        )
    version = conn.execute(SQL_SCHEMA_VERSION).fetchall()[0][0]
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        newer = isinstance(version, int) and version > max(SUPPORTED_SCHEMA_VERSIONS)
        raise HermesImportError(
            f"{state_db} has Hermes schema version {version}; this import reads version "
            f"{supported} (Hermes 0.19)",
            hint="upgrade hermes-ledger"
            if newer
            else "upgrade Hermes to 0.19 and start it once so it migrates state.db, then retry",
        )
    for table, columns in _REQUIRED.items():
        have = {name for (name,) in conn.execute(SQL_COLUMNS, (table,))}
        missing = [c for c in columns if c not in have]
        if missing:
            raise HermesImportError(
                f"{state_db} claims schema version {version} but its {table} table lacks "
                f"{', '.join(missing)}",
                hint="let Hermes 0.19 repair state.db (start it once), then retry",
            )


# -- values as SQLite holds them (hermes.importing uses these too) ------------


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _usable_id(value: object) -> bool:
    """Can the ledger hold this as a session id (and inside a key)?"""
    return (
        isinstance(value, str)
        and 0 < len(value) <= SESSION_ID_MAX
        and not has_ascii_controls(value)  # what the ledger refuses in ids
    )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float) and _number(value) and value > 0 else 0
