"""``hermes-ledger demo``: a realistic gateway day, simulated in a few seconds.

Writes into a ledger of its own (``$HERMES_HOME/ledger-demo.db`` by default, or a
PostgreSQL database given as a ``postgresql://`` URI; replaced on each run, see
``prepare_demo_ledger``; never the operator's ledger, hooks or configuration), under
the ``demo`` profile (keys ``agent:demo:…``): DMs, groups, a thread and a channel on
several platforms, an API client and the local CLI; tool calls and token usage; then
a simulated clock runs through idle expiries, a daily reset, an auto-reset when a
late message arrives and a manual ``/new``. An example hook, installed in a
temporary hooks directory that is removed afterwards, receives every
session:start/end. Finally it exports the log next to the ledger (for a database,
next to the default demo ledger). The same story on either backend.

The story is the same on every run: the simulated day is fixed (it starts at
``DEMO_START``) and session ids come from a seeded generator.
"""

from __future__ import annotations

import os
import random
import tempfile
import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from hermes_ledger.gateway.bootstrap import open_gateway
from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.config.paths import default_demo_ledger_path
from hermes_ledger.gateway.scheduler.runner import PassReport
from hermes_ledger.gateway.sessions.policy import ResetPolicy
from hermes_ledger.gateway.sessions.sources import Platform, SessionSource
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.backend import EventLog, is_dsn
from hermes_ledger.ledger.errors import LedgerTooOldError
from hermes_ledger.ledger.export import export
from hermes_ledger.ledger.schema import load_migrations

__all__ = [
    "DEMO_START",
    "DemoReport",
    "describe_target",
    "export_path_for",
    "prepare_demo_ledger",
    "run_demo",
]

PROFILE = "demo"
DEMO_START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
"""When the simulated day begins (a Monday, in the past, so nothing is dated later)."""
SEED = 20261102
CONFIG = GatewayConfig(
    profile=PROFILE,
    default_reset_policy=ResetPolicy(mode="idle", idle_minutes=60, timezone="UTC"),
    reset_by_platform={
        Platform.DISCORD: ResetPolicy(mode="daily", at_hour=4, timezone="UTC"),
        Platform.TELEGRAM: ResetPolicy(mode="both", idle_minutes=30, at_hour=4, timezone="UTC"),
    },
)

HOOK_YAML = """\
name: demo-audit
description: Appends every session start and end to a file (installed by hermes-ledger demo)
events: ["session:start", "session:end"]
"""
HOOK_HANDLER = """\
import json
from pathlib import Path

LOG = Path(__file__).with_name("calls.jsonl")


def handle(event_type, context):
    with LOG.open("a") as out:
        out.write(json.dumps({"event": event_type, **context}) + "\\n")
"""

SQL_NOT_DEMO = f"SELECT count(*) FROM events WHERE stream NOT LIKE 'agent:{PROFILE}:%'"
"""Whether a ledger holds anything but the demo's sessions (0: only the demo's), on
either backend: the one test before the demo replaces a ledger."""
SQL_SESSION_MAP = (
    "SELECT session_key, session_id, status FROM session_map"
    f" WHERE session_key LIKE 'agent:{PROFILE}:%' ORDER BY session_key"
)
AUDIT_QUERY = """\
SELECT end_reason, count(*) AS sessions, sum(message_count) AS messages
FROM session_history WHERE session_key LIKE 'agent:demo:%' AND ended_at IS NOT NULL
GROUP BY end_reason ORDER BY sessions DESC, end_reason"""


class _SimClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class DemoReport:
    ledger: str
    export_path: str
    events: int
    sessions_map: list[tuple[str, str, str]]
    audit_columns: list[str]
    audit_rows: list[tuple[Any, ...]]
    hook_calls: int
    closed: list[tuple[str, str]] = field(default_factory=list)


def _install_hook(root: Path) -> Path:
    hook = root / "demo-audit"
    hook.mkdir(parents=True, mode=0o700)
    (hook / "HOOK.yaml").write_text(HOOK_YAML)
    (hook / "handler.py").write_text(HOOK_HANDLER)
    for path in (root, hook, hook / "HOOK.yaml", hook / "handler.py"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    return hook


def _chat(store: SessionStore, source: SessionSource, turns: list[tuple[str, str]]) -> str:
    entry = store.get_or_create_session(source)
    for role, text in turns:
        store.append_to_transcript(entry.session_id, {"role": role, "content": text})
    store.update_session(entry.session_key, input_tokens=120 * len(turns), output_tokens=40)
    return entry.session_id


def _tool_turn(store: SessionStore, source: SessionSource, query: str, answer: str) -> None:
    entry = store.get_or_create_session(source)
    sid = entry.session_id
    call_id = f"call_{zlib.crc32(f'{sid}|{query}'.encode()) % 10_000:04d}"
    store.append_to_transcript(sid, {"role": "user", "content": query})
    calls = [
        {"id": call_id, "type": "function", "function": {"name": "web_search",
                                                          "arguments": f'{{"q": "{query}"}}'}}
    ]  # fmt: skip
    store.append_to_transcript(sid, {"role": "assistant", "content": None, "tool_calls": calls})
    store.append_to_transcript(
        sid, {"role": "tool", "content": answer, "tool_name": "web_search", "tool_call_id": call_id}
    )
    store.append_to_transcript(sid, {"role": "assistant", "content": answer})
    store.update_session(
        entry.session_key, input_tokens=900, output_tokens=150, cache_read_tokens=512,
        cost_usd=0.0042, model="demo-model",
    )  # fmt: skip


def _demo_session_ids(seed: int) -> Callable[[datetime], str]:
    rng = random.Random(seed)
    return lambda now: f"{now.astimezone(UTC):%Y%m%d_%H%M%S}_{rng.getrandbits(32):08x}"


def prepare_demo_ledger(target: Path | str) -> None:
    """Make room for a fresh demo ledger at ``target``, a file or a ``postgresql://``
    URI: remove a previous demo ledger there (a file with its WAL and shared-memory
    files; in a database, the ledger's schema: ``gateway.demo.postgres``). Anything
    else — a file that is not a ledger, or a ledger holding sessions that are not
    the demo's — is refused untouched, so the demo can never replace an operator's
    ledger."""
    if is_dsn(target):
        from hermes_ledger.gateway.demo.postgres import prepare_demo_database
        from hermes_ledger.ledger.postgres import describe_dsn

        assert isinstance(target, str)
        foreign = LedgerError(
            f"{describe_dsn(target)} is not a demo ledger: the demo replaces its ledger on"
            " each run",
            hint="give the demo a database of its own, e.g. createdb hermes_demo, then"
            " --db postgresql://HOST/hermes_demo",
        )
        prepare_demo_database(target, SQL_NOT_DEMO, foreign)
        return
    path = Path(target)
    if not path.exists():
        return
    foreign = LedgerError(
        f"{path} is not a demo ledger: the demo replaces its ledger on each run",
        hint="give the demo a file of its own with --db, e.g. --db ledger-demo.db",
    )
    try:
        try:
            led = Ledger.open(path, readonly=True)
        except LedgerTooOldError as old:  # a demo ledger an older hermes-ledger wrote
            led = Ledger.open(path, readonly=True, migrations=load_migrations()[: old.version])
        with led:
            others = led.query(SQL_NOT_DEMO)[0][0]
    except LedgerError:
        raise foreign from None
    if others:
        raise foreign
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if leftover.exists():
            os.unlink(leftover)


def describe_target(target: Path | str) -> str:
    """Where the demo writes, for people: the file, or ``host:port/dbname as user``
    of a URI (never its password)."""
    if not is_dsn(target):
        return str(target)
    from hermes_ledger.ledger.postgres import describe_dsn

    assert isinstance(target, str)
    return describe_dsn(target)


def export_path_for(target: Path | str) -> Path:
    """Where the demo exports its log: next to its ledger file
    (``NAME-export.jsonl``); for a database, next to the default demo ledger in
    ``$HERMES_HOME``."""
    path = default_demo_ledger_path() if is_dsn(target) else Path(target)
    return path.with_name(path.stem + "-export.jsonl")


def run_demo(target: Path | str, *, say: Callable[[str], None] = lambda _: None) -> DemoReport:
    """Run the demo workload into a fresh demo ledger at ``target``, a file or a
    ``postgresql://`` URI (see ``prepare_demo_ledger``); ``say`` narrates each step."""
    prepare_demo_ledger(target)
    clock = _SimClock(DEMO_START)
    closed: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="hermes-demo-hooks-") as scratch:
        hooks_dir = Path(scratch) / "hooks"
        hook = _install_hook(hooks_dir)
        return _simulate(target, hooks_dir, hook, clock, closed, say)


def _rows(log: EventLog, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one read of the demo's own (SQL valid on both backends), with
    PostgreSQL's numeric sums as the integers SQLite gives."""
    if isinstance(log, Ledger):
        return [tuple(row) for row in log.query(sql)]
    rows = cast(Any, log).connection.execute(sql.encode()).fetchall()
    return [tuple(int(v) if isinstance(v, Decimal) else v for v in row) for row in rows]


def _simulate(
    target: Path | str,
    hooks_dir: Path,
    hook: Path,
    clock: _SimClock,
    closed: list[tuple[str, str]],
    say: Callable[[str], None],
) -> DemoReport:
    """The simulated day, through the composition root with the demo's own policies
    and hooks (nothing is read from the operator's home)."""
    start = clock.now
    with open_gateway(
        target,
        config=CONFIG,
        settings=RunnerSettings(anchor_interval=0),  # a simulated day is not anchored
        hooks_dir=hooks_dir,
        clock=clock,
        session_ids=_demo_session_ids(SEED),
    ) as gateway:
        led, store, runner = gateway.ledger, gateway.store, gateway.runner

        def tick(label: str) -> PassReport:
            report = runner.once()
            closed.extend((c.session_key, c.reason) for c in report.tick.closed)
            say(f"{clock.now:%a %H:%M} {label}: closed {len(report.tick.closed)},"
                f" hook calls {report.delivered}")  # fmt: skip
            return report

        ada = SessionSource(platform="telegram", chat_id="1001", chat_type="dm",
                            user_id="1001", user_name="Ada")  # fmt: skip
        ops = SessionSource(platform="discord", chat_id="ops", chat_name="#ops", chat_type="group",
                            user_id="42", user_name="Grace")  # fmt: skip
        thread = SessionSource(platform="discord", chat_id="ops", chat_name="#ops",
                               chat_type="thread", thread_id="t-7", user_id="43")  # fmt: skip
        eng = SessionSource(platform="slack", chat_id="C01", chat_name="#eng",
                            chat_type="channel", user_id="U9", user_name="Linus")  # fmt: skip
        wa = SessionSource(platform="whatsapp", chat_id="+15550100", chat_type="dm",
                           user_name="Margaret")  # fmt: skip
        cli = SessionSource(platform="local", chat_type="dm", user_name="operator")

        say(f"{clock.now:%a %H:%M} morning traffic on six platforms")
        _chat(store, ada, [("user", "Hi! Can you remind me what we discussed?"),
                           ("assistant", "We planned the release notes.")])  # fmt: skip
        _tool_turn(store, ops, "status of the eu-west deploy", "All 12 nodes healthy.")
        _chat(store, thread, [("user", "rollback plan?"), ("assistant", "Blue/green, 5 min.")])
        _chat(store, eng, [("user", "standup summary please"), ("assistant", "3 PRs merged.")])
        _chat(store, wa, [("user", "Book a table for two at 8"), ("assistant", "Done: 20:00.")])
        _chat(store, cli, [("user", "summarise ~/notes.md"), ("assistant", "Five bullet points.")])
        api = store.open_api_session("agent:demo:api_server:dm:client-7")
        store.append_to_transcript(api.session_id, {"role": "user", "content": "ping"})
        tick("first tick")

        clock.advance(minutes=20)
        _tool_turn(store, eng, "open incidents", "None open.")
        say(f"{clock.now:%a %H:%M} /new in #eng (manual reset)")
        store.reset_session(store.config.session_key(eng), trigger="/new")
        _chat(store, eng, [("user", "fresh start: plan for Q1"), ("assistant", "Drafting.")])

        clock.advance(minutes=45)  # Ada's DM has been idle 65 min (policy: 30)
        say(f"{clock.now:%a %H:%M} a late message from Ada (auto-reset on the message path)")
        _chat(store, ada, [("user", "Back again!"), ("assistant", "Welcome back, fresh session.")])
        clock.advance(minutes=90)
        tick("idle sweep")  # WhatsApp, CLI, API and the thread idle > 60 min

        clock.now = (start + timedelta(days=1)).replace(hour=4, minute=5)
        tick("after the daily 04:00 reset")  # #ops (daily) and Ada (both)
        clock.advance(hours=3)
        _chat(store, ops, [("user", "morning all"), ("assistant", "Good morning, new day.")])
        tick("later that morning")
        export_path = export_path_for(target)
        manifest = export(target, export_path)
        sessions_map = [(row[0], row[1], row[2]) for row in _rows(led, SQL_SESSION_MAP)]
        audit = _rows(led, AUDIT_QUERY)
    calls_file = hook / "calls.jsonl"
    return DemoReport(
        ledger=describe_target(target),
        export_path=str(export_path),
        events=manifest.count,
        sessions_map=sessions_map,
        audit_columns=["end_reason", "sessions", "messages"],
        audit_rows=[tuple(r) for r in audit],
        hook_calls=len(calls_file.read_text().splitlines()) if calls_file.exists() else 0,
        closed=closed,
    )


def describe_query() -> str:
    return textwrap.dedent(AUDIT_QUERY)
