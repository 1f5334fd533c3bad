"""The SQLite ledger's own behaviour: its triggers and CHECKs, opening an existing
file, read-only opens, ``query``. The log's contract, run against both backends
(append, idempotency, expected versions, the chain, reading), is
tests/test_contract.py."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from hermes_ledger.ledger import (
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


def count(led: Ledger) -> int:
    return led.connection.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[no-any-return]


def test_raw_update_and_delete_are_refused(led: Ledger) -> None:
    led.append(KEY, [started(), msg("a")])
    conn = led.connection
    with pytest.raises(apsw.ConstraintError, match="append-only: events cannot be updated"):
        conn.execute("UPDATE events SET data = '{}' WHERE position = 1")
    with pytest.raises(apsw.ConstraintError, match="append-only: events cannot be deleted"):
        conn.execute("DELETE FROM events")
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


def test_the_schema_refuses_invalid_json(led: Ledger) -> None:
    """Whoever writes the row (the meta checks of ``append`` are in test_contract.py)."""
    with pytest.raises(apsw.ConstraintError, match="CHECK constraint failed"):
        led.connection.execute(
            "INSERT INTO events (event_id, stream, version, type, data, meta, recorded_at, hash)"
            " VALUES ('e', 's', 1, 't', '{not json', '{}', '2026-01-01T00:00:00Z', ?)",
            ("0" * 64,),
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
