"""`hermes-ledger sql` and ledger.query.run_sql: read-only queries, refused writes."""

from __future__ import annotations

import _thread
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from backends import Backend, pg_uri
from click.testing import Result
from helpers import ManualClock, installed_script
from pg_support import fresh_database

from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source
from hermes_ledger.ledger.query import (
    DEFAULT_SQL_TIMEOUT,
    SQL_PRAGMA_LOOKUPS,
    SQL_PRAGMA_READS,
    QueryTimeoutError,
    run_sql,
)

K1 = "agent:main:telegram:dm:99"
K2 = "agent:main:discord:dm:7"


@pytest.fixture
def filled(led: Ledger, db_path: Path) -> Path:
    led.append(
        K1,
        [
            SessionStarted(event_id="e1", session_id="s1", source=Source(platform="telegram")),
            MessageAppended(event_id="e2", session_id="s1", role="user", content="hello"),
        ],
    )
    led.append(K2, [SessionStarted(event_id="e3", session_id="s2", source=Source(platform="x"))])
    return db_path


def fingerprint(path: Path) -> tuple[str, list[str]]:
    """The ledger's content (checkpointed) and the files next to it."""
    with Ledger.open(path) as led:
        led.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest, sorted(p.name for p in path.parent.iterdir())


def query(
    path: Path, sql: str, params: Any = (), **options: Any
) -> tuple[list[str], list[tuple[Any, ...]]]:
    with Ledger.open(path, readonly=True) as led:
        result = run_sql(led, sql, params, **options)
        return result.columns, list(result.rows)


# -- the library -------------------------------------------------------------------


def test_run_sql_returns_columns_and_rows(filled: Path) -> None:
    assert query(filled, "SELECT position, type FROM events WHERE stream = ?", (K1,)) == (
        ["position", "type"],
        [(1, "session_started"), (2, "message_appended")],
    )
    assert query(filled, "SELECT count(*) AS n FROM events WHERE stream = :k;", {"k": K2}) == (
        ["n"],
        [(1,)],
    )
    # event_bodies: the events with their personal fields (ledger.personal) merged in
    sql = "SELECT json_extract(data, '$.content') FROM event_bodies WHERE type = 'message_appended'"
    assert query(filled, sql)[1] == [("hello",)]
    assert query(filled, "PRAGMA table_info(events)")[1][0][:3] == (0, "position", "INTEGER")


WRITES = [
    "INSERT INTO events (position) VALUES (99)",
    "DELETE FROM events",
    "UPDATE events SET type = 'x'",
    "DROP TABLE events",
    "CREATE TABLE t (x)",
    "CREATE TEMP TABLE t (x)",
    "ALTER TABLE events ADD COLUMN x",
    "PRAGMA user_version = 7",
    "PRAGMA query_only = OFF",
    "REINDEX",
    "ANALYZE",
    "WITH x AS (SELECT 1) INSERT INTO events (position) SELECT * FROM x",
]


@pytest.mark.parametrize("sql", WRITES)
def test_writes_are_refused_and_change_nothing(filled: Path, sql: str) -> None:
    before = fingerprint(filled)
    with pytest.raises(LedgerError, match="read-only") as info:
        query(filled, sql)
    assert str(info.value).startswith("the ledger is open read-only for queries; refused: ")
    assert info.value.hint == (
        "query with SELECT (e.g. SELECT type, count(*) FROM events GROUP BY type); "
        "the log changes only by appending events"
    )
    assert fingerprint(filled) == before


@pytest.mark.parametrize(
    "sql",
    ["ATTACH '{dir}/other.db' AS other", "VACUUM INTO '{dir}/copy.db'"],
)
def test_no_other_file_is_attached_or_written(filled: Path, sql: str) -> None:
    before = fingerprint(filled)
    with pytest.raises(LedgerError, match="read-only"):
        query(filled, sql.format(dir=filled.parent))
    assert fingerprint(filled) == before  # in particular: no other.db, no copy.db


def test_one_statement_at_a_time(filled: Path) -> None:
    before = fingerprint(filled)
    with pytest.raises(LedgerError, match="more than one statement") as info:
        query(filled, "SELECT 1; DELETE FROM events")
    assert info.value.hint == "run one statement per `hermes-ledger sql` call"
    assert fingerprint(filled) == before


def test_broken_queries_say_what_is_wrong(filled: Path) -> None:
    with pytest.raises(LedgerError, match=r"the query failed: .*no such table: nowhere") as info:
        query(filled, "SELECT * FROM nowhere")
    # The hint names commands that work from an installed package (no docs/ file).
    assert info.value.hint == (
        'list the tables with `hermes-ledger sql "SELECT name FROM sqlite_schema WHERE type = '
        "'table'\"` and a table's columns with `hermes-ledger sql \"PRAGMA table_info(events)\"`"
    )
    with pytest.raises(LedgerError, match=r"the query failed: .*syntax error"):
        query(filled, "SELEC 1")
    with pytest.raises(LedgerError, match="the query is empty"):
        query(filled, "  ;  ")
    with pytest.raises(LedgerError, match="parameters do not match"):
        query(filled, "SELECT :a")


def test_a_full_text_index_can_be_searched(filled: Path) -> None:
    """Read models may add FTS5 tables to the ledger file; searching them is a read."""
    conn = apsw.Connection(str(filled))
    conn.execute("CREATE VIRTUAL TABLE notes USING fts5(body)")
    conn.execute("INSERT INTO notes (body) VALUES ('the quick brown fox'), ('lazy dogs')")
    conn.close()
    assert query(filled, "SELECT body FROM notes WHERE notes MATCH 'fox'") == (
        ["body"],
        [("the quick brown fox",)],
    )


# -- the command ---------------------------------------------------------------------


def test_cli_prints_an_aligned_table(filled: Path, cli: Callable[..., Result]) -> None:
    result = cli(
        "sql", "--db", str(filled),
        "SELECT position, type, session_id, NULL AS empty, 1.5 AS x FROM events",
    )  # fmt: skip
    assert (result.exit_code, result.output) == (
        0,
        "position  type              session_id  empty  x\n"
        "--------  ----------------  ----------  -----  ---\n"
        "       1  session_started   s1                 1.5\n"
        "       2  message_appended  s1                 1.5\n"
        "       3  session_started   s2                 1.5\n"
        "(3 rows)\n",
    )
    result = cli("sql", "--db", str(filled), "SELECT type FROM events WHERE 0")
    assert result.output == "type\n----\n(0 rows)\n"
    result = cli("sql", "--db", str(filled), "SELECT X'00ff' AS b, 'a\nb' AS t")
    assert result.output == "b        t\n-------  ----\nX'00FF'  a\\nb\n(1 row)\n"


def test_cli_prints_json_and_csv(filled: Path, cli: Callable[..., Result]) -> None:
    sql = "SELECT position, event_id, session_id FROM events WHERE stream = :k"
    result = cli("sql", "--db", str(filled), sql, "-p", "k", K1, "--json")
    assert (result.exit_code, result.output) == (
        0,
        "[\n"
        '  {"position": 1, "event_id": "e1", "session_id": "s1"},\n'
        '  {"position": 2, "event_id": "e2", "session_id": "s1"}\n'
        "]\n",
    )
    assert json.loads(result.output)[1]["event_id"] == "e2"
    result = cli("sql", "--db", str(filled), "SELECT 1 WHERE 0", "--json")
    assert result.output == "[]\n"
    result = cli("sql", "--db", str(filled), "SELECT X'01' AS b", "--json")
    assert json.loads(result.output) == [{"b": {"$base64": True, "encoded": "AQ=="}}]
    result = cli(
        "sql", "--db", str(filled), sql + " ORDER BY position DESC", "-p", "k", K1, "--csv"
    )
    assert (result.exit_code, result.output) == (
        0,
        "position,event_id,session_id\n2,e2,s1\n1,e1,s1\n",
    )


def test_cli_refuses_a_write_with_error_and_try(filled: Path, cli: Callable[..., Result]) -> None:
    before = fingerprint(filled)
    result = cli("sql", "--db", str(filled), "DELETE   FROM\n events")
    assert (result.exit_code, result.output) == (
        1,
        "Error: the ledger is open read-only for queries; refused: DELETE FROM events\n"
        "Try: query with SELECT (e.g. SELECT type, count(*) FROM events GROUP BY type); "
        "the log changes only by appending events\n",
    )
    assert fingerprint(filled) == before


def test_cli_usage_errors(filled: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("sql", "--db", str(filled), "SELECT 1", "--json", "--csv")
    assert result.exit_code == 2 and "choose one of --json and --csv" in result.output
    result = cli("sql", "--db", str(filled))
    assert result.exit_code == 2 and "Missing argument 'QUERY'" in result.output
    missing = tmp_path / "none.db"
    result = cli("sql", "--db", str(missing), "SELECT 1")
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {missing} does not exist\nTry: create it with `hermes-ledger init`\n",
    )
    assert not missing.exists()


def test_installed_script_refuses_writes(filled: Path, tmp_path: Path) -> None:
    before = fingerprint(filled)
    env = {**os.environ, "HERMES_LEDGER_DB": str(filled)}
    done = subprocess.run(
        [installed_script(), "sql", "DROP TABLE events"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("Error: the ledger is open read-only for queries; refused: DROP")
    assert "\nTry: " in done.stderr
    assert fingerprint(filled) == before
    done = subprocess.run(
        [installed_script(), "sql", "--csv", "SELECT count(*) AS n FROM events"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "n\n3\n"), done.stderr


# -- bounded: timeout, Ctrl-C, the WAL -------------------------------------------------

# Counts to a billion: minutes of work unless something stops it.
SLOW = (
    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000000000) "
    "SELECT count(*) FROM r"
)
TIMEOUT_HINT = (
    "narrow the query (a WHERE or a LIMIT), or give it more time with "
    "--timeout SECONDS (0: no limit)"
)


def test_a_query_past_its_timeout_stops_with_a_clear_error(filled: Path) -> None:
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError) as info:
        query(filled, SLOW, timeout=0.3)
    assert time.monotonic() - started < 3
    assert isinstance(info.value, LedgerError)
    assert str(info.value) == "the query ran longer than 0.3 s and was stopped"
    assert info.value.hint == TIMEOUT_HINT
    assert DEFAULT_SQL_TIMEOUT == 30.0
    assert query(filled, "SELECT count(*) FROM events", timeout=0)[1] == [(3,)]  # 0: no limit


def test_the_timeout_counts_the_time_between_rows(filled: Path) -> None:
    """A caller that holds the rows past the timeout gets the timeout at the next row."""
    with Ledger.open(filled, readonly=True) as led:
        rows = run_sql(led, "SELECT position FROM events ORDER BY position", timeout=0.2).rows
        assert next(rows) == (1,)
        time.sleep(0.3)
        with pytest.raises(QueryTimeoutError):
            list(rows)


def wal_checkpoint(led: Ledger) -> tuple[int, int, int]:
    """(busy, frames in the WAL, frames checkpointed) of a PASSIVE checkpoint."""
    return tuple(led.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0])


def test_a_long_read_pins_the_wal_until_its_timeout(led: Ledger, filled: Path) -> None:
    """While a query reads, checkpoints cannot pass its snapshot; the timeout ends
    the read, and the next checkpoint copies the whole WAL."""
    with Ledger.open(filled, readonly=True) as reader:
        rows = run_sql(reader, "SELECT position FROM events ORDER BY position", timeout=0.3).rows
        assert next(rows) == (1,)
        led.append(K2, [MessageAppended(event_id="e4", session_id="s2", role="user", content="x")])
        _busy, frames, done = wal_checkpoint(led)
        assert done < frames  # the reader's snapshot holds the new frames in the WAL
        time.sleep(0.4)
        with pytest.raises(QueryTimeoutError):
            list(rows)
        _busy, frames, done = wal_checkpoint(led)
        assert done == frames


def wait_until_querying(proc: subprocess.Popen[str], db: Path) -> None:
    """Until ``proc`` has the ledger open twice (the command's and the query's connection)."""
    fds = Path(f"/proc/{proc.pid}/fd")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            links = [os.readlink(fd) for fd in fds.iterdir()]
        except OSError:
            links = []
        if links.count(str(db)) >= 2:
            time.sleep(0.3)  # into SQLite's loop
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail("the query did not start")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_ctrl_c_stops_a_query_at_once(filled: Path) -> None:
    env = {**os.environ, "HERMES_LEDGER_DB": str(filled)}
    proc = subprocess.Popen(
        [installed_script(), "sql", "--timeout", "0", SLOW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_until_querying(proc, filled)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - sent < 3
    assert (proc.returncode, out, err) == (
        130,
        "",
        "Error: the query was interrupted (Ctrl-C); nothing changed\n",
    )


def test_cli_timeout(filled: Path, cli: Callable[..., Result]) -> None:
    result = cli("sql", "--db", str(filled), "--timeout", "0.3", SLOW)
    assert (result.exit_code, result.output) == (
        1,
        f"Error: the query ran longer than 0.3 s and was stopped\nTry: {TIMEOUT_HINT}\n",
    )
    result = cli("sql", "--db", str(filled), "--timeout", "0", "SELECT count(*) AS n FROM events")
    assert (result.exit_code, result.output) == (0, "n\n-\n3\n(1 row)\n")
    for bad in ("nan", "inf", "-1", "soon", "86401"):
        result = cli("sql", "--db", str(filled), "--timeout", bad, "SELECT 1")
        assert result.exit_code == 2, (bad, result.output)
        assert "Invalid value for '--timeout'" in result.output
    result = cli("sql", "--help")
    assert "--timeout SECONDS" in result.output and "[default: 30.0]" in result.output


# -- pragmas and statements ----------------------------------------------------------


def documented_pragmas() -> set[str]:
    """The pragma names the sql section of docs/export.md lists as allowed."""
    text = (Path(__file__).parent.parent / "docs" / "export.md").read_text()
    section = text.split("## `hermes-ledger sql`")[1].split("\n## ")[0]
    listed = section.split("<!-- pragmas -->")[1].split("<!-- /pragmas -->")[0]
    return set(re.findall(r"`(\w+)`", listed))


def test_the_docs_list_exactly_the_allowed_pragmas() -> None:
    assert documented_pragmas() == SQL_PRAGMA_READS | SQL_PRAGMA_LOOKUPS


@pytest.mark.parametrize("name", sorted(SQL_PRAGMA_READS))
def test_each_reading_pragma_runs(filled: Path, name: str) -> None:
    columns, _rows = query(filled, f"PRAGMA {name}")
    assert columns


@pytest.mark.parametrize("name", sorted(SQL_PRAGMA_LOOKUPS))
def test_each_lookup_pragma_runs(filled: Path, name: str) -> None:
    arg = "events_by_session" if name in ("index_info", "index_xinfo") else "events"
    query(filled, f"PRAGMA {name}({arg})")
    query(filled, f"PRAGMA main.{name}({arg})")
    query(filled, f"SELECT * FROM pragma_{name}('{arg}')")


SETTINGS = [
    "PRAGMA cache_size = 5",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA busy_timeout = 0",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA query_only = 0",
    "PRAGMA wal_checkpoint",
    "PRAGMA optimize",
    "PRAGMA shrink_memory",
    "PRAGMA writable_schema",
    "PRAGMA user_version = 7",
]


@pytest.mark.parametrize("sql", SETTINGS)
def test_other_pragmas_and_settings_are_refused(filled: Path, sql: str) -> None:
    before = fingerprint(filled)
    with pytest.raises(LedgerError, match="read-only for queries; refused: PRAGMA"):
        query(filled, sql)
    assert fingerprint(filled) == before


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; -- comment",
        "SELECT 1; /* c */",
        "SELECT 1 -- no semicolon",
        "SELECT 1;\n;\n  -- one\n/* two */ ; /* unterminated",
        "/* lead */ SELECT 1",
    ],
)
def test_trailing_comments_are_nothing(filled: Path, sql: str) -> None:
    assert query(filled, sql)[1] == [(1,)]


@pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "SELECT 1; -- c\nSELECT 2"])
def test_two_statements_are_refused(filled: Path, sql: str) -> None:
    with pytest.raises(LedgerError, match="more than one statement"):
        query(filled, sql)


@pytest.mark.parametrize("sql", ["-- only a comment", "/* c */ ;", " ; ; "])
def test_only_comments_is_an_empty_query(filled: Path, sql: str) -> None:
    with pytest.raises(LedgerError, match="the query is empty"):
        query(filled, sql)


# -- a read-write Ledger keeps writing -------------------------------------------------


def can_append(led: Ledger, n: int) -> None:
    led.append(K2, [MessageAppended(event_id=f"w{n}", session_id="s2", role="user", content="x")])
    assert led.connection.authorizer is None
    assert led.connection.execute("PRAGMA query_only").fetchall() == [(0,)]


def test_sql_on_a_read_write_ledger_never_stops_its_writes(led: Ledger, filled: Path) -> None:
    assert [list(run_sql(led, "SELECT count(*) FROM events").rows)] == [[(3,)]]
    can_append(led, 1)
    rows = run_sql(led, "SELECT position FROM events ORDER BY position").rows
    assert next(rows) == (1,)
    can_append(led, 2)  # while the query's rows are open
    rows.close()
    with pytest.raises(LedgerError, match="read-only"):
        run_sql(led, "DELETE FROM events")
    can_append(led, 3)
    with pytest.raises(LedgerError, match="syntax error"):
        run_sql(led, "SELEC 1")
    can_append(led, 4)
    with pytest.raises(QueryTimeoutError):
        run_sql(led, SLOW, timeout=0.2)
    can_append(led, 5)
    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        run_sql(led, SLOW, timeout=0)
    can_append(led, 6)
    assert led.query("SELECT count(*) FROM events") == [(9,)]


# -- both backends: the same command on a PostgreSQL ledger ---------------------------


@pytest.fixture
def ledger(backend: Backend) -> str:
    """``filled``'s events in a ledger of either backend: its ``--db`` target."""
    with backend.open() as log:
        log.append(
            K1,
            [
                SessionStarted(event_id="e1", session_id="s1", source=Source(platform="telegram")),
                MessageAppended(event_id="e2", session_id="s1", role="user", content="hello"),
            ],
        )
        log.append(
            K2, [SessionStarted(event_id="e3", session_id="s2", source=Source(platform="x"))]
        )
    return backend.target


def shown(sql: str) -> str:
    """How a refusal quotes ``sql``: on one line, cut to 60 characters."""
    text = " ".join(sql.split())
    return text if len(text) <= 60 else text[:57] + "..."


def contents(backend: Backend) -> list[tuple[Any, ...]]:
    """Every row of the log and of its payloads, read behind the interface."""
    return backend.raw("SELECT position, hash FROM events ORDER BY position") + backend.raw(
        "SELECT position FROM payloads ORDER BY position"
    )


def test_both_backends_print_the_same_table_json_and_csv(
    ledger: str, cli: Callable[..., Result]
) -> None:
    table = cli("sql", "--db", ledger, "SELECT position, type, session_id FROM events ORDER BY 1")
    assert (table.exit_code, table.output) == (
        0,
        "position  type              session_id\n"
        "--------  ----------------  ----------\n"
        "       1  session_started   s1\n"
        "       2  message_appended  s1\n"
        "       3  session_started   s2\n"
        "(3 rows)\n",
    )
    none = cli("sql", "--db", ledger, "SELECT type FROM events WHERE position > 99")
    assert (none.exit_code, none.output) == (0, "type\n----\n(0 rows)\n")
    sql = "SELECT position, event_id, session_id FROM events WHERE stream = :k ORDER BY position"
    as_json = cli("sql", "--db", ledger, sql, "-p", "k", K1, "--json")
    assert (as_json.exit_code, as_json.output) == (
        0,
        "[\n"
        '  {"position": 1, "event_id": "e1", "session_id": "s1"},\n'
        '  {"position": 2, "event_id": "e2", "session_id": "s1"}\n'
        "]\n",
    )
    empty = cli("sql", "--db", ledger, "SELECT type FROM events WHERE position > 99", "--json")
    assert (empty.exit_code, empty.output) == (0, "[]\n")
    as_csv = cli("sql", "--db", ledger, sql + " DESC", "-p", "k", K1, "--csv")
    assert (as_csv.exit_code, as_csv.output) == (
        0,
        "position,event_id,session_id\n2,e2,s1\n1,e1,s1\n",
    )
    # event_bodies: each event whole, its personal fields merged in, on both
    bodies = cli(
        "sql", "--db", ledger, "--csv",
        "SELECT data FROM event_bodies WHERE type = 'message_appended' AND data LIKE '%hello%'",
    )  # fmt: skip
    assert bodies.exit_code == 0 and '""content"":""hello""' in bodies.output


PORTABLE_WRITES = [
    "INSERT INTO events (position) VALUES (99)",
    "DELETE   FROM\n events",
    "UPDATE events SET type = 'x'",
    "DROP TABLE events",
    "CREATE TABLE t (x integer)",
    "CREATE TEMP TABLE t (x integer)",
    "ALTER TABLE events ADD COLUMN x integer",
    "DELETE FROM payloads",
    "WITH x AS (SELECT 1) INSERT INTO events (position) SELECT * FROM x",
]


@pytest.mark.parametrize("sql", PORTABLE_WRITES)
def test_both_backends_refuse_a_write_and_change_nothing(
    ledger: str, backend: Backend, sql: str, cli: Callable[..., Result]
) -> None:
    before = contents(backend)
    result = cli("sql", "--db", ledger, sql)
    assert (result.exit_code, result.output) == (
        1,
        f"Error: the ledger is open read-only for queries; refused: {shown(sql)}\n"
        "Try: query with SELECT (e.g. SELECT type, count(*) FROM events GROUP BY type); "
        "the log changes only by appending events\n",
    )
    assert contents(backend) == before


def test_both_backends_stop_a_query_at_the_timeout(ledger: str, cli: Callable[..., Result]) -> None:
    result = cli("sql", "--db", ledger, "--timeout", "0.3", SLOW)
    assert (result.exit_code, result.output) == (
        1,
        f"Error: the query ran longer than 0.3 s and was stopped\nTry: {TIMEOUT_HINT}\n",
    )
    result = cli("sql", "--db", ledger, "--timeout", "0", "SELECT count(*) AS n FROM events")
    assert (result.exit_code, result.output) == (0, "n\n-\n3\n(1 row)\n")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 1; SELECT 2", "Error: the query holds more than one statement\n"),
        ("SELECT 1; -- c\nSELECT 2", "Error: the query holds more than one statement\n"),
        ("/* only a comment */", "Error: the query is empty\n"),
        (" ; ; ", "Error: the query is empty\n"),
        ("SELECT * FROM events WHERE stream = :k", "Error: the query's parameters do not match"),
        ("SELECT * FROM nowhere", "Error: the query failed: "),
    ],
)
def test_both_backends_refuse_what_is_not_one_query(
    ledger: str, sql: str, message: str, cli: Callable[..., Result]
) -> None:
    result = cli("sql", "--db", ledger, sql)
    assert result.exit_code == 1 and result.output.startswith(message), result.output
    assert "Traceback" not in result.output


# -- PostgreSQL only ------------------------------------------------------------------


@pytest.fixture
def pg(clock: ManualClock) -> Iterator[Backend]:
    """A PostgreSQL ledger alone (what these tests check has no SQLite twin)."""
    with fresh_database() as dsn:
        found = Backend("postgresql", pg_uri(dsn), clock)
        found.open().close()
        yield found


@pytest.fixture
def pg_ledger(pg: Backend) -> str:
    return pg.target


PG_WRITES = [
    "WITH d AS (DELETE FROM events RETURNING position) SELECT * FROM d",
    "SELECT * FROM events FOR UPDATE",
    "SET statement_timeout = 0",
    "COMMIT",
    "LOCK TABLE events",
    "COPY events TO STDOUT",
    "DO $$ BEGIN DELETE FROM payloads; END $$",
    "TRUNCATE events",
    "VACUUM events",
    # functions whose effects reach outside a read-only transaction
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
    "SELECT pg_advisory_lock(1)",
    """SELECT "set_config"('search_path', 'public', false)""",
    "SELECT pg_catalog.pg_read_file('/etc/hostname')",
    "SELECT query_to_xml('DELETE FROM events', true, true, '')",
]


@pytest.mark.parametrize("sql", PG_WRITES)
def test_postgres_refuses_a_write_inside_a_query_or_any_other_statement(
    pg_ledger: str, pg: Backend, sql: str, cli: Callable[..., Result]
) -> None:
    backend = pg
    with backend.open() as log:
        log.append(K1, [MessageAppended(session_id="s1", role="user", content="kept")])
    before = contents(backend)
    result = cli("sql", "--db", pg_ledger, sql)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"Error: the ledger is open read-only for queries; refused: {shown(sql)}\n"
    ), result.output
    assert contents(backend) == before


def test_postgres_runs_the_query_read_only_with_the_timeout(
    pg_ledger: str, cli: Callable[..., Result]
) -> None:
    settings = (
        "SELECT current_setting('transaction_read_only') AS ro,"
        " current_setting('statement_timeout') AS timeout,"
        " current_setting('transaction_isolation') AS isolation"
    )
    result = cli("sql", "--db", pg_ledger, "--timeout", "7", settings, "--json")
    assert (result.exit_code, json.loads(result.output)) == (
        0,
        [{"ro": "on", "timeout": "7s", "isolation": "repeatable read"}],
    )
    result = cli("sql", "--db", pg_ledger, "--timeout", "0", settings, "--csv")
    assert result.output == "ro,timeout,isolation\non,0,repeatable read\n"


def test_postgres_placeholders_are_bound_not_spliced(
    pg_ledger: str, pg: Backend, cli: Callable[..., Result]
) -> None:
    backend = pg
    with backend.open() as log:
        log.append(K1, [MessageAppended(session_id="s1", role="user", content="100% sure")])
    sql = (
        "SELECT data::json ->> 'content' AS said, ':k' AS literal, $$:k %$$ AS quoted"
        " FROM event_bodies /* :k */ WHERE stream = :k AND data LIKE '%100\\%%'"
    )
    result = cli("sql", "--db", pg_ledger, sql, "-p", "k", K1, "--json")
    assert (result.exit_code, json.loads(result.output)) == (
        0,
        [{"said": "100% sure", "literal": ":k", "quoted": ":k %"}],
    )
    named = cli("sql", "--db", pg_ledger, "SELECT 'pg_terminate_backend' AS w /* set_config */")
    word = "pg_terminate_backend"
    assert (named.exit_code, named.output) == (0, f"w\n{'-' * len(word)}\n{word}\n(1 row)\n")
    injected = "x'); DROP TABLE events --"
    result = cli("sql", "--db", pg_ledger, "SELECT :k AS k", "-p", "k", injected, "--json")
    assert (result.exit_code, json.loads(result.output)) == (0, [{"k": injected}])
    assert backend.count() == 1


def test_postgres_without_a_ledger_says_so(cli: Callable[..., Result]) -> None:
    with fresh_database() as dsn:
        result = cli("sql", "--db", pg_uri(dsn), "SELECT 1")
    assert result.exit_code == 1
    assert result.output.startswith("Error: there is no ledger at ")
    assert "Try: create it with `hermes-ledger init --db postgresql://…`" in result.output


def _running(pg: Backend, marker: str) -> int:
    """How many server sessions are running a query that holds ``marker``."""
    return int(
        pg.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
            f" AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        )
    )


def test_postgres_ctrl_c_stops_the_query_on_the_server(pg: Backend) -> None:
    """Ctrl-C ends the command with 130 and cancels the query on the server too."""
    marker = "hl_ctrl_c_marker"
    proc = subprocess.Popen(
        [installed_script(), "sql", "--db", pg.target, "--timeout", "0",
         f"SELECT pg_sleep(60) AS {marker}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _running(pg, marker):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the query did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (
        130,
        "",
        "Error: the query was interrupted (Ctrl-C); nothing changed\n",
    )
    deadline = time.monotonic() + 30
    while _running(pg, marker):
        assert time.monotonic() < deadline, "the query still runs on the server"
        time.sleep(0.05)


def test_postgres_the_timeout_counts_the_time_between_rows(pg: Backend) -> None:
    """As on SQLite: a caller that holds the rows past the timeout gets it at the next row."""
    from hermes_ledger.ledger.postgres.query import run_sql as run_postgres_sql

    with pg.open() as log:
        log.append(
            K1, [MessageAppended(session_id="s1", role="user", content=str(i)) for i in "ab"]
        )
    rows = run_postgres_sql(pg.target, "SELECT position FROM events ORDER BY position", timeout=0.2)
    assert next(rows.rows) == (1,)
    time.sleep(0.3)
    with pytest.raises(QueryTimeoutError, match=r"longer than 0\.2 s"):
        list(rows.rows)
    assert _running(pg, "SELECT position FROM events ORDER BY position") == 0
