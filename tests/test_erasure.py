"""Erasure (docs/erasure.md): the content of a subject is forgotten from every read
surface and from the bytes of the ledger's files, the chain still verifies, and a
payload deleted without an erasure is tampering.

The tests that take ``backend`` (tests/backends.py) run on SQLite and PostgreSQL and
read through ``EventLog``, the projection functions and the projection tables both
have; the others are about a SQLite file (its bytes, export, import, ``sql``)."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from backends import Backend, open_projected
from click.testing import Result

from hermes_ledger import projections
from hermes_ledger.ledger import EventLog, Ledger
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.events import (
    MemoryFlushed,
    MessageAppended,
    SessionEnded,
    SessionStarted,
    Source,
)
from hermes_ledger.ledger.export import export_to_stream
from hermes_ledger.ledger.restore import import_jsonl
from hermes_ledger.ledger.schema import load_migrations

MARK = "Qzxmarkerword"  # in a message, a tool argument, a user name, a chat name
OTHER = "Keepthisword"
DM = "agent:main:telegram:dm:1"
GROUP = "agent:main:telegram:group:9"


def fill(target: Path | str) -> None:
    """u1's DM (every personal field carries MARK), a group where u1 and u2 talk,
    and u2's own DM (kept), in the ledger at ``target`` (a file or a URI)."""
    with open_projected(str(target)) as led:
        led.append(DM, [SessionStarted(session_id="s1", source=Source(
            platform="telegram", user_id="u1", user_name=f"{MARK} Name",
            chat_name=f"{MARK} Chat"))])  # fmt: skip
        led.append(
            DM,
            [
                MessageAppended(
                    session_id="s1",
                    role="user",
                    user_id="u1",
                    user_name=f"{MARK} Name",
                    content=f"hello {MARK}",
                )
            ],
        )
        led.append(
            DM,
            [
                MessageAppended(
                    session_id="s1",
                    role="assistant",
                    content="calling",
                    tool_calls=[{"name": "search", "args": {"q": MARK}}],
                )
            ],
        )
        led.append(
            DM,
            [
                MessageAppended(
                    session_id="s1", role="tool", tool_name="search", content=f"result {MARK}"
                )
            ],
        )
        led.append(DM, [MemoryFlushed(session_id="s1", provider="mem", detail=f"sum {MARK}")])
        led.append(DM, [SessionEnded(session_id="s1", reason="idle_expiry")])
        led.append(GROUP, [SessionStarted(session_id="g1", source=Source(
            platform="telegram", chat_type="group", user_id="u2", user_name="Bob",
            chat_name="Team"))])  # fmt: skip
        led.append(
            GROUP,
            [MessageAppended(session_id="g1", role="user", user_id="u1", content=f"group {MARK}")],
        )
        led.append(
            GROUP,
            [MessageAppended(session_id="g1", role="user", user_id="u2", content=f"group {OTHER}")],
        )
        led.append("agent:main:telegram:dm:2", [SessionStarted(session_id="s2", source=Source(
            platform="telegram", user_id="u2", user_name="Bob"))])  # fmt: skip
        led.append("agent:main:telegram:dm:2", [MessageAppended(
            session_id="s2", role="user", user_id="u2", content=f"mine {OTHER}")])  # fmt: skip


def raw_bytes(path: Path, suffixes: tuple[str, ...] = ("", "-wal", "-shm")) -> bytes:
    """The database file, its WAL and its shared memory, as they are on disk."""
    return b"".join(
        Path(f"{path}{suffix}").read_bytes()
        for suffix in suffixes
        if Path(f"{path}{suffix}").exists()
    )


def contents(backend: Backend) -> list[Any]:
    """Every row of ``events`` and ``payloads``, in order."""
    return backend.raw("SELECT * FROM events ORDER BY position") + backend.raw(
        "SELECT * FROM payloads ORDER BY position"
    )


def read(log: EventLog, sql: str) -> list[Any]:
    """The rows of ``sql`` over the log's own connection (apsw or psycopg)."""
    return [tuple(row) for row in log.connection.execute(sql)]  # type: ignore[attr-defined]


def erase_u1(cli: Callable[..., Result], target: str) -> None:
    result = cli("erase", "--db", target, "--user", "u1", "--yes",
                 "--requested-by", "dpo@example.org")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Recorded subject_erased at position 12" in result.output


@pytest.fixture
def erased(db_path: Path, cli: Callable[..., Result]) -> Path:
    """A SQLite file, filled, then u1 erased by the command line."""
    fill(db_path)
    assert MARK.encode() in raw_bytes(db_path)
    erase_u1(cli, str(db_path))
    return db_path


@pytest.fixture
def erased_log(backend: Backend, cli: Callable[..., Result]) -> Backend:
    """``erased`` on either backend."""
    fill(backend.target)
    if backend.name == "sqlite":
        assert MARK.encode() in raw_bytes(Path(backend.target))
    erase_u1(cli, backend.target)
    return backend


def test_the_erased_text_is_in_no_byte_of_the_files(erased: Path) -> None:
    data = raw_bytes(erased)
    assert MARK.encode() not in data
    assert MARK.lower().encode() not in data  # nor as a full-text token
    assert OTHER.encode() in data  # u2's own content stays


def test_every_read_surface_shows_erased(erased: Path, cli: Callable[..., Result]) -> None:
    db = ["--db", str(erased)]
    outputs = [
        cli("transcript", *db, "s1").output,
        cli("transcript", *db, "g1").output,
        cli("sessions", *db, "--json").output,
        cli("history", *db, DM, "--json").output,
        cli("events", *db, "--json").output,
        cli("search", *db, MARK).output,
        cli("sql", *db, "SELECT * FROM messages").output,
        cli("sql", *db, f"SELECT * FROM messages_fts WHERE messages_fts MATCH '{MARK}'").output,
        cli("sql", *db, "SELECT * FROM event_bodies").output,
        cli("sql", *db, "SELECT * FROM flush_outcomes").output,
        cli("export", *db).output,
        cli("export", *db, "--format", "csv").output,
    ]
    for text in outputs:
        assert MARK not in text
    assert "[erased]" in outputs[0] and "[erased]" in outputs[4]
    assert OTHER in outputs[1]  # u2's message in the group is kept
    target = erased.parent / "out.db"
    assert cli("export", *db, "-o", str(target)).exit_code == 0
    with sqlite3.connect(target) as out:
        rows = out.execute("SELECT content FROM messages ORDER BY position").fetchall()
        dump = "\n".join(out.iterdump())
    assert MARK not in dump
    assert ("[erased]",) in rows and (f"group {OTHER}",) in rows


def test_the_read_surfaces_of_either_backend_show_erased(
    erased_log: Backend, cli: Callable[..., Result]
) -> None:
    """The commands that read a ledger on either backend (``sql`` and ``export``
    are SQLite's: the test above)."""
    db = ["--db", erased_log.target]
    outputs = [
        cli("transcript", *db, "s1"),
        cli("transcript", *db, "g1"),
        cli("sessions", *db, "--json"),
        cli("history", *db, DM, "--json"),
        cli("events", *db, "--json"),
        cli("search", *db, MARK),
    ]
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert MARK not in result.output
    assert "[erased]" in outputs[0].output and "[erased]" in outputs[4].output
    assert OTHER in outputs[1].output  # u2's message in the group is kept
    with erased_log.open() as led:
        state = erased_log.projections.live_state(led)
    assert MARK not in json.dumps([state.session_map, state.session_history,
                                   state.transcripts], default=str)  # fmt: skip
    tables = ["events", "payloads", "messages", "session_map", "session_history"]
    held = [row for table in tables for row in erased_log.raw(f"SELECT * FROM {table}")]
    seen = repr(held).lower()  # the search vector holds words folded
    assert MARK.lower() not in seen and OTHER.lower() in seen  # no row holds it


def test_the_erasure_is_an_event_and_the_chain_verifies(erased_log: Backend) -> None:
    with erased_log.open() as led:
        assert led.verify().ok
        last = list(led.read_all())[-1]
        assert last.type == "subject_erased" and last.stream == "_erasures"
        assert last.data["scope"] == "user" and last.data["value"] == "u1"
        assert last.data["requested_by"] == "dpo@example.org"
        assert MARK not in last.data_json
        events = {r.position: r.event for r in led.read_all()}
    assert events[2].content == "[erased]"  # type: ignore[attr-defined]
    assert events[3].tool_calls == []  # type: ignore[attr-defined]
    assert events[1].source.chat_name == "[erased]"  # type: ignore[attr-defined]
    assert events[9].content == f"group {OTHER}"  # type: ignore[attr-defined]


def test_state_at_a_moment_before_the_erasure_shows_erased(erased_log: Backend) -> None:
    with erased_log.open() as led:
        before = erased_log.projections.state_at(led, position=11)
    assert [m["content"] for m in before.transcripts["s1"]] == ["[erased]"] * 3
    assert before.session_map[DM]["chat_name"] == "[erased]"
    assert MARK not in json.dumps([before.session_map, before.session_history,
                                   before.transcripts], default=str)  # fmt: skip


def test_live_projections_equal_a_rebuild_after_erasure(erased_log: Backend) -> None:
    p = erased_log.projections
    with erased_log.open(projections=True) as led:
        assert p.verify(led).ok
        p.rebuild(led)
        assert p.verify(led).ok
        assert MARK not in json.dumps(read(led, "SELECT * FROM messages"), default=str)


def on_disk(backend: Backend) -> bytes:
    """The SQLite file and its WAL as they are on disk (nothing on PostgreSQL)."""
    return raw_bytes(Path(backend.target), ("", "-wal")) if backend.name == "sqlite" else b""


def test_a_dry_run_changes_nothing(backend: Backend, cli: Callable[..., Result]) -> None:
    fill(backend.target)
    before = contents(backend), on_disk(backend)
    result = cli("erase", "--db", backend.target, "--user", "u1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["dry_run"] is True and report["position"] is None
    assert report["events"] == 7 and report["messages"] == 4
    assert report["sessions"] == ["g1", "s1"]
    assert (contents(backend), on_disk(backend)) == before


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--user", "u1", "--session-id", "s1"),
        ("--user", ""),
        ("--user", "u", "--requested-by", " "),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(
    backend: Backend, cli: Callable[..., Result], args: tuple[str, ...]
) -> None:
    fill(backend.target)
    before = contents(backend)
    result = cli("erase", "--db", backend.target, *args, "--yes")
    assert result.exit_code == 2
    assert "Error:" in result.output and "Traceback" not in result.output
    assert contents(backend) == before


def test_a_payload_deleted_without_an_erasure_fails_verify(backend: Backend) -> None:
    fill(backend.target)
    backend.raw("DELETE FROM payloads WHERE position = 9")
    with backend.open() as led:
        report = led.verify()
    assert not report.ok and report.first_bad_position == 9
    assert "no recorded erasure covers it" in str(report)


EDIT_PAYLOAD = {
    "sqlite": [
        "DROP TRIGGER payloads_refuse_update",
        "UPDATE payloads SET body = json_set(body, '$.content', 'forged') WHERE position = 9",
    ],
    "postgresql": [
        "ALTER TABLE payloads DISABLE TRIGGER payloads_refuse_update",
        "UPDATE payloads SET body = jsonb_set(body::jsonb, '{content}', '\"forged\"')::text"
        " WHERE position = 9",
    ],
}
"""A superuser's edit of a payload, past the trigger that refuses it."""


def test_an_edited_payload_fails_verify(backend: Backend) -> None:
    fill(backend.target)
    for statement in EDIT_PAYLOAD[backend.name]:
        backend.raw(statement)
    with backend.open() as led:
        report = led.verify()
    assert not report.ok and report.first_bad_position == 9


def test_session_key_and_session_id_scopes(backend: Backend) -> None:
    fill(backend.target)
    p = backend.projections
    with backend.open(projections=True) as led:
        one = led.erase(ErasureScope("session_id", "g1"), requested_by="t", dry_run=False)
        assert (one.events, one.messages, one.sessions) == (3, 2, ("g1",))
        key = led.erase(ErasureScope("session_key", DM), requested_by="t", dry_run=False)
        assert key.sessions == ("s1",) and key.payloads == 5
        backend.clock.advance(seconds=1)  # an erasure's id is its scope and its time
        again = led.erase(ErasureScope("session_key", DM), requested_by="t", dry_run=False)
        assert again.payloads == 0  # a re-run is harmless, and cleans up again:
        assert again.checkpointed if backend.name == "sqlite" else again.vacuumed
        assert led.verify().ok and p.verify(led).ok
        kept = read(led, "SELECT content FROM messages WHERE content <> '[erased]'")
    assert kept == [(f"mine {OTHER}",)]
    if backend.name == "sqlite":
        assert MARK.encode() not in raw_bytes(Path(backend.target))


def test_retention_scope_erases_what_happened_before(backend: Backend) -> None:
    fill(backend.target)
    with backend.open(projections=True) as led:
        long_ago = datetime(2000, 1, 1, tzinfo=UTC)
        nothing = led.erase(ErasureScope("retention", before=long_ago), requested_by="retention")
        assert (nothing.events, nothing.sessions) == (0, ())
        soon = datetime(2999, 1, 1, tzinfo=UTC)
        report = led.erase(ErasureScope("retention", before=soon, platform="telegram"),
                           requested_by="retention", dry_run=False)  # fmt: skip
        assert report.sessions == ("g1", "s1", "s2")  # open sessions too: content N days
        assert led.verify().ok


def jsonl_bytes(path: Path) -> bytes:
    out = io.BytesIO()
    with Ledger.open(path, readonly=True) as led:
        export_to_stream(led, out)
    return out.getvalue()


def test_an_export_made_after_erasure_imports_and_verifies(erased: Path, tmp_path: Path) -> None:
    source = tmp_path / "after.jsonl"
    source.write_bytes(jsonl_bytes(erased))
    assert MARK.encode() not in source.read_bytes()
    target = tmp_path / "restored.db"
    import_jsonl(target, source)
    with Ledger.open(target) as led:
        assert led.verify().ok
    assert MARK.encode() not in raw_bytes(target)


def test_importing_an_older_export_re_applies_the_erasure(
    db_path: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    fill(db_path)
    older = tmp_path / "before.jsonl"
    older.write_bytes(jsonl_bytes(db_path))
    assert MARK.encode() in older.read_bytes()
    assert cli("erase", "--db", str(db_path), "--user", "u1", "--yes").exit_code == 0
    target = tmp_path / "restored.db"
    import_jsonl(target, older, erasures_from=db_path)
    assert MARK.encode() not in raw_bytes(target)
    with projections.open_ledger(target) as led:
        assert led.verify().ok
        last = list(led.read_all())[-1]
        assert last.type == "subject_erased" and "re-applied from" in last.data["requested_by"]
        contents = [c for (c,) in led.query("SELECT content FROM messages ORDER BY position")]
    assert contents.count("[erased]") == 4 and f"group {OTHER}" in contents


def test_csv_export_data_is_the_whole_body(db_path: Path, tmp_path: Path) -> None:
    fill(db_path)
    out = io.BytesIO()
    with Ledger.open(db_path, readonly=True) as led:
        export_to_stream(led, out, format="csv")
    rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert json.loads(rows[1]["data"])["content"] == f"hello {MARK}"


def test_an_export_with_awkward_content_imports_byte_for_byte(
    db_path: Path, tmp_path: Path
) -> None:
    with Ledger.open(db_path) as led:
        source = Source(platform="telegram", user_id="u9", user_name="Zoë \u2028",
                        chat_name="\x1f tab\t")  # fmt: skip
        led.append(DM, [SessionStarted(session_id="x", source=source)])
        led.append(DM, [MessageAppended(
            session_id="x", role="assistant", content="naïve \"quoted\" \\ \n 🎉",
            tool_calls=[{"name": "f", "args": {"x": 1e-07, "big": 2**70, "l": [1.5, None]}}],
        )])  # fmt: skip
        led.append(DM, [MessageAppended(session_id="x", role="user", user_name="Zoë",
                                        content="\x00 nul, \u2028 and \"ü\" 🎉 \\")])  # fmt: skip
        stored = led.query("SELECT * FROM events") + led.query("SELECT * FROM payloads")
    source = tmp_path / "x.jsonl"
    source.write_bytes(jsonl_bytes(db_path))
    target = tmp_path / "x.db"
    import_jsonl(target, source)
    with Ledger.open(target) as led:
        assert led.verify().ok
        assert led.query("SELECT * FROM events") + led.query("SELECT * FROM payloads") == stored


def test_content_recorded_before_schema_v4_is_reported_as_held_in_the_log(
    db_path: Path,
) -> None:
    with Ledger.open(db_path, migrations=load_migrations()[:3]) as led:
        led.append(DM, [SessionStarted(session_id="old", source=Source(
            platform="telegram", user_id="u1", user_name="Old Name"))])  # fmt: skip
        led.append(DM, [MessageAppended(session_id="old", role="user", content="old text")])
    with Ledger.open(db_path) as led:
        report = led.erase(ErasureScope("user", "u1"), requested_by="t", dry_run=False)
        assert report.held_in_log == 2 and report.payloads == 0
        assert "cannot be erased" in report.warnings[0]
        assert led.verify().ok


def test_import_erasures_from_on_the_command_line(
    db_path: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    fill(db_path)
    older = tmp_path / "before.jsonl"
    older.write_bytes(jsonl_bytes(db_path))
    assert cli("erase", "--db", str(db_path), "--session-id", "s1", "--yes").exit_code == 0
    missing = cli("import", "--db", str(tmp_path / "a.db"), str(older),
                  "--erasures-from", str(tmp_path / "nope.db"))  # fmt: skip
    assert missing.exit_code == 1 and "Error:" in missing.output
    assert not (tmp_path / "a.db").exists()
    done = cli("import", "--db", str(tmp_path / "b.db"), str(older),
               "--erasures-from", str(db_path))  # fmt: skip
    assert done.exit_code == 0, done.output
    transcript = cli("transcript", "--db", str(tmp_path / "b.db"), "s1").output
    assert MARK not in transcript and "[erased]" in transcript


def test_the_erasure_queries_of_docs_sql_md(erased: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "sql.md").read_text("utf-8")
    found = dict(re.findall(r"```sql\n-- erasure: (\w+)\n(.*?)```", doc, re.S))
    assert set(found) == {"message_text", "erased_events", "erasures"}
    with Ledger.open(erased, readonly=True) as led:
        texts = led.query(found["message_text"])
        assert [t[3] for t in texts if t[1] == "g1"] == ["[erased]", f"group {OTHER}"]
        assert led.query(found["erased_events"]) == [(6, 2)]  # the end has no payload
        [(position, _at, scope, value, by, through)] = led.query(found["erasures"])
    assert (position, scope, value, by, through) == (12, "user", "u1", "dpo@example.org", 11)
