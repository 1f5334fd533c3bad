"""`hermes-ledger sql` and ledger.query.run_sql: read-only queries, refused writes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest
from click.testing import Result
from helpers import installed_script

from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source
from hermes_ledger.ledger.query import run_sql

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


def query(path: Path, sql: str, params: Any = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
    with Ledger.open(path, readonly=True) as led:
        result = run_sql(led, sql, params)
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
    sql = "SELECT json_extract(data, '$.content') FROM events WHERE type = 'message_appended'"
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
    assert (
        info.value.hint == "the tables and columns are described in docs/ledger.md (table events)"
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
