"""The command line on a PostgreSQL ledger (issue 14): ``--db postgresql://…`` and
``HERMES_LEDGER_DB`` for status, verify, events, export, erase, replay and search,
and a clear refusal (exit 1, nothing written) from every other command.

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
READY = ["erase", "events", "export", "replay", "search", "status", "verify"]
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
    login = info.get("user") or ""
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
    print(out)
    assert "backend:     PostgreSQL (schema v" in out
    assert "events:      9 (head position 9)" in out
    assert "streams:     2" in out
    assert "sessions:    (no projections)" in out
    assert where.split("/")[-1] in out
    doc = json.loads(_ok(cli("status", "--db", pg, "--json")))
    assert doc["backend"] == "postgresql"
    assert (doc["events"], doc["head"], doc["streams"], doc["sessions"]) == (9, 9, 2, None)
