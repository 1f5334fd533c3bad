"""Both backends for any test: the ``backend`` fixture, parametrised ``["sqlite",
"postgresql"]`` (registered for every test file by tests/conftest.py).

A test that takes ``backend`` runs twice: on a SQLite file ``tmp_path /
"ledger.db"`` and on a fresh PostgreSQL database (tests/pg_support.py says which
server, and when the PostgreSQL case skips or fails for want of one). The API is
small on purpose; code under test gets only ``EventLog`` (ledger/backend.py):

- ``backend.name``: ``"sqlite"`` or ``"postgresql"`` (also the test id);
- ``backend.target``: what ``open_log`` and ``--db`` take, a file path or a
  ``postgresql://`` URI; hand it to worker processes so they write the same log;
- ``backend.clock``: the test's ``ManualClock`` (the ``clock`` fixture);
- ``backend.open(projections=False)``: another connection to the log (as another
  thread or host would have), with the live projections attached when asked;
- ``open_projected(target)`` (a function, for worker processes that get only the
  target): ``open_log`` with the live projections attached;
  ``attach_projections(log)`` attaches them to a log already open;
- ``backend.projections``: the projection functions for this backend
  (``attach``, ``verify``, ``live_state``, ``state_at``, ``rebuild``), taking
  the log ``open`` returned: ``projections`` on SQLite, ``projections.postgres``
  on PostgreSQL (only the SQLite ones take ``chunk_size`` or ``progress``);
- ``backend.raw(sql)``: the rows of one statement run as the database's owner
  (superuser on PostgreSQL, search_path the ledger's schema) over a connection of
  its own, bypassing the interface; ``scalar(sql)`` its first value, ``count()``
  the number of events; ``tamper(statement)`` runs a change on ``events`` with the
  append-only triggers out of the way (what only a superuser can do);
- ``backend.settle()``: after SIGKILLing a worker, wait until the server has ended
  its transaction (PostgreSQL rolls a dead client's transaction back only when its
  server process notices); nothing on SQLite, where the next open recovers;
  ``other_sessions()`` counts (PostgreSQL) the other sessions holding a write
  transaction, and those in any transaction: what a test waits on to aim a kill;
- ``backend.wipe()``: forget the ledger, so the next ``open`` starts a new, empty
  one (for a Hypothesis test that wants a fresh ledger per example: cheaper than a
  fresh database). Close its logs first.

``pg_uri(dsn)`` turns a libpq key=value DSN (``fresh_database`` yields one) into
the ``postgresql://`` URI ``open_log`` needs. Hypothesis: one fresh database per
test, so per example ``wipe``; keep PostgreSQL's example counts modest. Cases
that differ per backend: parametrise ``backend`` indirectly, e.g.
``@pytest.mark.parametrize(("backend", "n"), [("sqlite", 3), ("postgresql", 1)],
indirect=["backend"])``.

    def test_something(backend: Backend) -> None:
        with backend.open(projections=True) as log:
            log.append(...)
            assert backend.projections.verify(log).ok
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import apsw
import psycopg
import pytest
from helpers import ManualClock
from pg_support import fresh_database

from hermes_ledger import projections as sqlite_projections
from hermes_ledger.ledger import EventLog, Ledger, open_log
from hermes_ledger.ledger.postgres import PostgresLog

__all__ = [
    "BACKENDS",
    "Backend",
    "Projections",
    "attach_projections",
    "backend",
    "open_projected",
    "pg_uri",
]

BACKENDS = ("sqlite", "postgresql")
SETTLE_TIMEOUT = 60.0
"""Seconds ``settle`` waits for the server to end dead workers' sessions."""

SQL_OTHER_SESSIONS = (
    "SELECT count(*) FILTER (WHERE backend_xid IS NOT NULL),"
    " count(*) FILTER (WHERE xact_start IS NOT NULL) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
"""(sessions holding a write transaction open, sessions in a transaction) on this
database, but ours."""


@dataclass(frozen=True)
class Projections:
    """The live projections' functions on one backend; each takes an open log."""

    attach: Callable[..., Any]
    verify: Callable[..., Any]
    live_state: Callable[..., Any]
    state_at: Callable[..., Any]
    rebuild: Callable[..., Any]


def _projections(name: str) -> Projections:
    if name == "sqlite":
        p: Any = sqlite_projections
    else:
        from hermes_ledger.projections import postgres as p
    return Projections(p.attach, p.verify, p.live_state, p.state_at, p.rebuild)


def attach_projections(log: EventLog) -> None:
    """Attach the live projections of ``log``'s backend (created or caught up first)."""
    _projections("sqlite" if isinstance(log, Ledger) else "postgresql").attach(log)


def open_projected(target: str, *, clock: Callable[[], Any] | None = None) -> EventLog:
    """``open_log(target)`` with the live projections of its backend attached (created
    or caught up first): what a worker process given only the target opens."""
    log = open_log(target, clock=clock)
    try:
        attach_projections(log)
    except BaseException:
        log.close()
        raise
    return log


@dataclass
class Backend:
    """One backend under test: its name, where its log is, the test clock, and what
    a test needs beyond the interface (see the module docstring)."""

    name: str
    target: str
    clock: ManualClock

    @property
    def projections(self) -> Projections:
        return _projections(self.name)

    def open(self, *, projections: bool = False) -> EventLog:
        """Another connection to the same log, of the backend meant; with the live
        projections attached (created or caught up first) when ``projections``."""
        opener = open_projected if projections else open_log
        log = opener(self.target, clock=self.clock)
        assert type(log) is (Ledger if self.name == "sqlite" else PostgresLog)
        return log

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of ``sql``, run as the database's owner over a connection of its
        own (committed at once)."""
        if self.name == "sqlite":
            conn = apsw.Connection(self.target)
            try:
                return [tuple(row) for row in conn.execute(sql)]
            finally:
                conn.close()
        with psycopg.connect(self.target, autocommit=True) as pg:
            pg.execute("SET search_path = hermes_ledger")
            cur = pg.execute(sql)  # type: ignore[arg-type]
            return [tuple(row) for row in cur.fetchall()] if cur.description else []

    def scalar(self, sql: str) -> Any:
        """The first value of ``raw(sql)``."""
        rows = self.raw(sql)
        assert rows, f"no row from {sql!r}"
        return rows[0][0]

    def count(self) -> int:
        """How many events the log holds, counted behind the interface."""
        return int(self.scalar("SELECT count(*) FROM events"))

    def tamper(self, statement: str) -> None:
        """Run ``statement`` on ``events`` as a superuser would: with the append-only
        triggers out of the way (dropped on SQLite, disabled for it on PostgreSQL)."""
        if self.name == "sqlite":
            conn = apsw.Connection(self.target)
            try:
                conn.execute("DROP TRIGGER IF EXISTS events_refuse_update")
                conn.execute("DROP TRIGGER IF EXISTS events_refuse_delete")
                conn.execute(statement)
            finally:
                conn.close()
            return
        with psycopg.connect(self.target, autocommit=True) as pg, pg.transaction():
            pg.execute("SET LOCAL search_path = hermes_ledger")
            pg.execute("ALTER TABLE events DISABLE TRIGGER USER")
            pg.execute(statement)  # type: ignore[arg-type]
            pg.execute("ALTER TABLE events ENABLE TRIGGER USER")

    def other_sessions(self) -> tuple[int, int]:
        """PostgreSQL: (sessions on this database holding a write transaction open,
        sessions in any transaction), not counting the one asking."""
        writing, busy = self.raw(SQL_OTHER_SESSIONS)[0]
        return int(writing), int(busy)

    def settle(self) -> None:
        """Wait until no other session on the database is in a transaction
        (PostgreSQL): what the log holds is final then, a SIGKILLed worker's
        transaction rolled back or committed. Call it when every worker has exited
        and the test's own logs are idle. Nothing on SQLite."""
        if self.name == "sqlite":
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self.other_sessions()[1]:
            if time.monotonic() > deadline:
                pytest.fail("the server kept a dead worker's session open")
            time.sleep(0.005)

    def wipe(self) -> None:
        """Remove the ledger (SQLite: the file and its -wal, -shm; PostgreSQL: the
        ledger's schema, projections included), so the next ``open`` makes a new one."""
        if self.name == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(self.target + suffix).unlink(missing_ok=True)
            return
        self.raw("DROP SCHEMA IF EXISTS hermes_ledger CASCADE")


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[Backend]:
    """Each test that takes it runs on a SQLite file and on a fresh PostgreSQL
    database."""
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "ledger.db"), clock)
        return
    with fresh_database() as dsn:
        yield Backend("postgresql", pg_uri(dsn), clock)  # a URI: open_log's PostgreSQL


def pg_uri(dsn: str) -> str:
    """``dsn`` (libpq key=value) as the ``postgresql://`` URI that names a PostgreSQL
    ledger to ``open_log`` and ``--db`` (a key=value string would be taken for a
    SQLite file name)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    user = quote(str(info.pop("user", "")), safe="")
    password = info.pop("password", None)
    login = f"{user}:{quote(str(password), safe='')}@" if password else f"{user}@" if user else ""
    host, port = info.pop("host", "localhost"), info.pop("port", 5432)
    uri = f"postgresql://{login}{host}:{port}/{quote(str(info.pop('dbname', '')), safe='')}"
    return uri + (f"?{urlencode(info)}" if info else "")
