"""The command line on a PostgreSQL ledger (issue 14): ``--db postgresql://…`` and
``HERMES_LEDGER_DB`` for status, verify, events, export, erase, replay, search,
sessions, history, transcript, import and init, and a clear refusal (exit 1,
nothing written) from every other command.

Real invocations (click's CliRunner, and the installed script once) against a fresh
database on the test server (tests/pg_support.py; skipped, saying why, when it
cannot be reached and ``HERMES_LEDGER_REQUIRE_PG`` is not 1). The PostgreSQL ledger
is made by ``hermes-ledger migrate`` from a SQLite one, so the two hold the same
rows: ``events`` and ``export`` print the same text on both.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import Result
from helpers import ManualClock, installed_script
from pg_support import fresh_database

from hermes_ledger.gateway.cli import cli as root
from hermes_ledger.gateway.cli.options import postgres_commands
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, SessionEnded, SessionStarted, Source

Cli = Callable[..., Result]

KEY = "agent:main:telegram:dm:99"
OTHER = "agent:main:discord:group:42:7"
READY = [
    "anchor", "backfill", "demo", "doctor", "erase", "events", "export", "history", "hooks",
    "hooks retry", "import", "init", "prune", "replay", "report", "run", "schema", "search",
    "serve", "sessions", "sql", "status", "tick", "transcript", "vacuum", "verify",
]  # fmt: skip
SECRET = "s3cr3t-pw-7f"


def _fill(path: Path, clock: ManualClock) -> None:
    """Two keys, three sessions, nine events (one session ended)."""
    tg = Source(platform="telegram", chat_id="99", user_id="u1", user_name="Ann")
    dc = Source(platform="discord", chat_type="group", chat_id="42", user_id="7")
    with Ledger.open(path, clock=clock) as led:
        for stream, events in [
            (KEY, [SessionStarted(session_id="s1", source=tg)]),
            (KEY, [MessageAppended(session_id="s1", role="user", content="hello brave world",
                                   user_id="u1", user_name="Ann")]),
            (KEY, [MessageAppended(session_id="s1", role="assistant", content="hi Ann")]),
            (KEY, [SessionEnded(session_id="s1", reason="idle_expiry")]),
            (KEY, [SessionStarted(session_id="s2", source=tg, reason="auto_reset",
                                  previous_session_id="s1")]),
            (KEY, [MessageAppended(session_id="s2", role="user", content="brave again",
                                   user_id="u1")]),
            (OTHER, [SessionStarted(session_id="g1", source=dc)]),
            (OTHER, [MessageAppended(session_id="g1", role="user", content="salut le monde",
                                     user_id="7")]),
            (OTHER, [MessageAppended(session_id="g1", role="assistant", content="bonjour")]),
        ]:  # fmt: skip
            led.append(stream, events)
            clock.advance(seconds=1)


@pytest.fixture
def sqlite_db(tmp_path: Path, clock: ManualClock) -> Path:
    path = tmp_path / "ledger.db"
    _fill(path, clock)
    return path


@pytest.fixture
def pg(sqlite_db: Path, cli: Cli) -> Iterator[str]:
    """A fresh database holding ``sqlite_db``'s log (copied by ``migrate``)."""
    with fresh_database() as dsn:
        done = cli("migrate", "--to", dsn, "--from", str(sqlite_db))
        assert done.exit_code == 0, done.output
        yield _uri(dsn)


def _uri(dsn: str, password: str | None = None) -> str:
    """``dsn`` (libpq's key=value form) as a ``postgresql://`` URI, the form ``--db``
    takes, optionally with a password (the test server trusts local TCP, so it is
    not checked)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    login = info.get("user") or ("postgres" if password is not None else "")
    if password is not None:
        login += f":{password}"
    at = f"{login}@" if login else ""
    return f"postgresql://{at}{info.get('host', '')}:{info.get('port', 5432)}/{info['dbname']}"


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def test_status(pg: str, cli: Cli) -> None:
    out = _ok(cli("status", "--db", pg))
    where = pg.split("://", 1)[1]
    assert "backend:     PostgreSQL (schema v" in out
    assert "events:      9 (head position 9)" in out
    assert "streams:     2" in out
    assert "sessions:    (no projections)" in out
    assert where.split("/")[-1] in out
    doc = json.loads(_ok(cli("status", "--db", pg, "--json")))
    assert doc["backend"] == "postgresql"
    assert (doc["events"], doc["head"], doc["streams"], doc["sessions"]) == (9, 9, 2, None)


def test_events_same_as_sqlite(pg: str, sqlite_db: Path, cli: Cli) -> None:
    for args in (
        [],
        ["--type", "session_started"],
        ["--session-key", OTHER],
        ["--session-id", "s2", "--json"],
        ["--tail", "2"],
        ["--since", "2026-11-22T09:00:03Z", "--until", "2026-11-22T09:00:06Z"],
        ["--from", "3", "--to", "4", "--json"],
    ):
        on_pg = _ok(cli("events", "--db", pg, *args))
        assert on_pg == _ok(cli("events", "--db", str(sqlite_db), *args)), args
    lines = _ok(cli("events", "--db", pg, "--type", "session_started")).splitlines()
    assert [line.split()[0] for line in lines] == ["1", "5", "7"]
    assert lines[0].split()[2:] == ["session_started", KEY, "v1", "s1"]
    limited = cli("events", "--db", pg, "--limit", "2")
    assert limited.exit_code == 0
    assert [line.split()[0] for line in limited.stdout.splitlines()] == ["1", "2"]
    assert "7 more events not shown" in limited.stderr


def test_export_same_as_sqlite_and_imports(
    pg: str, sqlite_db: Path, cli: Cli, tmp_path: Path
) -> None:
    def lines(db: str, *args: str) -> list[dict[str, object]]:
        docs = [json.loads(line) for line in _ok(cli("export", "--db", db, *args)).splitlines()]
        docs[-1]["manifest"].pop("exported_at")  # type: ignore[union-attr]
        return docs

    assert lines(pg) == lines(str(sqlite_db))
    assert lines(pg, "--session-key", KEY) == lines(str(sqlite_db), "--session-key", KEY)
    text = _ok(cli("export", "--db", pg))
    assert text.splitlines()[:-1] == _ok(cli("export", "--db", str(sqlite_db))).splitlines()[:-1]
    out = tmp_path / "pg.jsonl"
    assert _ok(cli("export", "--db", pg, "-o", str(out))) == (
        f"Exported 9 events (positions 1-9) to {out}\n"
    )
    assert out.read_text() == text or out.read_text().splitlines()[:-1] == text.splitlines()[:-1]
    restored = tmp_path / "restored.db"
    _ok(cli("import", str(out), "--db", str(restored)))
    assert "ok" in _ok(cli("verify", "--db", str(restored)))
    assert _ok(cli("events", "--db", str(restored))) == _ok(cli("events", "--db", pg))
    csv_args = ("export", "--format", "csv", "--db")
    assert _ok(cli(*csv_args, pg)) == _ok(cli(*csv_args, str(sqlite_db)))


def test_replay_verify_search(pg: str, sqlite_db: Path, cli: Cli) -> None:
    out = _ok(cli("verify", "--db", pg))
    assert out.splitlines()[:2] == [
        "hash chain: ok: 9 events, hash chain intact up to position 9",
        "projections: not attached (none in this database; `replay` creates them)",
    ]
    assert out.splitlines()[2].startswith("anchors: none for this ledger in ")
    none = cli("search", "brave", "--db", pg)
    assert none.exit_code == 1
    assert "has no projections to search" in none.output and "Try: " in none.output
    doc = json.loads(_ok(cli("replay", "--db", pg, "--json")))
    assert doc == {"events": 9, "position": 9}
    assert _ok(cli("replay", "--db", pg)).startswith(
        "rebuilt sessions, transcripts from 9 events up to position 9 in "
    )
    out = _ok(cli("verify", "--db", pg))
    assert out.splitlines()[0] == "hash chain: ok: 9 events, hash chain intact up to position 9"
    assert out.splitlines()[1].startswith("projections: ok: live projections equal a replay")
    assert json.loads(_ok(cli("verify", "--db", pg, "--json")))["ok"] is True
    assert "sessions:    2" in _ok(cli("status", "--db", pg))
    hits = json.loads(_ok(cli("search", "brave", "--db", pg, "--json")))
    assert [(h["session_id"], h["position"]) for h in hits] == [("s2", 6), ("s1", 2)]
    lines = _ok(cli("search", "brave", "--db", pg, "--session-key", KEY, "--limit", "1"))
    assert lines.split("  ", 1)[1] == f"{KEY}  s2  user      [brave] again\n"
    state = _ok(cli("replay", "--db", pg, "--to", "4", "--json"))
    assert [r["status"] for r in json.loads(state)["session_map"]] == ["closed"]
    at = _ok(cli("replay", "--db", pg, "--at", "2026-11-22T09:00:03Z", "--json"))
    assert at == _ok(cli("replay", "--db", str(sqlite_db), "--at", "2026-11-22T09:00:03Z",
                         "--json"))  # fmt: skip


def test_erase(pg: str, cli: Cli) -> None:
    _ok(cli("replay", "--db", pg))
    dry = json.loads(_ok(cli("erase", "--db", pg, "--session-id", "s1", "--json")))
    assert dry["dry_run"] is True and dry["events"] == 4 and dry["messages"] == 2
    assert len(_ok(cli("events", "--db", pg)).splitlines()) == 9  # nothing appended
    done = json.loads(
        _ok(cli("erase", "--db", pg, "--session-id", "s1", "--yes", "--requested-by", "dpo",
                "--json"))
    )  # fmt: skip
    assert done["dry_run"] is False and done["position"] == 10
    rows = [json.loads(line) for line in _ok(cli("events", "--db", pg, "--json")).splitlines()]
    assert rows[1]["data"]["content"] == "[erased]" and rows[-1]["type"] == "subject_erased"
    assert json.loads(_ok(cli("verify", "--db", pg, "--json")))["ok"] is True
    assert json.loads(_ok(cli("search", "hello", "--db", pg, "--json"))) == []


def test_sessions_history_transcript_same_as_sqlite(pg: str, sqlite_db: Path, cli: Cli) -> None:
    none = cli("sessions", "--db", pg)
    assert none.exit_code == 1
    assert "has no projections" in none.output and "Try: create them with" in none.output
    _ok(cli("replay", "--db", pg))
    for args in (
        ["sessions"],
        ["sessions", "--json"],
        ["sessions", "--all"],
        ["sessions", "--all", "--json"],
        ["sessions", "--status", "closed", "--status", "open"],
        ["sessions", "--platform", "discord", "--json"],
        ["sessions", "--chat-type", "group"],
        ["sessions", "--user", "ANN", "--all"],
        ["sessions", "--user", "7", "--json"],
        ["sessions", "--end-reason", "idle_expiry"],
        ["sessions", "--since", "2026-11-22T09:00:06Z", "--all"],
        ["sessions", "--until", "2026-11-22T09:00:06Z", "--all"],
        ["sessions", "--limit", "1", "--all"],
        ["sessions", "--platform", "slack"],
        ["sessions", "--tz", "Europe/Paris"],
        ["sessions", "--key", "agent:main:*:dm:*", "--all", "--json"],
        ["history", KEY],
        ["history", KEY, "--json"],
        ["history", OTHER, "--tz", "Asia/Tokyo"],
        ["transcript", "s1"],
        ["transcript", "s1", "--json"],
        ["transcript", "g1"],
        ["transcript", "s2", "--json"],
    ):
        on_pg = _ok(cli(*args, "--db", pg))
        assert on_pg == _ok(cli(*args, "--db", str(sqlite_db))), args
    listed = _ok(cli("sessions", "--db", pg, "--all")).splitlines()
    assert [line.split()[:3] for line in listed[2:4]] == [
        [OTHER, "g1", "open"], [KEY, "s2", "open"],
    ]  # fmt: skip
    said = [
        line.split(None, 1)[1] for line in _ok(cli("transcript", "s1", "--db", pg)).splitlines()
    ]
    assert said == ["user      hello brave world", "assistant hi Ann"]
    assert len(json.loads(_ok(cli("history", KEY, "--db", pg, "--json")))) == 2
    for args, message in (
        (["history", "agent:nope"], "Error: no sessions with key 'agent:nope'"),
        (["transcript", "nope"], "Error: no session with id 'nope'"),
    ):
        refused = cli(*args, "--db", pg)
        assert refused.exit_code == 1, refused.output
        assert refused.output.startswith(message) and "Try: " in refused.output


@pytest.mark.parametrize("erased", [False, True], ids=["plain", "after-an-erasure"])
def test_export_import_round_trip(erased: bool, sqlite_db: Path, cli: Cli, tmp_path: Path) -> None:
    """SQLite -> JSONL -> PostgreSQL -> JSONL -> SQLite: the same file each time."""
    if erased:
        _ok(cli("erase", "--db", str(sqlite_db), "--session-id", "s1", "--yes",
                "--requested-by", "dpo"))  # fmt: skip
    first, second, third = (tmp_path / f"{n}.jsonl" for n in ("first", "second", "third"))
    _ok(cli("export", "--db", str(sqlite_db), "-o", str(first)))
    with fresh_database() as dsn:
        uri = _uri(dsn)
        done = _ok(cli("import", str(first), "--db", uri))
        count = 10 if erased else 9
        assert done.startswith(f"Imported {count} events into ") and uri.rsplit("/")[-1] in done
        assert "hash chain verified up to position" in done
        assert json.loads(_ok(cli("verify", "--db", uri, "--json")))["ok"] is True
        _ok(cli("export", "--db", uri, "-o", str(second)))
        again = cli("import", str(first), "--db", uri)
        assert again.exit_code == 1
        assert "already has events; an export is restored only into an empty ledger" in (
            again.output
        )
        assert "Try: import into a new, empty database" in again.output
        assert _ok(cli("events", "--db", uri)) == _ok(cli("events", "--db", str(sqlite_db)))
    back = tmp_path / "back.db"
    _ok(cli("import", str(second), "--db", str(back)))
    _ok(cli("export", "--db", str(back), "-o", str(third)))

    def body(path: Path) -> list[str]:
        lines = path.read_text().splitlines()
        manifest = json.loads(lines[-1])
        manifest["manifest"].pop("exported_at")
        return [*lines[:-1], json.dumps(manifest)]

    assert body(first) == body(second) == body(third)
    assert len(body(first)) == (11 if erased else 10)


def test_import_refuses_bad_input_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "src.db"
    _fill(source, ManualClock())
    good = tmp_path / "good.jsonl"
    _ok(cli("export", "--db", str(source), "-o", str(good)))
    lines = good.read_text().splitlines(keepends=True)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(lines[:4]) + lines[4].replace('"v', '"w', 1) + "".join(lines[5:]))
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("".join(lines[:-1]))
    with fresh_database() as dsn:
        uri = _uri(dsn)
        for path, message in (
            (edited, "Error: line 5: "),
            (truncated, "Error: the input ends after line 9 without the export's manifest"),
            (tmp_path / "missing.jsonl", "Error: there is no file "),
        ):
            refused = cli("import", str(path), "--db", uri)
            assert refused.exit_code == 1, refused.output
            assert refused.output.startswith(message), refused.output
            assert "Traceback" not in refused.output
            assert json.loads(_ok(cli("status", "--db", uri, "--json")))["events"] == 0
        # import --from-hermes / --erasures-from on a URI: tests/test_plugin_postgres.py
        restored = json.loads(_ok(cli("import", str(good), "--db", uri, "--json")))
        assert (restored["count"], restored["last_position"]) == (9, 9)
        assert SECRET not in restored["ledger"] and "@" not in restored["ledger"].split(" as ")[0]


def test_init(cli: Cli) -> None:
    with fresh_database() as dsn:
        uri = _uri(dsn)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT to_regclass('hermes_ledger.events')").fetchone() == (None,)
        created = _ok(cli("init", "--db", uri))
        doc = json.loads(_ok(cli("status", "--db", uri, "--json")))
        where, version = doc["where"], doc["schema_version"]
        assert created == f"Created ledger {where} (PostgreSQL, schema v{version})\n"
        assert _ok(cli("init", "--db", uri)) == (
            f"Ledger {where} already exists (PostgreSQL, schema v{version}, 0 events)\n"
        )
        doc = json.loads(_ok(cli("init", "--db", uri, "--json")))
        assert (doc["created"], doc["applied_migrations"], doc["events"]) == (False, 0, 0)
        assert doc["backend"] == "postgresql" and doc["schema_version"] == version
        with psycopg.connect(dsn) as conn:
            found = conn.execute("SELECT to_regclass('hermes_ledger.events')").fetchone()
            assert found is not None and found[0] is not None
    with fresh_database() as dsn:
        doc = json.loads(_ok(cli("init", "--db", _uri(dsn), "--json")))
        assert doc["created"] is True and doc["applied_migrations"] == version


def test_migrate_from_refuses_a_uri(cli: Cli) -> None:
    result = cli("migrate", "--to", "postgresql://127.0.0.1:1/x", "--from", "postgres://h/y")
    assert result.exit_code == 1
    assert result.output.startswith("Error: migrate does not work on a PostgreSQL ledger yet\n")


def test_ready_commands() -> None:
    assert postgres_commands(root) == READY


def test_env_var_and_password_never_shown(
    pg: str, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_password = _uri(pg, SECRET)
    assert SECRET in with_password
    monkeypatch.setenv("HERMES_LEDGER_DB", with_password)
    outputs = [
        _ok(cli("status")),
        _ok(cli("status", "--json")),
        _ok(cli("verify")),
        _ok(cli("events", "--tail", "1")),
        cli("sessions").output,
        cli("history", KEY).output,
        cli("search", "x").output,
        cli("export", "--format", "csv").output,
    ]
    assert "events:      9 (head position 9)" in outputs[0]
    bad = f"postgresql://postgres:{SECRET}@127.0.0.1:1/nowhere"
    outputs.append(cli("status", "--db", bad).output)
    assert "Error: cannot connect to PostgreSQL at 127.0.0.1:1/nowhere as postgres" in outputs[-1]
    assert all(SECRET not in out for out in outputs), outputs


def test_installed_script(pg: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HERMES_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [installed_script(), "status", "--db", pg, "--json"], env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["events"] == 9
    refused = subprocess.run(  # not a demo ledger: refused before anything is written
        [installed_script(), "demo", "--db", pg], env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and refused.stdout == ""
    assert " is not a demo ledger: the demo replaces its ledger on each run\n" in refused.stderr
    assert not (tmp_path / "home").exists()


# -- anchors (issue 14) -------------------------------------------------------------


def _tamper(pg: str, *statements: str) -> None:
    """Run ``statements`` as the test server's superuser with every trigger off
    (``session_replication_role = replica``): what an administrator could do."""
    with psycopg.connect(pg, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("SET LOCAL search_path = hermes_ledger")
        for statement in statements:
            conn.execute(statement)


def _anchor(pg: str, cli: Cli) -> dict[str, object]:
    return json.loads(_ok(cli("anchor", "--db", pg, "--json")))


def test_anchor_then_verify(pg: str, cli: Cli, hermes_home: Path) -> None:
    """The anchor names the database without user or password; verify checks it
    whoever connects; the key and the witness are owner-only."""
    secret = _uri(pg, SECRET)
    out = _ok(cli("anchor", "--db", secret))
    info = psycopg.conninfo.conninfo_to_dict(pg)
    identity = f"postgresql://{info.get('host') or 'localhost'}:{info.get('port') or 5432}/"
    identity += str(info["dbname"])
    assert out.startswith(f"Anchored position 9 of {identity} at ")
    assert SECRET not in out
    witness, key = hermes_home / "ledger.anchors", hermes_home / "ledger.key"
    text = witness.read_text()
    assert SECRET not in text and "@" not in text
    [line] = [json.loads(raw) for raw in text.splitlines()]
    assert (line["ledger"], line["position"]) == (identity, 9)
    for path in (witness, key):
        assert path.stat().st_mode & 0o777 == 0o600, path
    out = _ok(cli("verify", "--db", pg))
    assert "anchors: ok: 1 anchor holds, the last at position 9" in out
    doc = json.loads(_ok(cli("verify", "--db", secret, "--json")))
    assert doc["anchors"]["ok"] is True and doc["anchors"]["ledger"] == identity
    assert doc["anchors"]["last_anchor"]["position"] == 9
    again = _anchor(pg, cli)  # the chain is checked from the last anchor: no new rows
    assert again["position"] == 9 and len(witness.read_text().splitlines()) == 2


def test_verify_without_an_anchor_says_so(pg: str, cli: Cli) -> None:
    out = _ok(cli("verify", "--db", pg))
    assert "anchors: none for this ledger in " in out


def test_truncated_log_is_found_by_the_anchor(pg: str, cli: Cli) -> None:
    _anchor(pg, cli)
    _tamper(pg, "DELETE FROM payloads WHERE position > 5", "DELETE FROM events WHERE position > 5")
    result = cli("verify", "--db", pg)
    assert result.exit_code == 1, result.output
    assert "hash chain: ok" in result.output  # the chain alone cannot tell
    assert (
        "anchors: FAILED: truncated: the log ends at position 5, but position 9 was anchored"
        in result.output
    )
    assert "Error: the ledger does not verify (anchors)" in result.output
    assert "Traceback" not in result.output
    doc = json.loads(cli("verify", "--db", pg, "--json").output)
    assert doc["chain_ok"] is True and doc["ok"] is False and doc["anchors"]["ok"] is False


def test_rewritten_log_is_found_by_the_anchor(pg: str, cli: Cli, hermes_home: Path) -> None:
    """Positions 3..9 replaced by other events whose hashes chain correctly."""
    _anchor(pg, cli)
    _tamper(
        pg, "DELETE FROM payloads WHERE position >= 3", "DELETE FROM events WHERE position >= 3"
    )
    tg = Source(platform="telegram", chat_id="5", user_id="u5")
    with Ledger.open(pg) as log:
        log.append("agent:main:telegram:dm:5", [SessionStarted(session_id="x1", source=tg)])
        for n in range(6):
            event = MessageAppended(session_id="x1", role="user", content=f"forged {n}")
            log.append("agent:main:telegram:dm:5", [event])
        assert log.head() == 9 and log.verify().ok
    result = cli("verify", "--db", pg)
    assert result.exit_code == 1, result.output
    assert "hash chain: ok" in result.output
    assert "anchors: FAILED: rewritten: position 9 no longer has the hash anchored" in result.output
    before = (hermes_home / "ledger.anchors").read_text()
    refused = cli("anchor", "--db", pg)
    assert refused.exit_code == 1, refused.output
    assert "holds another hash at position 9" in refused.output
    assert "Traceback" not in refused.output
    assert (hermes_home / "ledger.anchors").read_text() == before  # nothing blessed
