"""`hermes-ledger report`: the named audit reports (projections/audits.py), each run on a
ledger with real data for it: the demo day (gateway/demo/day.py: SessionStore traffic,
scheduler closes, a manual /new, usage), and a hook that keeps failing."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from backends import pg_uri
from click.testing import Result
from helpers import ManualClock
from hook_workers import recording_handler, write_hook
from pg_support import fresh_database

from hermes_ledger.gateway.demo.day import run_demo
from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistry
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.events import SessionEnded, SessionStarted, Source
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.migrate import copy_ledger
from hermes_ledger.ledger.query import QueryTimeoutError
from hermes_ledger.projections import attach
from hermes_ledger.projections import postgres as pg_projections
from hermes_ledger.projections.audits import (
    REPORTS,
    ReportUsageError,
    bind_params,
    get_report,
    reports_markdown,
    run_report,
)
from hermes_ledger.projections.postgres.reporting import run_report_sql

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"

# The demo's sessions (its ids are seeded, its day fixed: 2026-11-02 from 08:00 UTC).
SLACK_1, SLACK_2 = "20261102_080000_f7fd8b2d", "20261102_082000_28cf2b76"
TG_1, TG_2 = "20261102_080000_91076163", "20261102_090500_1f22e0b0"
WHATSAPP, LOCAL, API = (
    "20261102_080000_608eebcb",
    "20261102_080000_a1542a9f",
    "20261102_080000_a414dc40",
)
OPS, THREAD, OPS_2 = (
    "20261102_080000_10fb8b8d",
    "20261102_080000_fc2605b7",
    "20261103_070500_6a25b577",
)
K_SLACK, K_TG = "agent:demo:slack:channel:C01:U9", "agent:demo:telegram:dm:1001"
K_WA, K_LOCAL, K_API = (
    "agent:demo:whatsapp:dm:+15550100", "agent:demo:local:dm", "agent:demo:api_server:dm:client-7",
)  # fmt: skip
K_OPS, K_THREAD = "agent:demo:discord:group:ops:42", "agent:demo:discord:thread:ops:t-7"
NOT_FLUSHED = "no flusher configured"


def t(day: int, hour: int, minute: int) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:00.000000Z"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    run_demo(path)
    return path


@pytest.fixture(scope="module")
def demo_pg(demo: Path) -> Iterator[str]:
    """The demo ledger copied into a fresh PostgreSQL database (``migrate``), with its
    projections built there: its ``postgresql://`` URI."""
    with fresh_database() as dsn:
        uri = pg_uri(dsn)
        copy_ledger(demo, uri)
        with PostgresLog.open(uri) as log:
            pg_projections.rebuild(log)
        yield uri


@pytest.fixture(params=["sqlite", "postgresql"])
def demo_db(request: pytest.FixtureRequest, demo: Path) -> str:
    """The demo ledger's ``--db`` on each backend."""
    return str(demo) if request.param == "sqlite" else request.getfixturevalue("demo_pg")


@pytest.fixture(params=["sqlite", "postgresql"])
def demo_led(request: pytest.FixtureRequest, demo: Path) -> Iterator[Ledger | PostgresLog]:
    """The demo ledger on each backend."""
    if request.param == "sqlite":
        with Ledger.open(demo, readonly=True) as led:
            yield led
        return
    with PostgresLog.open(request.getfixturevalue("demo_pg")) as log:
        yield log


EXPECTED: list[tuple[str, dict[str, str], list[tuple[object, ...]]]] = [
    (
        "unflushed-ends",
        {},
        [
            (SLACK_1, K_SLACK, "slack", "skipped", 0, NOT_FLUSHED, "manual_reset", t(2, 8, 20)),
            (TG_1, K_TG, "telegram", "skipped", 0, NOT_FLUSHED, "auto_reset", t(2, 9, 5)),
            (WHATSAPP, K_WA, "whatsapp", "skipped", 0, NOT_FLUSHED, "idle_expiry", t(2, 10, 35)),
            (LOCAL, K_LOCAL, "local", "skipped", 0, NOT_FLUSHED, "idle_expiry", t(2, 10, 35)),
            (API, K_API, "api_server", "skipped", 0, NOT_FLUSHED, "idle_expiry", t(2, 10, 35)),
            (SLACK_2, K_SLACK, "slack", "skipped", 0, NOT_FLUSHED, "idle_expiry", t(2, 10, 35)),
            (TG_2, K_TG, "telegram", "skipped", 0, NOT_FLUSHED, "idle_expiry", t(2, 10, 35)),
            (OPS, K_OPS, "discord", "skipped", 0, NOT_FLUSHED, "daily_reset", t(3, 4, 5)),
            (THREAD, K_THREAD, "discord", "skipped", 0, NOT_FLUSHED, "daily_reset", t(3, 4, 5)),
        ],
    ),
    (
        "unflushed-ends",
        {"platform": "telegram", "since": "2026-11-02T09:00", "limit": "1"},
        [(TG_1, K_TG, "telegram", "skipped", 0, NOT_FLUSHED, "auto_reset", t(2, 9, 5))],
    ),
    ("unflushed-ends", {"since": "2026-11-04"}, []),
    (
        "idle-before-close",
        {},
        [
            (OPS, K_OPS, "discord", t(2, 8, 0), t(3, 4, 5), "daily_reset", 72300.0),
            (THREAD, K_THREAD, "discord", t(2, 8, 0), t(3, 4, 5), "daily_reset", 72300.0),
            (WHATSAPP, K_WA, "whatsapp", t(2, 8, 0), t(2, 10, 35), "idle_expiry", 9300.0),
            (LOCAL, K_LOCAL, "local", t(2, 8, 0), t(2, 10, 35), "idle_expiry", 9300.0),
            (API, K_API, "api_server", t(2, 8, 0), t(2, 10, 35), "idle_expiry", 9300.0),
            (SLACK_2, K_SLACK, "slack", t(2, 8, 20), t(2, 10, 35), "idle_expiry", 8100.0),
            (TG_2, K_TG, "telegram", t(2, 9, 5), t(2, 10, 35), "idle_expiry", 5400.0),
            (TG_1, K_TG, "telegram", t(2, 8, 0), t(2, 9, 5), "auto_reset", 3900.0),
            (SLACK_1, K_SLACK, "slack", t(2, 8, 20), t(2, 8, 20), "manual_reset", 0.0),
        ],
    ),
    (
        "idle-before-close",
        {"platform": "telegram", "until": "2026-11-02T10:00"},
        [(TG_1, K_TG, "telegram", t(2, 8, 0), t(2, 9, 5), "auto_reset", 3900.0)],
    ),
    (
        "resets-by-user",
        {},
        [("U9", "Linus", SLACK_1, K_SLACK, "slack", "/new", t(2, 8, 20))],
    ),
    (
        "resets-by-user",
        {"user": "U9", "platform": "slack"},
        [
            ("U9", "Linus", SLACK_1, K_SLACK, "slack", "/new", t(2, 8, 20)),
        ],
    ),
    ("resets-by-user", {"user": "1001"}, []),
    (
        "usage-by-platform-day",
        {},
        [
            ("2026-11-02", "discord", 2, 2, 1140, 190, 512, 0.0042),
            ("2026-11-02", "local", 1, 1, 240, 40, 0, 0.0),
            ("2026-11-02", "slack", 2, 3, 1380, 230, 512, 0.0042),
            ("2026-11-02", "telegram", 2, 2, 480, 80, 0, 0.0),
            ("2026-11-02", "whatsapp", 1, 1, 240, 40, 0, 0.0),
            ("2026-11-03", "discord", 1, 1, 240, 40, 0, 0.0),
        ],
    ),
    (
        "usage-by-platform-day",
        {"platform": "discord", "since": "2026-11-03"},
        [("2026-11-03", "discord", 1, 1, 240, 40, 0, 0.0)],
    ),
    (
        "end-reasons",
        {},
        [
            ("daily_reset", "discord", 2, 6, 2),
            ("auto_reset", "telegram", 1, 2, 1),
            ("idle_expiry", "api_server", 1, 1, 1),
            ("idle_expiry", "local", 1, 2, 1),
            ("idle_expiry", "slack", 1, 2, 1),
            ("idle_expiry", "telegram", 1, 2, 1),
            ("idle_expiry", "whatsapp", 1, 2, 1),
            ("manual_reset", "slack", 1, 6, 1),
        ],
    ),
    (
        "end-reasons",
        {"platform": "telegram"},
        [
            ("auto_reset", "telegram", 1, 2, 1),
            ("idle_expiry", "telegram", 1, 2, 1),
        ],
    ),
    (
        "busiest-sessions",
        {"limit": "3"},
        [
            (SLACK_1, K_SLACK, "slack", "closed", 6, 1140, 190, 0.0042, t(2, 8, 0), t(2, 8, 20)),
            (OPS, K_OPS, "discord", "closed", 4, 900, 150, 0.0042, t(2, 8, 0), t(3, 4, 5)),
            (WHATSAPP, K_WA, "whatsapp", "closed", 2, 240, 40, 0.0, t(2, 8, 0), t(2, 10, 35)),
        ],
    ),
    (
        "busiest-sessions",
        {"since": "2026-11-03"},
        [(OPS_2, K_OPS, "discord", "open", 2, 240, 40, 0.0, t(3, 7, 5), None)],
    ),
    ("hook-failures", {}, []),  # the demo's hook never fails
]


@pytest.mark.parametrize(("name", "params", "expected"), EXPECTED)
def test_report_rows_on_the_demo_day(
    demo_led: Ledger | PostgresLog,
    name: str,
    params: dict[str, str],
    expected: list[tuple[object, ...]],
) -> None:
    result = run_report(demo_led, name, params)
    assert result.columns == list(REPORTS[name].columns)
    assert list(result.rows) == expected


def test_every_report_is_tested_and_declares_its_columns(demo_led: Ledger | PostgresLog) -> None:
    assert {name for name, _, _ in EXPECTED} == set(REPORTS)
    for name, report in REPORTS.items():
        result = run_report(demo_led, name)
        assert result.columns == list(report.columns), name
        list(result.rows)


def test_relative_times_are_read_with_the_injected_clock(demo_led: Ledger | PostgresLog) -> None:
    day_after = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
    rows = list(run_report(demo_led, "end-reasons", {"since": "12h"}, now=lambda: day_after).rows)
    assert rows == [("daily_reset", "discord", 2, 6, 2)]


# -- hook failures: a hook that fails, then dead-letters ---------------------------------


def test_hook_failures_lists_dead_letters_retries_and_later_successes(
    led: Ledger, db_path: Path, clock: ManualClock, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    hooks_dir = tmp_path / "hooks"
    ok = tmp_path / "ok"
    write_hook(hooks_dir, "audit", recording_handler(tmp_path / "a.jsonl"), events=["session:end"])
    write_hook(hooks_dir, "crm", recording_handler(tmp_path / "c.jsonl", fail_unless=ok),
               events=["session:end", "session:start"])  # fmt: skip
    attach(led)
    dispatcher = HookDispatcher(
        led, HookRegistry.discover(hooks_dir), clock=clock, max_attempts=2, backoff_base=10
    )
    src = Source(platform="telegram", chat_id="1", user_id="u1")
    led.append("k1", [SessionStarted(event_id="e1", session_id="s1", source=src)])
    led.append("k1", [SessionEnded(event_id="e2", session_id="s1", reason="shutdown")])
    dispatcher.deliver()  # crm fails e1 (attempt 1): retry in 10 s
    clock.advance(seconds=10)
    dispatcher.deliver()  # crm fails e1 again: dead; e2 fails (attempt 1)
    clock.advance(seconds=10)
    ok.touch()
    led.append("k2", [SessionStarted(event_id="e3", session_id="s2", source=src)])
    dispatcher.deliver()  # e2 now succeeds, e3 succeeds at once
    ok.unlink()
    led.append("k2", [SessionEnded(event_id="e4", session_id="s2", reason="shutdown")])
    dispatcher.deliver()  # e4 fails once: retrying
    error = f"RuntimeError: the marker {ok} is missing"
    expected = [
        ("crm", "session:start", "s1", "dead", 2, error, None, None, 1),
        ("crm", "session:end", "s1", "done", 2, error, None, "2026-11-22T09:00:20.000000Z", 2),
        ("crm", "session:end", "s2", "pending", 1, error, "2026-11-22T09:00:30.000000Z", None, 4),
    ]
    assert list(run_report(led, "hook-failures").rows) == expected
    assert list(run_report(led, "hook-failures", {"hook": "audit"}).rows) == []
    assert list(run_report(led, "hook-failures", {"limit": "1"}).rows) == expected[:1]

    result = cli("report", "hook-failures", "--db", str(db_path), "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [(r["status"], r["position"]) for r in listed] == [
        ("dead", 1),
        ("done", 2),
        ("pending", 4),
    ]

    # The same log and delivery rows in PostgreSQL (its times are timestamptz there)
    # give the same report.
    columns = (
        "delivery_id, hook, position, event_id, hook_event, session_key, session_id, context,"
        " status, attempts, next_attempt_at, last_error, created_at, delivered_at"
    )
    deliveries = led.query(f"SELECT {columns} FROM hook_deliveries")
    with fresh_database() as dsn:
        copy_ledger(db_path, pg_uri(dsn))
        with psycopg.connect(dsn, autocommit=True) as pg:
            pg.execute("SET search_path = hermes_ledger")
            insert = f"INSERT INTO hook_deliveries ({columns}) VALUES ({', '.join(['%s'] * 14)})"
            for row in deliveries:
                pg.execute(insert, row)  # type: ignore[arg-type]
        with PostgresLog.open(pg_uri(dsn)) as log:
            pg_projections.rebuild(log)
            assert list(run_report(log, "hook-failures").rows) == expected
            assert list(run_report(log, "hook-failures", {"hook": "audit"}).rows) == []
            assert list(run_report(log, "hook-failures", {"limit": "1"}).rows) == expected[:1]
            since = {"since": "2026-11-22T09:00:01Z"}
            assert list(run_report(log, "hook-failures", since).rows) == [expected[2]]
            assert list(run_report(led, "hook-failures", since).rows) == [expected[2]]


# -- the command line --------------------------------------------------------------------


def test_cli_prints_a_table(demo_db: str, cli: Callable[..., Result]) -> None:
    result = cli("report", "resets-by-user", "--db", demo_db)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "user_id  user_name  session_id                session_key"
        "                      platform  trigger  reset_at\n"
        "-------  ---------  ------------------------  -------------------------------"
        "  --------  -------  ---------------------------\n"
        f"U9       Linus      {SLACK_1}  {K_SLACK}  slack     /new     {t(2, 8, 20)}\n"
        "(1 row)\n"
    )


def test_cli_json_and_csv(demo_db: str, cli: Callable[..., Result]) -> None:
    args = ("report", "end-reasons", "--db", demo_db, "--param", "platform=telegram")
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"end_reason": "auto_reset", "platform": "telegram", "sessions": 1, "messages": 2,
         "without_successful_flush": 1},
        {"end_reason": "idle_expiry", "platform": "telegram", "sessions": 1, "messages": 2,
         "without_successful_flush": 1},
    ]  # fmt: skip
    result = cli(*args, "--csv")
    assert result.exit_code == 0, result.output
    assert list(csv.reader(io.StringIO(result.stdout))) == [
        ["end_reason", "platform", "sessions", "messages", "without_successful_flush"],
        ["auto_reset", "telegram", "1", "2", "1"],
        ["idle_expiry", "telegram", "1", "2", "1"],
    ]
    result = cli(*args, "--json", "--csv")
    assert result.exit_code == 2 and "choose one of --json and --csv" in result.stderr


def test_cli_lists_the_reports(cli: Callable[..., Result], tmp_path: Path) -> None:
    for args in (("report",), ("report", "--list")):
        result = cli(*args, "--db", str(tmp_path / "none.db"))
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert [line.split("  ")[0] for line in lines if not line.startswith(" ")][:-1] == list(
            REPORTS
        )
        assert "unflushed-ends  Sessions that ended without a successful memory flush" in lines[0]
        assert (
            "    --param platform (text): only this platform (telegram, discord, slack…)" in lines
        )
        assert "    --param limit=10 (int): at most this many rows" in lines
    listed = json.loads(cli("report", "--list", "--json").stdout)
    assert [r["name"] for r in listed] == list(REPORTS)
    help_text = "only from this time on (inclusive)"
    assert listed[0]["params"][0] == {
        "name": "since", "type": "time", "default": None, "help": help_text,
    }  # fmt: skip
    assert not (tmp_path / "none.db").exists()


def test_cli_prints_a_reports_sql(cli: Callable[..., Result]) -> None:
    result = cli("report", "idle-before-close", "--sql")
    assert (result.exit_code, result.stdout) == (0, REPORTS["idle-before-close"].sql + "\n")
    # on a PostgreSQL ledger, its PostgreSQL form (nothing is opened: no server needed)
    result = cli("report", "idle-before-close", "--sql", "--db", "postgresql://127.0.0.1:1/x")
    expected = REPORTS["idle-before-close"].postgres_sql
    assert (result.exit_code, result.stdout) == (0, expected + "\n")


def test_every_report_gives_the_same_rows_on_both_backends(
    demo: Path, demo_pg: str, cli: Callable[..., Result]
) -> None:
    """Each report, with each of its parameters given, prints the same JSON on the
    demo ledger in SQLite and in PostgreSQL."""
    values = {"since": "2026-11-02T09:00", "until": "2026-11-03T05:00", "platform": "slack",
              "user": "U9", "hook": "crm", "limit": "2"}  # fmt: skip
    for name, report in REPORTS.items():
        runs = [[]] + [["--param", f"{p.name}={values[p.name]}"] for p in report.params]
        for extra in runs:
            args = ("report", name, "--json", *extra)
            on_pg = cli(*args, "--db", demo_pg)
            assert on_pg.exit_code == 0, on_pg.output
            assert on_pg.stdout == cli(*args, "--db", str(demo)).stdout, (name, extra)


def test_a_postgresql_ledger_without_projections(cli: Callable[..., Result]) -> None:
    with fresh_database() as dsn:
        result = cli("report", "end-reasons", "--db", pg_uri(dsn))
    assert result.exit_code == 1, result.output
    assert "has no projections to report on" in result.stderr
    assert "Try: create them with `hermes-ledger replay --db URI`" in result.stderr


@pytest.mark.parametrize(
    ("args", "message", "listing"),
    [
        (["nope"], "Error: no report named 'nope'", "  busiest-sessions  The sessions with"),
        (["end-reasons", "--param", "user=u1"], "Error: report 'end-reasons' has no parameter"
         " 'user'", "  --param platform (text): only this platform"),
        (["busiest-sessions", "--param", "limit=ten"], "Error: --param limit=ten: not a whole"
         " number >= 1", "  --param limit=10 (int): at most this many rows"),
        (["busiest-sessions", "--param", "limit=0"], "Error: --param limit=0: not a whole number",
         "Parameters of busiest-sessions:"),
        (["unflushed-ends", "--param", "since=soon"], "Error: --param since=soon: not a time",
         "  --param since (time): only from this time on (inclusive)"),
        (["unflushed-ends", "--param", "platform="], "Error: --param platform= is empty",
         "Parameters of unflushed-ends:"),
        (["unflushed-ends", "--param", "since"], "Error: --param takes KEY=VALUE", ""),
        (["unflushed-ends", "--param", "since=1d", "--param", "since=2d"],
         "Error: --param since is given twice", ""),
        (["--param", "since=1d"], "Error: --param needs a report NAME", ""),
    ],
)  # fmt: skip
def test_bad_names_and_params_are_usage_errors_listing_what_is_valid(
    cli: Callable[..., Result], tmp_path: Path, args: list[str], message: str, listing: str
) -> None:
    missing = tmp_path / "none.db"
    result = cli("report", *args, "--db", str(missing))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert message in result.stderr
    assert listing in result.stderr
    assert "Traceback" not in result.output
    assert not missing.exists()  # refused before the ledger is opened


def test_a_missing_ledger_is_an_error(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("report", "end-reasons", "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: there is no ledger at {tmp_path / 'none.db'}")


def test_bind_params_in_python() -> None:
    report = get_report("busiest-sessions")
    assert bind_params(report, {"limit": "3", "platform": "slack"}) == {
        "since": None, "until": None, "platform": "slack", "limit": 3,
    }  # fmt: skip
    with pytest.raises(ReportUsageError, match="no report named"):
        get_report("busiest")


def test_docs_list_the_reports_as_the_library_defines_them() -> None:
    page = DOC.read_text("utf-8")
    begin, end = "<!-- reports: generated from projections/audits.py -->\n", "<!-- /reports -->"
    found = re.search(re.escape(begin) + "(.*?)" + re.escape(end), page, re.S)
    assert found is not None
    assert found.group(1) == reports_markdown()
    assert "hermes-ledger report --list" in page
    for report in REPORTS.values():
        assert report.sql not in page  # the SQL is stated once, in the library


def test_a_report_on_postgresql_is_bounded_by_the_timeout_and_read_only(demo_pg: str) -> None:
    """The report runner's own limits, on a real server: a query past its timeout is
    stopped with QueryTimeoutError, and the transaction it runs in is read-only."""
    with PostgresLog.open(demo_pg) as log:
        with pytest.raises(QueryTimeoutError, match=r"longer than 0\.2 s"):
            run_report_sql(log, "SELECT pg_sleep(5)", {}, timeout=0.2)
        with pytest.raises(LedgerError, match="read-only transaction"):
            run_report_sql(log, "DELETE FROM session_map", {}, timeout=10)
        assert list(run_report(log, "end-reasons", {"platform": "slack"}).rows) == [
            ("idle_expiry", "slack", 1, 2, 1),
            ("manual_reset", "slack", 1, 6, 1),
        ]
