"""`hermes-ledger import --from-hermes`: a Hermes 0.19 home becomes session events."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import ManualClock, installed_script, run_on_terminal
from hermes_fixture import (
    T0,
    HermesFixture,
    StandardHome,
    build_standard_home,
    origin,
    sid,
)

from hermes_ledger import projections
from hermes_ledger.gateway.cli import cli as ledger_cli
from hermes_ledger.gateway.hermes.importing import (
    IMPORT_ACTOR,
    HermesImportError,
    import_hermes_home,
    import_key,
)
from hermes_ledger.gateway.sessions.reads import load_transcript
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, UsageRecorded

TG = "agent:main:telegram:dm:1001"
SLACK = "agent:main:slack:channel:C01:U7"


@pytest.fixture
def home(tmp_path: Path) -> StandardHome:
    return build_standard_home(tmp_path / "hermes")


def utc(timestamp: float) -> str:
    return format_utc(datetime.fromtimestamp(timestamp, UTC))


def hermes_rows(home: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{(home / 'state.db').as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def hermes_transcript(home: Path, session_id: str) -> list[dict[str, Any]]:
    """What Hermes' ``get_messages`` returns (active rows, content decoded), in the
    shape ``load_transcript`` hands out."""
    out = []
    for role, content, calls, name, call_id, ts in hermes_rows(
        home,
        "SELECT role, content, tool_calls, tool_name, tool_call_id, timestamp FROM messages"
        " WHERE session_id = ? AND active = 1 ORDER BY id",
        (session_id,),
    ):
        if isinstance(content, str) and content.startswith("\x00json:"):
            content = json.loads(content[6:])
        message: dict[str, Any] = {"role": role, "content": content, "timestamp": utc(ts)}
        if calls:
            message["tool_calls"] = json.loads(calls)
        if name:
            message["tool_name"] = name
        if call_id:
            message["tool_call_id"] = call_id
        out.append(message)
    return out


def ledger_transcript(led: Ledger, session_id: str) -> list[dict[str, Any]]:
    messages = load_transcript(led, session_id)
    for message in messages:  # multimodal content is kept as JSON text
        if isinstance(message["content"], str) and message["content"].startswith("[{"):
            message["content"] = json.loads(message["content"])
    return messages


def fingerprint(home: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((home / name).read_bytes()).hexdigest()
        for name in ("state.db", "sessions/sessions.json")
    }


def stream_types(led: Ledger, key: str) -> list[str]:
    return [rec.type for rec in led.read_stream(key)]


def history(led: Ledger) -> dict[str, tuple[Any, ...]]:
    rows = led.query(
        "SELECT session_id, session_key, started_at, ended_at, end_reason, start_reason,"
        " message_count, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
        " cost_nano_usd FROM session_history"
    )
    return {row[0]: tuple(row[1:]) for row in rows}


@pytest.fixture
def imported(home: StandardHome, db_path: Path, clock: ManualClock) -> Iterator[Ledger]:
    with Ledger.open(db_path, clock=clock) as led:
        import_hermes_home(led, home.path)
        yield led


# -- a full import -----------------------------------------------------------------------


def test_full_import_counts_and_keys(home: StandardHome, led: Ledger) -> None:
    before = fingerprint(home.path)
    progress: list[tuple[int, int]] = []
    report = import_hermes_home(led, home.path, progress=lambda d, t: progress.append((d, t)))

    assert report.to_dict() == {
        "home": str(home.path),
        "ledger": str(led.path),
        "sessions_read": 14,
        "sessions": 14,
        "updated": 0,
        "skipped": 0,
        "messages": 36,
        "usage": 5,
        "ended": 9,
        "events": 64,
        "first_position": 1,
        "last_position": 64,
        "keys": 9,
        "warnings": [],
    }
    assert progress[0] == (0, 14) and progress[-1] == (14, 14) and len(progress) == 15
    rows = history(led)
    assert {s: row[0] for s, row in rows.items()} == home.keys
    assert {s: row[3] for s, row in rows.items()} == home.ends
    # Every event says it came from the import; the log and the projections check out.
    assert {rec.meta.get("actor") for rec in led.read_all()} == {IMPORT_ACTOR}
    assert led.verify().ok
    assert projections.verify(led).ok
    # The Hermes files are only read.
    assert fingerprint(home.path) == before


def test_keys_follow_routing_recorded_keys_parents_origins_and_fallback(
    home: StandardHome, imported: Ledger
) -> None:
    keys = {s: row[0] for s, row in history(imported).items()}
    group = sid(T0 + timedelta(hours=2), "c3d4e5f6")  # no key column: routing names it
    child = sid(T0 + timedelta(days=1, minutes=5), "b8c9d0e1")  # compression child
    whatsapp = sid(T0 + timedelta(hours=5), "a3b4c5d6")  # built from origin_json
    signal = sid(T0 + timedelta(hours=6), "b4c5d6e7")  # built from the chat columns
    cli = sid(T0 + timedelta(hours=4), "e1f2a3b4")  # nothing to build from
    assert keys[group] == "agent:main:telegram:group:-100200:42"
    assert keys[child] == SLACK
    assert keys[whatsapp] == "agent:main:whatsapp:dm:15550001"
    assert keys[signal] == "agent:main:signal:group:grp=:u9"
    assert keys[cli] == import_key("cli", cli) == f"agent:main:cli:import:{cli}"
    # The session map shows each key's current session as Hermes routes it.
    current = dict(imported.query("SELECT session_key, session_id FROM session_map"))
    open_now = dict(
        imported.query("SELECT session_key, session_id FROM session_map WHERE status = 'open'")
    )
    assert {k: current[k] for k in home.open_keys} == home.open_keys
    assert set(open_now) == {
        *home.open_keys,
        import_key("cli", sid(T0 + timedelta(days=3), "f2a3b4c5")),
    }


def test_streams_read_like_the_live_gateway_wrote_them(imported: Ledger) -> None:
    assert stream_types(imported, TG) == [
        "session_started",
        *["message_appended"] * 4,
        "usage_recorded",
        "session_ended",
        "session_started",
        *["message_appended"] * 2,
        "usage_recorded",
    ]
    starts = [
        (rec.event.reason, rec.event.previous_session_id)
        for rec in imported.read_stream(SLACK)
        if isinstance(rec.event, SessionStarted)
    ]
    assert starts == [
        ("first", None),
        ("auto_reset", sid(T0, "f6a7b8c9")),  # after "daily"
        ("auto_reset", sid(T0 + timedelta(days=1), "a7b8c9d0")),  # after "compression"
        ("auto_reset", sid(T0 + timedelta(days=1, minutes=5), "b8c9d0e1")),  # after "idle"
    ]
    discord = [
        rec.event.reason
        for rec in imported.read_stream("agent:main:discord:thread:555:777")
        if isinstance(rec.event, SessionStarted)
    ]
    assert discord == ["first", "manual_reset"]  # after "session_reset"


def test_times_reasons_and_usage_are_hermes_own(home: StandardHome, imported: Ledger) -> None:
    rows = history(imported)
    for (
        session_id, started, ended, reason, tin, tout, tcr, tcw, est, act
    ) in hermes_rows(
        home.path,
        "SELECT id, started_at, ended_at, end_reason, input_tokens, output_tokens,"
        " cache_read_tokens, cache_write_tokens, estimated_cost_usd, actual_cost_usd"
        " FROM sessions",
    ):  # fmt: skip
        _key, l_started, l_ended, l_reason, _start, _n, lin, lout, lcr, lcw, nano = rows[session_id]
        assert (l_started, l_ended, l_reason) == (
            utc(started),
            None if ended is None else utc(ended),
            reason,
        )
        assert (lin, lout, lcr, lcw) == (tin, tout, tcr, tcw)
        cost = act if act is not None else est
        assert nano == round((cost or 0) * 1e9)
    usage = [rec.event for rec in imported.read_all(types=["usage_recorded"])]
    assert all(isinstance(u, UsageRecorded) and u.model for u in usage)
    api = next(u for u in usage if u.session_id.endswith("d0e1f2a3"))
    assert isinstance(api, UsageRecorded)
    assert (api.input_tokens, api.output_tokens, api.cost_usd) == (400, 20, 0.0012)  # actual cost


def test_transcripts_equal_hermes_messages(home: StandardHome, imported: Ledger) -> None:
    for session_id in home.session_ids:
        assert ledger_transcript(imported, session_id) == hermes_transcript(home.path, session_id)
    counts = dict(imported.query("SELECT session_id, message_count FROM session_history"))
    hermes_counts = dict(hermes_rows(home.path, "SELECT id, message_count FROM sessions"))
    assert counts == hermes_counts


def test_messages_keep_hermes_fields(home: StandardHome, imported: Ledger) -> None:
    slack = sid(T0 + timedelta(days=1), "a7b8c9d0")
    messages = [
        rec.event
        for rec in imported.read_all(types=["message_appended"])
        if rec.session_id == slack
    ]
    assert [(m.role, m.synthetic) for m in messages if isinstance(m, MessageAppended)] == [
        ("user", False),
        ("assistant", True),  # rewound in Hermes (active = 0): in the log, not in transcripts
        ("user", False),
        ("assistant", False),
    ]
    first = [
        rec.event
        for rec in imported.read_all(types=["message_appended"])
        if rec.session_id == sid(T0, "a1b2c3d4")
    ]
    assert isinstance(first[0], MessageAppended) and first[0].platform_message_id == "5001"
    assert first[0].occurred_at == T0 + timedelta(minutes=1)
    assert isinstance(first[1], MessageAppended) and first[1].tool_calls is not None
    assert first[1].tool_calls[0]["function"]["name"] == "web_search"
    assert isinstance(first[3], MessageAppended) and first[3].output_tokens == 9
    sources = {
        rec.stream: rec.event.source
        for rec in imported.read_all(types=["session_started"])
        if isinstance(rec.event, SessionStarted)
    }
    group = sources["agent:main:telegram:group:-100200:42"]
    assert (group.chat_name, group.user_name, group.chat_type) == ("Family", "bob", "group")
    assert sources["agent:main:discord:thread:555:777"].thread_id == "777"
    child = next(
        rec.event.source
        for rec in imported.read_all(types=["session_started"])
        if isinstance(rec.event, SessionStarted) and rec.session_id.endswith("b8c9d0e1")
    )
    assert (child.platform, child.chat_id, child.chat_name) == ("slack", "C01", "ops")  # parent's
    signal = sources["agent:main:signal:group:grp=:u9"]
    assert (signal.platform, signal.chat_id, signal.user_id) == ("signal", "grp=", "u9")


# -- importing again ------------------------------------------------------------------


def test_importing_again_appends_nothing(home: StandardHome, imported: Ledger) -> None:
    head = imported.head()
    report = import_hermes_home(imported, home.path)
    assert imported.head() == head
    assert (report.events, report.skipped, report.sessions_read) == (0, 14, 14)
    assert report.summary() == [
        f"Nothing new to import from {home.path}: all 14 sessions are already in {imported.path}"
    ]


def test_a_second_import_appends_exactly_what_hermes_gained(
    home: StandardHome, imported: Ledger
) -> None:
    day = timedelta(days=1)
    tg2 = sid(T0 + day, "b2c3d4e5")
    tg3 = sid(T0 + 4 * day, "d5e6f7a8")
    new_key = "agent:main:discord:dm:900"
    with HermesFixture(home.path) as h:
        at = (T0 + 4 * day).timestamp()
        h.append_message(tg2, "user", "one more thing", at=at - 120)
        h.append_message(tg2, "assistant", "Sure.", at=at - 60)
        h.set_usage(tg2, input_tokens=500, output_tokens=130, estimated_cost_usd=0.0031)
        h.end_session(tg2, "idle", at=at)
        h.create_session(tg3, "telegram", started_at=at, session_key=TG, origin=home.origins[TG])
        h.append_message(tg3, "user", "back again", at=at + 60)
        h.route(TG, tg3, origin=home.origins[TG], at=at + 60)
        dm = origin("discord", "900", user_id="900", user_name="fay")
        s = h.create_session(sid(T0 + 4 * day, "e6f7a8b9"), "discord", started_at=at + 5,
                             session_key=new_key, origin=dm)  # fmt: skip
        h.append_message(s, "user", "hey", at=at + 6)
        h.route(new_key, s, origin=dm, at=at + 6)
    head = imported.head()
    report = import_hermes_home(imported, home.path)

    assert (report.sessions, report.updated, report.skipped) == (2, 1, 13)
    assert (report.messages, report.usage, report.ended, report.events) == (4, 1, 1, 8)
    assert (report.first_position, report.last_position) == (head + 1, head + 8)
    assert report.warnings == []
    assert stream_types(imported, TG)[-7:] == [
        "usage_recorded",  # the first import's usage of tg2
        "message_appended",
        "message_appended",
        "usage_recorded",  # what tg2 used since
        "session_ended",
        "session_started",
        "message_appended",
    ]
    delta = [r.event for r in imported.read_stream(TG) if isinstance(r.event, UsageRecorded)][-1]
    assert (delta.input_tokens, delta.output_tokens, delta.cost_usd) == (200, 40, 0.0011)
    rows = history(imported)
    assert rows[tg2][3:4] + rows[tg2][6:8] == ("idle", 500, 130)
    assert rows[tg3][0] == TG and rows[tg3][4] == "auto_reset"
    assert ledger_transcript(imported, tg2) == hermes_transcript(home.path, tg2)
    assert projections.verify(imported).ok
    # And a third import has nothing left to do.
    assert import_hermes_home(imported, home.path).events == 0


@pytest.mark.parametrize("routing", ["table", "sessions.json", "sessions.json, no table"])
def test_routing_from_either_index(tmp_path: Path, led: Ledger, routing: str) -> None:
    home = build_standard_home(tmp_path / "hermes")
    if routing.startswith("sessions.json"):
        with sqlite3.connect(home.path / "state.db") as conn:
            if routing.endswith("no table"):
                conn.execute("DROP TABLE gateway_routing")
            else:
                conn.execute("DELETE FROM gateway_routing")
        conn.close()
    else:
        (home.path / "sessions" / "sessions.json").unlink()
    report = import_hermes_home(led, home.path)
    assert report.warnings == []
    assert {s: row[0] for s, row in history(led).items()} == home.keys


# -- what cannot be imported as it is --------------------------------------------------


def test_a_session_left_open_is_ended_when_the_next_one_starts(tmp_path: Path, led: Ledger) -> None:
    key = "agent:main:telegram:dm:7"
    o = origin("telegram", "7", user_id="7")
    a, b = sid(T0, "00000001"), sid(T0 + timedelta(hours=1), "00000002")
    with HermesFixture(tmp_path / "h") as h:
        h.create_session(a, "telegram", started_at=T0.timestamp(), session_key=key, origin=o)
        h.append_message(a, "user", "hi", at=T0.timestamp() + 1)
        h.create_session(b, "telegram", started_at=T0.timestamp() + 3600, session_key=key,
                         origin=o)  # fmt: skip
        h.route(key, b, origin=o, at=T0.timestamp() + 3600)
    report = import_hermes_home(led, tmp_path / "h")
    assert report.warnings == [
        f"session {a}: still open in Hermes when {b} started on {key}; ended with reason "
        "'superseded'"
    ]
    assert stream_types(led, key) == [
        "session_started", "message_appended", "session_ended", "session_started",
    ]  # fmt: skip
    rows = history(led)
    assert (rows[a][3], rows[a][2]) == ("superseded", utc(T0.timestamp() + 3600))
    assert rows[b][4] == "auto_reset"
    # Hermes ends it for real later: the ledger already has its (one) end.
    with HermesFixture(tmp_path / "h") as h:
        h.end_session(a, "session_reset", at=T0.timestamp() + 3600)
    assert import_hermes_home(led, tmp_path / "h").events == 0


def test_what_arrives_after_a_session_was_imported_as_ended_is_reported(
    home: StandardHome, imported: Ledger
) -> None:
    tg1 = sid(T0, "a1b2c3d4")
    with HermesFixture(home.path) as h:
        h.reopen_session(tg1)  # /resume
        h.append_message(tg1, "user", "resumed", at=(T0 + timedelta(days=5)).timestamp())
    head = imported.head()
    report = import_hermes_home(imported, home.path)
    assert imported.head() == head
    assert report.warnings == [
        f"session {tg1}: 1 event(s) Hermes recorded after later events of {TG} were imported "
        "(a reopened or late session) are left out"
    ]


def test_messages_hermes_rewrote_after_the_import_are_reported(
    home: StandardHome, imported: Ledger
) -> None:
    tg1 = sid(T0, "a1b2c3d4")
    with sqlite3.connect(home.path / "state.db") as conn:  # /undo, then /retry
        ids = [r[0] for r in conn.execute("SELECT id FROM messages WHERE session_id = ?", (tg1,))]
        conn.execute("UPDATE messages SET active = 0 WHERE id = ?", (ids[-1],))
        conn.execute("DELETE FROM messages WHERE id = ?", (ids[-2],))
    conn.close()
    report = import_hermes_home(imported, home.path)
    assert report.events == 0
    assert report.warnings == [
        f"session {tg1}: Hermes has since rewritten or hidden 2 imported message(s) "
        "(/undo, /retry, compression); the ledger keeps them"
    ]


def test_rows_the_ledger_cannot_hold_are_left_out_with_a_warning(
    tmp_path: Path, led: Ledger
) -> None:
    s = sid(T0, "0000000a")
    with HermesFixture(tmp_path / "h") as h:
        h.create_session(s, "cli", started_at=T0.timestamp())
        h.append_message(s, "session_meta", "x", at=T0.timestamp())
        h.append_message(s, "user", "kept", at=T0.timestamp() + 1)
        h.conn.execute(
            "INSERT INTO messages (session_id, role, tool_calls, timestamp) VALUES (?, ?, ?, ?)",
            (s, "assistant", "{not json", T0.timestamp() + 2),
        )
    report = import_hermes_home(led, tmp_path / "h")
    assert report.messages == 1
    assert report.warnings == [
        f"session {s}: message 3 left out (Expecting property name enclosed in double quotes:"
        " line 1 column 2 (char 1))",
        f"session {s}: 1 message(s) with role 'session_meta' left out",
    ]


def test_a_key_the_live_gateway_also_writes_is_left_alone(home: StandardHome, led: Ledger) -> None:
    led.append(
        TG,
        [SessionStarted(session_id="live-1", source={"platform": "telegram", "chat_id": "1001"})],
        meta={"actor": "gateway"},
    )
    report = import_hermes_home(led, home.path)
    assert report.sessions == 12
    assert [w.split(": ", 1)[1] for w in report.warnings] == [
        f"{TG} also has events not written by a Hermes import; 7 event(s) left out",
        f"{TG} also has events not written by a Hermes import; 4 event(s) left out",
    ]
    assert stream_types(led, TG) == ["session_started"]


# -- refusals ---------------------------------------------------------------------------


def bad_home(case: str, p: Path) -> tuple[Path, str]:
    """(a path that is not an importable Hermes home, the error it gets)."""
    if case == "missing":
        return p / "nope", f"{p}/nope does not exist"
    if case == "a file":
        (p / "notes.txt").write_text("x")
        return p / "notes.txt", f"{p}/notes.txt is a file, not a Hermes home directory"
    (p / "h").mkdir()
    if case == "no state.db":
        return p / "h", f"{p}/h is not a Hermes home: it has no state.db"
    if case == "not sqlite":
        (p / "h" / "state.db").write_text("x" * 200)
        return p / "h", f"{p}/h/state.db is not a SQLite database"
    if case == "another sqlite db":
        Ledger.open(p / "h" / "state.db").close()
        return p / "h", (
            f"{p}/h/state.db is not a Hermes state.db (it has no schema_version or sessions table)"
        )
    version = {"older schema": 21, "newer schema": 23}[case]
    build_standard_home(p / "h")
    with sqlite3.connect(p / "h" / "state.db") as conn:
        conn.execute("UPDATE schema_version SET version = ?", (version,))
    conn.close()
    return p / "h", (
        f"{p}/h/state.db has Hermes schema version {version}; this import reads version 22 "
        "(Hermes 0.19)"
    )


BAD_HOMES = [
    "missing", "a file", "no state.db", "not sqlite", "another sqlite db", "older schema",
    "newer schema",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_HOMES)
def test_a_path_that_is_not_a_hermes_home_is_refused(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path, expected = bad_home(case, src)
    before = sorted(p.name for p in path.parent.rglob("*"))
    with Ledger.open(tmp_path / "lib.db") as led:
        with pytest.raises(HermesImportError) as err:
            import_hermes_home(led, path)
        assert str(err.value) == expected
        assert led.head() == 0
    db = tmp_path / "cli.db"
    result = CliRunner().invoke(ledger_cli, ["import", "--from-hermes", str(path), "--db", str(db)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {expected}\nTry: ")
    assert not db.exists()  # refused before the ledger was created
    assert sorted(p.name for p in path.parent.rglob("*")) == before


def test_a_state_db_path_names_its_home(home: StandardHome, led: Ledger) -> None:
    assert import_hermes_home(led, home.path / "state.db").sessions == 14


# -- the command -------------------------------------------------------------------------


def test_cli_imports_reports_and_is_idempotent(home: StandardHome, tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    args = ["import", "--from-hermes", str(home.path), "--db", str(db)]
    result = CliRunner().invoke(ledger_cli, args)
    assert (result.exit_code, result.output) == (
        0,
        f"Imported 64 events from {home.path} into {db} (positions 1-64)\n"
        "  sessions  14 new, 0 updated, 0 already imported (14 in state.db)\n"
        "  messages  36\n"
        "  usage     5 records\n"
        "  ended     9 sessions\n",
    )
    result = CliRunner().invoke(ledger_cli, args)
    assert (result.exit_code, result.output) == (
        0,
        f"Nothing new to import from {home.path}: all 14 sessions are already in {db}\n",
    )
    result = CliRunner().invoke(ledger_cli, [*args, "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert (data["events"], data["skipped"], data["warnings"]) == (0, 14, [])
    # The imported sessions are what `hermes-ledger history` shows.
    result = CliRunner().invoke(ledger_cli, ["history", SLACK, "--db", str(db)])
    assert result.output.splitlines() == [
        "session_id                started_at                   ended_at                     end_reason   message_count",  # noqa: E501
        "------------------------  ---------------------------  ---------------------------  -----------  -------------",  # noqa: E501
        "20261101_090000_f6a7b8c9  2026-11-01T09:00:00.000000Z  2026-11-02T09:00:00.000000Z  daily                    2",  # noqa: E501
        "20261102_090000_a7b8c9d0  2026-11-02T09:00:00.000000Z  2026-11-02T09:05:00.000000Z  compression              3",  # noqa: E501
        "20261102_090500_b8c9d0e1  2026-11-02T09:05:00.000000Z  2026-11-02T11:00:00.000000Z  idle                     2",  # noqa: E501
        "20261103_090000_c9d0e1f2  2026-11-03T09:00:00.000000Z                                                        1",  # noqa: E501
        "(4 rows)",
    ]


def test_cli_json_and_warnings(tmp_path: Path) -> None:
    key = "agent:main:telegram:dm:7"
    o = origin("telegram", "7", user_id="7")
    with HermesFixture(tmp_path / "h") as h:
        h.create_session("a", "telegram", started_at=T0.timestamp(), session_key=key, origin=o)
        h.create_session("b", "telegram", started_at=T0.timestamp() + 60, session_key=key,
                         origin=o)  # fmt: skip
    db = tmp_path / "cli.db"
    args = ["import", "--from-hermes", str(tmp_path / "h"), "--db", str(db)]
    result = CliRunner().invoke(ledger_cli, [*args, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "home": str(tmp_path / "h"),
        "ledger": str(db),
        "sessions_read": 2,
        "sessions": 2,
        "updated": 0,
        "skipped": 0,
        "messages": 0,
        "usage": 0,
        "ended": 1,
        "events": 3,
        "first_position": 1,
        "last_position": 3,
        "keys": 1,
        "warnings": [
            f"session a: still open in Hermes when b started on {key}; ended with reason "
            "'superseded'"
        ],
    }
    shutil.rmtree(tmp_path / "h")
    with HermesFixture(tmp_path / "h") as h:
        h.create_session("c", "cli", started_at=T0.timestamp())
        h.append_message("c", "narrator", "?", at=T0.timestamp())
    result = CliRunner().invoke(ledger_cli, args)
    assert result.exit_code == 0
    assert result.stderr == "Warning: session c: 1 message(s) with role 'narrator' left out\n"
    assert result.stdout.startswith("Imported 1 event from")


def test_cli_usage_errors_and_the_jsonl_path(home: StandardHome, tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    result = CliRunner().invoke(
        ledger_cli, ["import", "x.jsonl", "--from-hermes", str(home.path), "--db", str(db)]
    )
    assert result.exit_code == 2
    assert "give either SOURCE or --from-hermes, not both" in result.output
    # Without --from-hermes the command restores an export, as before (and --json works).
    export = tmp_path / "e.jsonl"
    CliRunner().invoke(ledger_cli, ["import", "--from-hermes", str(home.path), "--db", str(db)])
    CliRunner().invoke(ledger_cli, ["export", "--db", str(db), "-o", str(export)])
    copy = tmp_path / "copy.db"
    result = CliRunner().invoke(ledger_cli, ["import", str(export), "--db", str(copy), "--json"])
    assert result.exit_code == 0
    with Ledger.open(db) as led:
        last = led.query("SELECT hash FROM events ORDER BY position DESC LIMIT 1")[0][0]
    assert json.loads(result.output) == {
        "ledger": str(copy),
        "count": 64,
        "last_position": 64,
        "last_hash": last,
    }


# -- the fixture is Hermes' schema -------------------------------------------------------

HERMES_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from gateway.config import GatewayConfig, Platform
    from gateway.session import SessionSource, SessionStore
    from hermes_state import SessionDB

    home = Path(sys.argv[1])
    store = SessionStore(home / "sessions", GatewayConfig())
    ada = SessionSource(platform=Platform.TELEGRAM, chat_id="99", user_id="99", user_name="ada")
    first = store.get_or_create_session(ada)
    store.append_to_transcript(first.session_id, {"role": "user", "content": "hello"})
    store.append_to_transcript(first.session_id, {"role": "assistant", "content": "hi ada"})
    second = store.reset_session(first.session_key)
    room = SessionSource(platform=Platform.DISCORD, chat_id="555", chat_type="thread",
                         thread_id="777", user_id="12", user_name="bob", chat_name="dev")
    third = store.get_or_create_session(room)
    db = SessionDB(home / "state.db")
    db.create_session("cli-1", "cli")
    db.append_message("cli-1", "user", "from the terminal")
    db.update_token_counts("cli-1", input_tokens=10, output_tokens=5, estimated_cost_usd=0.01)
    db.end_session("cli-1", "cli_close")
    print(json.dumps([first.session_id, second.session_id, third.session_id]))
    """
)


@pytest.fixture
def real_home(tmp_path: Path) -> tuple[Path, list[str]]:
    """A home written by the installed Hermes 0.19 (the ``test`` extra), run isolated
    (``-I``) so that only the installed ``gateway`` package can be imported."""
    path = tmp_path / "real"
    path.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-c", HERMES_SCRIPT, str(path)],
        cwd=path,
        env={"HERMES_HOME": str(path), "HOME": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return path, json.loads(done.stdout.splitlines()[-1])


def test_the_fixture_writes_the_schema_hermes_writes(
    real_home: tuple[Path, list[str]], home: StandardHome
) -> None:
    sql = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"

    def normal(rows: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        return {(t, n, tb, " ".join((s or "").replace("IF NOT EXISTS ", "").split()))
                for t, n, tb, s in rows}  # fmt: skip

    assert normal(hermes_rows(home.path, sql)) == normal(hermes_rows(real_home[0], sql))
    version = "SELECT version FROM schema_version"
    assert hermes_rows(home.path, version) == hermes_rows(real_home[0], version) == [(22,)]


def test_a_home_written_by_hermes_itself_imports(
    real_home: tuple[Path, list[str]], led: Ledger
) -> None:
    path, (first, second, third) = real_home
    report = import_hermes_home(led, path)
    assert report.warnings == []
    assert (report.sessions, report.messages, report.usage, report.ended) == (4, 3, 1, 2)
    keys = {s: row[0] for s, row in history(led).items()}
    assert keys == {
        first: "agent:main:telegram:dm:99",
        second: "agent:main:telegram:dm:99",
        third: "agent:main:discord:thread:555:777",
        "cli-1": "agent:main:cli:import:cli-1",
    }
    assert history(led)[first][3] == "session_reset"
    assert ledger_transcript(led, first) == hermes_transcript(path, first)
    assert projections.verify(led).ok


def test_new_messages_without_new_usage_are_appended(home: StandardHome, imported: Ledger) -> None:
    tg2 = sid(T0 + timedelta(days=1), "b2c3d4e5")  # its usage was imported; it stays the same
    with HermesFixture(home.path) as h:
        h.append_message(tg2, "user", "thanks", at=(T0 + timedelta(days=2)).timestamp())
    report = import_hermes_home(imported, home.path)
    assert (report.messages, report.usage, report.events, report.warnings) == (1, 0, 1, [])
    assert ledger_transcript(imported, tg2) == hermes_transcript(home.path, tg2)


def test_imports_running_at_once_write_each_event_once(home: StandardHome, tmp_path: Path) -> None:
    script = installed_script()
    db = tmp_path / "race.db"
    Ledger.open(db).close()
    command = [script, "import", "--from-hermes", str(home.path), "--db", str(db)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]  # fmt: skip
    for run in runs:
        _, err = run.communicate(timeout=60)
        if run.returncode != 0:  # lost a race on a key (after appending other keys, maybe)
            assert run.returncode == 1 and err.startswith("Error: something else appended to ")
            assert err.endswith("Try: run the import again: it appends what is still missing\n")
    subprocess.run(command, capture_output=True, timeout=60, check=True)  # finishes any of it
    with Ledger.open(db) as led:
        assert led.head() == 64
        assert led.verify().ok
        assert projections.verify(led).ok
        counts = dict(led.query("SELECT type, count(*) FROM events GROUP BY type"))
    assert counts == {
        "session_started": 14, "message_appended": 36, "usage_recorded": 5, "session_ended": 9,
    }  # fmt: skip


def test_a_progress_bar_when_stderr_is_a_terminal(home: StandardHome, tmp_path: Path) -> None:
    script = installed_script()
    db = tmp_path / "tty.db"
    done, shown = run_on_terminal(
        [script, "import", "--from-hermes", str(home.path), "--db", str(db)], "stderr"
    )
    assert done.returncode == 0
    assert done.stdout.startswith(f"Imported 64 events from {home.path} into {db}")
    assert b"importing" in shown and b"100%" in shown, shown
    # No bar with --json (the output is for a script).
    done, shown = run_on_terminal(
        [script, "import", "--from-hermes", str(home.path), "--db", str(db), "--json"], "stderr"
    )
    assert done.returncode == 0 and b"importing" not in shown, shown


def test_sources_and_keys_the_ledger_cannot_use_as_they_are(tmp_path: Path, led: Ledger) -> None:
    odd, bad_key = sid(T0, "0000000b"), sid(T0, "0000000c")
    with HermesFixture(tmp_path / "h") as h:
        h.create_session(odd, "Matrix.org", started_at=T0.timestamp(),
                         origin=origin("Matrix.org", "!room", chat_type="forum"))  # fmt: skip
        h.append_message(odd, "user", 42, at=T0.timestamp())  # SQLite stores what it is given
        h.create_session(bad_key, "telegram", started_at=T0.timestamp() + 1,
                         session_key="agent:main:telegram:dm:\x07",
                         origin=origin("telegram", "5"))  # fmt: skip
        h.create_session("bad\nid", "cli", started_at=T0.timestamp() + 2)
    report = import_hermes_home(led, tmp_path / "h")
    assert [w.split(" (")[0] for w in report.warnings] == [
        "a session with id 'bad\\nid' and start 1793523602.0 is left out",
        f"session {odd}: its origin is not a valid source",
        f"session {bad_key}: its key cannot name a stream",
    ]
    rows = history(led)
    assert rows[odd][0] == import_key("Matrix.org", odd)
    assert rows[bad_key][0] == "agent:main:telegram:dm:5"  # built from the origin instead
    started = next(led.read_stream(import_key("Matrix.org", odd))).event
    assert isinstance(started, SessionStarted)
    assert (started.source.platform, started.source.chat_type) == ("Matrix.org", "forum")
    assert load_transcript(led, odd)[0]["content"] == "42"


def test_a_write_to_a_key_during_the_import_stops_it(home: StandardHome, led: Ledger) -> None:
    tg1 = sid(T0, "a1b2c3d4")  # the key's first session; its second comes a day later

    def meddle(done: int, total: int) -> None:
        if (
            done
            and led.stream_version(TG) == 7
            and not led.query("SELECT 1 FROM events WHERE session_id = 'x'")
        ):  # right after tg1 went in: another writer appends to its key
            with Ledger.open(led.path) as other:
                other.append(TG, [SessionStarted(session_id="x", source={"platform": "cli"})],
                             meta={"actor": IMPORT_ACTOR})  # fmt: skip

    with pytest.raises(HermesImportError) as err:
        import_hermes_home(led, home.path, progress=meddle)
    assert str(err.value) == (
        f"something else appended to {TG} while {home.path} was being imported"
    )
    assert err.value.hint == "run the import again: it appends what is still missing"
    # What went in before stays in.
    assert [(r.type, r.session_id) for r in led.read_stream(TG)][-2:] == [
        ("session_ended", tg1),
        ("session_started", "x"),
    ]


def test_cli_import_redacts_the_tools_the_homes_ledger_section_names(
    home: StandardHome, tmp_path: Path, cli: Any
) -> None:
    # What live capture of this home would store: the same redaction, the same events.
    (home.path / "config.yaml").write_text("ledger:\n  redact_tools: [terminal]\n")
    db = tmp_path / "redacted.db"
    result = cli("import", "--from-hermes", str(home.path), "--db", str(db))
    assert result.exit_code == 0, result.output
    with Ledger.open(db) as led:
        calls = [
            call
            for rec in led.read_all()
            if rec.type == "message_appended" and rec.event.tool_calls
            for call in rec.event.tool_calls
        ]
    terminal = [c for c in calls if "terminal" in json.dumps(c)]
    assert terminal, "the standard home has a terminal call"
    assert all('"cmd"' not in json.dumps(c) and "[redacted]" in json.dumps(c) for c in terminal)
