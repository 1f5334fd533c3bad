"""The ledger's schema guarantees (its triggers and CHECKs, on both backends: the
tests that take ``backend``, tests/backends.py) and the SQLite ledger's own
behaviour: opening an existing file, read-only opens, ``query``. The log's
contract, run against both backends (append, idempotency, expected versions, the
chain, reading), is tests/test_contract.py."""

from __future__ import annotations

from pathlib import Path

import apsw
import psycopg
import pytest
from backends import Backend

from hermes_ledger.ledger import (
    EventLog,
    Ledger,
    LedgerError,
    NoLedgerError,
)
from hermes_ledger.ledger.events import (
    MessageAppended,
    SessionStarted,
    Source,
)

KEY = "agent:main:telegram:dm:99"


def started(sid: str = "s1") -> SessionStarted:
    return SessionStarted(session_id=sid, source=Source(platform="telegram", chat_id="99"))


def msg(text: str, sid: str = "s1") -> MessageAppended:
    return MessageAppended(session_id=sid, role="user", content=text)


def count(led: EventLog) -> int:
    return led.connection.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[attr-defined, no-any-return]


REFUSED = {"sqlite": apsw.ConstraintError, "postgresql": psycopg.errors.RestrictViolation}
"""What the schema raises when a statement breaks its append-only rule."""


def test_raw_update_and_delete_are_refused(backend: Backend) -> None:
    with backend.open() as led:
        led.append(KEY, [started(), msg("a")])
        conn = led.connection  # type: ignore[attr-defined]  # the database's owner
        refused = REFUSED[backend.name]
        with pytest.raises(refused, match="append-only: events cannot be updated"):
            conn.execute("UPDATE events SET data = '{}' WHERE position = 1")
        with pytest.raises(refused, match="append-only: events cannot be deleted"):
            conn.execute("DELETE FROM events")
        if backend.name == "postgresql":  # TRUNCATE skips row triggers: a trigger of its own
            with pytest.raises(refused, match="append-only: events cannot be truncated"):
                conn.execute("TRUNCATE events")
        assert count(led) == 2 and led.verify().ok


def test_open_existing_refuses_a_missing_ledger_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    with pytest.raises(NoLedgerError) as info:
        Ledger.open_existing(missing)
    assert str(info.value) == f"there is no ledger at {missing}"
    assert info.value.hint == (
        "create one with `hermes-ledger init`, or pass --db / HERMES_LEDGER_DB"
    )
    assert not missing.exists()
    with Ledger.open(missing):
        pass
    with Ledger.open_existing(missing, readonly=True) as led:
        assert led.head() == 0


INSERT_BAD_JSON = {
    "sqlite": "INSERT INTO events (event_id, stream, version, type, data, meta, recorded_at, hash)"
    " VALUES ('e', 's', 1, 't', {data}, {meta}, '2026-01-01T00:00:00Z', ?)",
    "postgresql": "INSERT INTO events"
    " (position, event_id, stream, version, type, data, meta, recorded_at, hash)"
    " VALUES (1, 'e', 's', 1, 't', {data}, {meta}, '2026-01-01T00:00:00Z', %s)",
}
BAD_JSON = {
    "sqlite": (apsw.ConstraintError, "CHECK constraint failed"),
    "postgresql": (psycopg.errors.InvalidTextRepresentation, "invalid input syntax for type json"),
}
"""What each schema raises for a row whose data or meta is not JSON."""


@pytest.mark.parametrize("column", ["data", "meta"])
def test_the_schema_refuses_invalid_json(backend: Backend, column: str) -> None:
    """Whoever writes the row (the meta checks of ``append`` are in test_contract.py)."""
    values = {"data": "'{}'", "meta": "'{}'", column: "'{not json'"}
    error, message = BAD_JSON[backend.name]
    with backend.open() as led:
        with pytest.raises(error, match=message):
            led.connection.execute(  # type: ignore[attr-defined]
                INSERT_BAD_JSON[backend.name].format(**values), ("0" * 64,)
            )
        assert count(led) == 0


def test_readonly_ledger_refuses_writes(db_path: Path) -> None:
    with Ledger.open(db_path) as led:
        led.append(KEY, [started()])
    with Ledger.open(db_path, readonly=True) as ro:
        assert [r.type for r in ro.read_all()] == ["session_started"]
        with pytest.raises(LedgerError, match="read-only"):
            ro.append(KEY, [msg("x")])


def test_query_runs_one_read_statement_with_bindings(led: Ledger) -> None:
    led.append(KEY, [started(), msg("a")])
    rows = led.query("SELECT type FROM events WHERE stream = ? ORDER BY position", (KEY,))
    assert rows == [("session_started",), ("message_appended",)]
    assert led.query("SELECT count(*) FROM events WHERE stream = :s", {"s": "none"}) == [(0,)]
    with pytest.raises(LedgerError, match="no such table"):
        led.query("SELECT * FROM nowhere")
