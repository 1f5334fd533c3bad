"""Anchors and the file checks of ``verify``: what an attacker who can write the
ledger file (and drop its triggers) does, and what ``verify`` then says.

Every attack is made with raw apsw on a real file, the way someone bypassing the
library would; the projections are replayed afterwards so that only the checks
under test can notice. docs/ledger.md ("What verify detects") is the contract.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import apsw
import pytest
from click.testing import Result
from helpers import ManualClock

from hermes_ledger.gateway import GatewayConfig, ResetPolicy, SessionSource
from hermes_ledger.gateway.bootstrap import build_gateway
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.hooks import HookRegistry
from hermes_ledger.gateway.scheduler.runner import PassReport
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.anchors import Witness
from hermes_ledger.ledger.chain import row_hash

NEVER = GatewayConfig(default_reset_policy=ResetPolicy(mode="none"))
ADA = SessionSource(platform="telegram", chat_id="99", chat_type="dm", user_name="ada")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "ledger.md"


def _talk(db: Path, clock: ManualClock, messages: int) -> None:
    """Append ``messages`` messages to Ada's session (created on first use)."""
    with Ledger.open(db, clock=clock) as led:
        store = SessionStore(led, NEVER, clock, session_ids=lambda now: "s1")
        entry = store.get_or_create_session(ADA)
        for i in range(messages):
            store.append_to_transcript(entry.session_id, {"role": "user", "content": f"m{i}"})


@pytest.fixture
def db(tmp_path: Path, clock: ManualClock) -> Path:
    """Ada's open session: session_started at 1, messages at 2..8."""
    path = tmp_path / "ledger.db"
    _talk(path, clock, 7)
    return path


@contextmanager
def attacker(db: Path) -> Iterator[apsw.Connection]:
    """A raw connection with the append-only triggers dropped; on exit they are put
    back exactly as they were, so the schema check has nothing to say."""
    conn = apsw.Connection(str(db))
    saved = [
        sql
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'events'"
        )
    ]
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("DROP TRIGGER events_refuse_delete")
    try:
        yield conn
    finally:
        for sql in saved:
            conn.execute(sql)
        conn.close()


def rehash_from(conn: apsw.Connection, position: int) -> None:
    """Recompute every hash from ``position`` on, as a forger would."""
    (previous,) = conn.execute(
        "SELECT hash FROM events WHERE position = ?", (position - 1,)
    ).fetchone()
    rows = conn.execute(
        "SELECT position, event_id, stream, version, type, session_id, data, meta, recorded_at"
        " FROM events WHERE position >= ? ORDER BY position",
        (position,),
    ).fetchall()
    for row in rows:
        previous = row_hash(previous, *row)
        conn.execute("UPDATE events SET hash = ? WHERE position = ?", (previous, row[0]))


def forge_append(conn: apsw.Connection) -> int:
    """Append a copy of the last message with a new id and a valid hash."""
    last = conn.execute(
        "SELECT position, stream, version, type, session_id, data, meta, recorded_at, hash"
        " FROM events ORDER BY position DESC LIMIT 1"
    ).fetchone()
    position, stream, version, kind, session_id, data, meta, recorded_at, previous = last
    meta = json.dumps({k: v for k, v in json.loads(meta).items() if k != "payload"})
    row = (position + 1, str(uuid.uuid4()), stream, version + 1, kind, session_id, data, meta,
           recorded_at)  # fmt: skip
    conn.execute(
        "INSERT INTO events (position, event_id, stream, version, type, session_id, data, meta,"
        " recorded_at, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*row, row_hash(previous, *row)),
    )
    return position + 1


def verify(cli: Callable[..., Result], db: Path) -> tuple[Result, dict[str, object]]:
    text = cli("verify", "--db", str(db))
    as_json = cli("verify", "--db", str(db), "--json")
    assert as_json.exit_code == text.exit_code
    return text, json.loads(as_json.output)


def line(result: Result, prefix: str) -> str:
    found = [x for x in result.output.splitlines() if x.startswith(prefix)]
    assert len(found) == 1, result.output
    return found[0]


def anchor(cli: Callable[..., Result], db: Path) -> dict[str, object]:
    result = cli("anchor", "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_anchor_prints_what_it_anchored_and_verify_checks_it(
    db: Path, hermes_home: Path, cli: Callable[..., Result]
) -> None:
    result = cli("verify", "--db", str(db))
    assert result.exit_code == 0
    assert line(result, "anchors: ") == (
        f"anchors: none for this ledger in {hermes_home / 'ledger.anchors'}: truncation and"
        " rewrites with recomputed hashes are not detectable (run `hermes-ledger anchor`)"
    )
    result = cli("anchor", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Anchored position 8 of {db.resolve()} at ")
    assert f"witness {hermes_home / 'ledger.anchors'} (line 1," in result.output
    key = hermes_home / "ledger.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((hermes_home / "ledger.anchors").stat().st_mode) == 0o600
    written = json.loads((hermes_home / "ledger.anchors").read_text().splitlines()[0])
    assert set(written) == {"v", "ledger", "position", "hash", "at", "prev", "mac"}
    assert (written["ledger"], written["position"], written["prev"]) == (str(db.resolve()), 8, "")
    text, report = verify(cli, db)
    assert text.exit_code == 0
    assert text.output.splitlines()[0] == (
        "hash chain: ok: 8 events, hash chain intact up to position 8"
    )
    assert line(text, "anchors: ").startswith("anchors: ok: 1 anchor holds, the last at position 8")
    assert line(text, "schema: ").startswith("schema: ok: 11 triggers and indexes")
    assert line(text, "integrity: ") == "integrity: ok (PRAGMA integrity_check)"
    anchors = report["anchors"]
    assert isinstance(anchors, dict)
    assert (anchors["ok"], anchors["anchors"], anchors["unanchored"]) == (True, 1, 0)
    assert report["ok"] and report["integrity_ok"] and report["schema_ok"]
    # The same ledger by a relative path is the same ledger.
    os.chdir(db.parent)
    assert cli("anchor", "--db", db.name).exit_code == 0
    assert "2 anchors hold" in cli("verify", "--db", db.name).output


def test_anchor_refuses_an_empty_ledger_and_a_rewritten_one(
    tmp_path: Path, db: Path, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    empty = tmp_path / "empty.db"
    Ledger.open(empty).close()
    result = cli("anchor", "--db", str(empty))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {empty} has no events: there is no head to anchor\n")
    anchor(cli, db)
    with attacker(db) as conn:
        conn.execute("UPDATE events SET data = json_set(data, '$.content', 'x') WHERE position = 8")
        rehash_from(conn, 8)
    result = cli("anchor", "--db", str(db))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {db} holds another hash at position 8, anchored at ")
    assert "\nTry: run `hermes-ledger verify`" in result.output


def test_truncation_below_an_anchor_is_named(
    db: Path, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    anchored = anchor(cli, db)
    with attacker(db) as conn:
        conn.execute("DELETE FROM events WHERE position > 5")
    assert cli("replay", "--db", str(db)).exit_code == 0
    text, report = verify(cli, db)
    assert text.exit_code == 1
    # The chain, the projections and the file all look healthy: only the anchor knows.
    assert text.output.splitlines()[0] == (
        "hash chain: ok: 5 events, hash chain intact up to position 5"
    )
    assert line(text, "projections: ").startswith("projections: ok")
    assert line(text, "schema: ").startswith("schema: ok")
    assert line(text, "anchors: ") == (
        f"anchors: FAILED: truncated: the log ends at position 5, but position 8 was anchored"
        f" at {anchored['at']}: events 6..8 (at least) were deleted"
    )
    assert "Error: the ledger does not verify (anchors)\nTry: the log no longer matches" in (
        text.output
    )
    assert report["chain_ok"] and not report["ok"]
    assert report["problems"] == [line(text, "anchors: ")]


def test_truncation_then_new_appends_is_still_found(
    db: Path, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    anchor(cli, db)
    with attacker(db) as conn:
        conn.execute("DELETE FROM events WHERE position > 5")
    assert cli("replay", "--db", str(db)).exit_code == 0
    _talk(db, clock, 5)  # the log grows back past the anchored position
    text, _ = verify(cli, db)
    assert text.exit_code == 1
    assert "anchors: FAILED: rewritten: position 8 no longer has the hash anchored at" in (
        text.output
    )


def test_rewrite_below_an_anchor_is_named(
    db: Path, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    first = anchor(cli, db)  # position 8
    _talk(db, clock, 4)
    second = anchor(cli, db)  # position 12
    _talk(db, clock, 2)
    with attacker(db) as conn:
        conn.execute(
            "UPDATE events SET data = json_set(data, '$.content', 'forged') WHERE position = 10"
        )
        rehash_from(conn, 10)
    assert cli("replay", "--db", str(db)).exit_code == 0
    text, report = verify(cli, db)
    assert text.exit_code == 1
    assert text.output.splitlines()[0] == (
        "hash chain: ok: 14 events, hash chain intact up to position 14"
    )
    assert line(text, "anchors: ") == (
        f"anchors: FAILED: rewritten: position 12 no longer has the hash anchored at"
        f" {second['at']}: the log was changed at or before position 12 and after position 8"
        " (whose anchor still holds)"
    )
    assert first["position"] == 8
    assert not report["ok"] and report["chain_ok"] and report["projections_ok"]


def test_forged_append_above_the_last_anchor_is_not_detectable(
    db: Path, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    anchor(cli, db)
    with attacker(db) as conn:
        forged = forge_append(conn)
    assert forged == 9
    assert cli("replay", "--db", str(db)).exit_code == 0
    text, report = verify(cli, db)
    # As documented: the chain covers the forged row and no anchor is above it.
    assert text.exit_code == 0, text.output
    assert text.output.splitlines()[0] == (
        "hash chain: ok: 9 events, hash chain intact up to position 9"
    )
    assert line(text, "anchors: ").endswith(
        "; positions 9..9 are after the last anchor: the chain alone covers them"
        " (a forged append there is not detectable)"
    )
    anchors = report["anchors"]
    assert isinstance(anchors, dict)
    assert (anchors["unanchored_after"], anchors["unanchored"]) == (8, 1)
    docs = " ".join(DOCS.read_text().split())
    assert (
        "A row appended after the last anchor, with a hash computed the way the chain does,"
        " is not detectable" in docs
    )


def test_dropped_or_replaced_triggers_are_named(db: Path, cli: Callable[..., Result]) -> None:
    conn = apsw.Connection(str(db))
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("DROP TRIGGER events_refuse_delete")
    conn.execute("CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events BEGIN SELECT 1; END")
    conn.close()
    text, report = verify(cli, db)
    assert text.exit_code == 1
    assert line(text, "schema: ") == (
        "schema: FAILED: trigger events_refuse_update is missing (events can be updated);"
        " trigger events_refuse_delete differs from its migration (events can be deleted)"
    )
    assert report["schema_missing"] == ["trigger events_refuse_update"]
    assert report["schema_changed"] == ["trigger events_refuse_delete"]
    assert "Error: the ledger does not verify (schema)\nTry: someone with write access" in (
        text.output
    )


def test_dropped_one_end_index_is_named(db: Path, cli: Callable[..., Result]) -> None:
    conn = apsw.Connection(str(db))
    conn.execute("DROP INDEX events_one_end_per_session")
    conn.close()
    text, report = verify(cli, db)
    assert text.exit_code == 1
    assert line(text, "schema: ") == (
        "schema: FAILED: index events_one_end_per_session is missing (a session can end twice)"
    )
    assert report["schema_missing"] == ["index events_one_end_per_session"]


def test_corrupt_pages_fail_the_integrity_check(
    tmp_path: Path, db: Path, cli: Callable[..., Result]
) -> None:
    conn = apsw.Connection(str(db))
    ((page_size,),) = conn.execute("PRAGMA page_size").fetchall()
    ((root,),) = conn.execute(
        "SELECT rootpage FROM sqlite_schema WHERE name = 'events_by_session'"
    ).fetchall()
    conn.close()
    assert not Path(f"{db}-wal").exists()  # every page is in the main file
    copy = tmp_path / "copy.db"
    shutil.copyfile(db, copy)
    with open(copy, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    text, report = verify(cli, copy)
    assert text.exit_code == 1
    assert line(text, "integrity: ").startswith(
        "integrity: FAILED (PRAGMA integrity_check): the file is damaged: "
    )
    assert "\nTry: the file's pages are damaged (disk, copy or hand edit): restore it from a" in (
        text.output
    )
    assert report["integrity_ok"] is False and report["integrity_problems"]
    assert text.exception is None or isinstance(text.exception, SystemExit)
    quick = cli("verify", "--db", str(copy), "--quick")
    assert quick.exit_code == 1
    assert "integrity: FAILED (PRAGMA quick_check)" in quick.output


def test_corrupt_table_pages_never_raise_a_traceback(
    tmp_path: Path, db: Path, cli: Callable[..., Result]
) -> None:
    conn = apsw.Connection(str(db))
    ((page_size,),) = conn.execute("PRAGMA page_size").fetchall()
    ((root,),) = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'events'").fetchall()
    conn.close()
    copy = tmp_path / "copy.db"
    shutil.copyfile(db, copy)
    with open(copy, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    result = cli("verify", "--db", str(copy))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Error: " in result.output and "\nTry: " in result.output


def test_a_tampered_witness_line_is_named(
    db: Path, clock: ManualClock, hermes_home: Path, cli: Callable[..., Result]
) -> None:
    anchor(cli, db)
    _talk(db, clock, 2)
    anchor(cli, db)
    witness = hermes_home / "ledger.anchors"
    lines = witness.read_text().splitlines()
    # Move the first anchor down to hide a truncation: its MAC no longer matches.
    edited = json.loads(lines[0])
    edited["position"] = 3
    witness.write_text(json.dumps(edited) + "\n" + lines[1] + "\n")
    text, _ = verify(cli, db)
    assert text.exit_code == 1
    assert line(text, "anchors: ") == (
        "anchors: FAILED: witness line 1 (position 3) fails its MAC: it was edited, or written"
        " without the key"
    )
    # Removing the first line instead breaks the chain of lines.
    witness.write_text(lines[1] + "\n")
    text, _ = verify(cli, db)
    assert text.exit_code == 1
    assert line(text, "anchors: ") == (
        "anchors: FAILED: witness line 1 does not follow the start of the file: witness lines"
        " were removed or reordered"
    )
    # A damaged witness is not extended.
    result = cli("anchor", "--db", str(db))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: the witness {witness} does not check out: ")
    # Without the key the lines cannot be checked at all.
    (hermes_home / "ledger.key").unlink()
    text, _ = verify(cli, db)
    assert text.exit_code == 1
    assert "cannot be checked" in line(text, "anchors: ")


def test_a_key_others_can_read_is_refused(
    db: Path, hermes_home: Path, cli: Callable[..., Result]
) -> None:
    anchor(cli, db)
    key = hermes_home / "ledger.key"
    key.chmod(0o644)
    for command in ("anchor", "verify"):
        result = cli(command, "--db", str(db))
        assert result.exit_code == 1, command
        assert result.output == (
            f"Error: the anchor key {key} can be read or written by other users (mode 0644)\n"
            f"Try: chmod 600 {key} (and chown it to yourself); if others could read it,"
            " anchors made with it prove nothing: check the ledger, then start a new key\n"
        ), command
        assert result.exception is None or isinstance(result.exception, SystemExit)
    # A key file put there beforehand with a loose mode is not used for a first anchor.
    key.unlink()
    (hermes_home / "ledger.anchors").unlink()
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o640)
    result = cli("anchor", "--db", str(db))
    assert result.exit_code == 1 and "(mode 0640)" in result.output
    assert not (hermes_home / "ledger.anchors").exists()


def test_the_runner_anchors_at_its_interval(db: Path, tmp_path: Path, clock: ManualClock) -> None:
    home = tmp_path / "home"
    settings = RunnerSettings(anchor_interval=600)
    witness = home / "ledger.anchors"

    def positions() -> list[int]:
        if not witness.exists():
            return []
        return [json.loads(x)["position"] for x in witness.read_text().splitlines()]

    with Ledger.open(db, clock=clock) as led:
        gateway = build_gateway(
            led, home=home, config=NEVER, settings=settings, hooks=HookRegistry([], []),
            clock=clock,
        )  # fmt: skip
        runner = gateway.runner
        assert runner.witness is not None and runner.witness.path == witness
        first = runner.once()
        assert first.anchored is not None and first.anchored["position"] == 8
        assert first.to_dict()["anchored"] == first.anchored
        assert positions() == [8]
        store = gateway.store
        clock.advance(minutes=5)
        store.append_to_transcript("s1", {"role": "user", "content": "later"})
        assert runner.once().anchored is None  # 5 of 10 minutes
        assert positions() == [8]
        clock.advance(minutes=5)
        report = runner.once()
        assert report.anchored is not None and report.anchored["position"] == 9
        assert positions() == [8, 9]
        clock.advance(minutes=10)
        assert runner.once().anchored is None  # due, but the head has not moved
        assert positions() == [8, 9]

    # A new runner (a restart) times its interval from the last anchor in the witness.
    def restarted() -> Iterator[PassReport]:
        with Ledger.open(db, clock=clock) as led:
            yield build_gateway(
                led, home=home, config=NEVER, settings=settings, hooks=HookRegistry([], []),
                clock=clock,
            ).runner.once()  # fmt: skip

    _talk(db, clock, 1)
    clock.advance(minutes=1)  # 11 minutes after the anchor at position 9
    (report,) = restarted()
    assert report.anchored is not None and report.anchored["position"] == 10
    assert report.anchored["at"] == clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _talk(db, clock, 1)
    clock.advance(minutes=9)
    (report,) = restarted()
    assert report.anchored is None
    clock.advance(minutes=1)
    (report,) = restarted()
    assert report.anchored is not None and report.anchored["position"] == 11
    assert positions() == [8, 9, 10, 11]
    # 0 disables anchoring.
    with Ledger.open(db, clock=clock) as led:
        runner = build_gateway(
            led, home=home, config=NEVER, settings=RunnerSettings(anchor_interval=0),
            hooks=HookRegistry([], []), clock=clock,
        ).runner  # fmt: skip
        assert runner.witness is None
        clock.advance(hours=5)
        _talk(db, clock, 1)
        assert runner.once().anchored is None
    assert positions() == [8, 9, 10, 11]
    assert RunnerSettings().anchor_interval == 3600


def test_a_refused_anchor_does_not_stop_the_runner(
    db: Path, tmp_path: Path, clock: ManualClock
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "ledger.key").write_text("ab" * 32 + "\n")
    (home / "ledger.key").chmod(0o644)
    with Ledger.open(db, clock=clock) as led:
        runner = build_gateway(
            led, home=home, config=NEVER, settings=RunnerSettings(anchor_interval=60),
            hooks=HookRegistry([], []), clock=clock,
        ).runner  # fmt: skip
        report = runner.once()
    assert report.anchored is None
    assert report.anchor_error is not None and "mode 0644" in report.anchor_error
    assert timedelta(seconds=60) == timedelta(seconds=runner.settings.anchor_interval)


def test_witness_serves_several_ledgers(tmp_path: Path, db: Path, clock: ManualClock) -> None:
    other = tmp_path / "other.db"
    _talk(other, clock, 2)
    witness = Witness.in_directory(tmp_path / "home")
    with Ledger.open(db) as a, Ledger.open(other) as b:
        witness.anchor(a)
        witness.anchor(b)
        assert [x.position for x in witness.check(a).anchors] == [8]
        assert [x.position for x in witness.check(b).anchors] == [3]
        assert witness.check(a).ok and witness.check(b).ok
