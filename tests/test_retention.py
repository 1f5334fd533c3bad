"""Retention: the ``ledger.retention`` config (precedence, errors), ``hermes-ledger
prune`` (a dry run writes nothing; --yes forgets only the matching old content, and
usage reports do not change), and the runner applying the policy once per interval,
recording and logging each application. The prune and runner tests take ``backend``:
they run on a SQLite file and on PostgreSQL (``--db postgresql://…``)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from backends import Backend
from click.testing import Result
from helpers import ManualClock

from hermes_ledger.gateway import GatewayConfig, SessionSource
from hermes_ledger.gateway.config.files import ConfigError
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.hooks import HookRegistry
from hermes_ledger.gateway.scheduler.runner import Runner
from hermes_ledger.gateway.sessions.retention import RetentionPolicy
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import open_log
from hermes_ledger.ledger.events import MessageAppended

SOURCES = [
    SessionSource(platform=p, chat_id=f"{p}-{t}", chat_type=t, user_id="u1", user_name="ada")
    for p in ("telegram", "discord")
    for t in ("group", "dm")
]


def build(db: Path | str, clock: ManualClock) -> None:
    """At the clock's start: a session on each of telegram/discord x group/dm (a
    message, usage), all ended an hour later; 90 days on, one more telegram DM
    session ends."""
    with open_log(db, clock=clock) as led:
        store = SessionStore(led, GatewayConfig(), clock)  # type: ignore[arg-type]
        keys = []
        for source in SOURCES:
            entry = store.get_or_create_session(source)
            text = f"old {source.platform} {source.chat_type}"
            store.append_to_transcript(entry.session_id, {"role": "user", "content": text})
            store.update_session(entry.session_key, input_tokens=10, output_tokens=5, cost_usd=0.01)
            keys.append(entry.session_key)
        clock.advance(hours=1)
        for key in keys:
            store.reset_session(key)
        clock.advance(days=90)
        dm = keys[1]
        entry = store.get_session(dm)
        assert entry is not None
        store.append_to_transcript(entry.session_id, {"role": "user", "content": "recent dm"})
        store.update_session(dm, input_tokens=7, output_tokens=3, cost_usd=0.02)
        store.reset_session(dm)


def contents(db: Path | str) -> dict[str, list[str]]:
    """The message texts per session key, as the ledger reads them."""
    out: dict[str, list[str]] = {}
    with open_log(db) as led:
        for rec in led.read_all():
            if isinstance(rec.event, MessageAppended):
                platform, chat_type = rec.stream.split(":")[2:4]
                out.setdefault(f"{platform}:{chat_type}", []).append(rec.event.content or "")
    return out


def digest(target: Path | str) -> str:
    """What a write would change: the SQLite file's bytes; on PostgreSQL the log's
    rows and their payloads (the content an erasure deletes)."""
    if isinstance(target, Path) or not target.startswith("postgresql://"):
        return hashlib.sha256(Path(target).read_bytes()).hexdigest()
    with open_log(target) as log:
        head = log.head_row()
        payloads = log.connection.execute("SELECT count(*) FROM payloads").fetchone()  # type: ignore[attr-defined]
    return f"{head} {payloads}"


# -- config ----------------------------------------------------------------------


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(text)
    return home


def test_retention_config_and_precedence(tmp_path: Path) -> None:
    home = write_config(
        tmp_path,
        "ledger:\n  retention:\n    default: {content_days: 365}\n"
        "    platforms: {Telegram: {content_days: 30}}\n"
        "    chat_types: {group: {content_days: 7}}\n    interval: 7200\n",
    )
    policy = RunnerSettings.load(home).retention
    assert policy.enabled and policy.interval == 7200
    days = {
        (p, t): policy.rule_for(p, t).content_days
        for p in ("telegram", "discord")
        for t in ("group", "dm")
    }
    # the platform wins, then the chat type, then the default
    assert days == {
        ("telegram", "group"): 30,
        ("telegram", "dm"): 30,
        ("discord", "group"): 7,
        ("discord", "dm"): 365,
    }
    assert not RunnerSettings().retention.enabled  # no block: content kept for ever
    assert RunnerSettings().retention.interval == 3600


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("default: {content_days: 0}", "ledger.retention.default.content_days: Input should be"),
        ("default: {content_days: true}", "ledger.retention.default.content_days: must be a whole"),
        ("default: {days: 3}", "ledger.retention.default.days: Extra inputs are not permitted"),
        ("chat_types: {room: {content_days: 3}}", "ledger.retention.chat_types.room: Input"),
        ("platforms: {'no way': {content_days: 3}}", "'no way' is not a valid platform name"),
        ("interval: 5", "ledger.retention.interval: Input should be greater than or equal to 60"),
        ("bogus: 1", "ledger.retention.bogus: Extra inputs are not permitted"),
    ],
)
def test_bad_retention_config_is_a_config_error_naming_the_key(
    tmp_path: Path, block: str, message: str
) -> None:
    home = write_config(tmp_path, f"ledger:\n  retention:\n    {block}\n")
    with pytest.raises(ConfigError) as info:
        RunnerSettings.load(home)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{home / 'config.yaml'}: ledger.retention")


# -- prune -----------------------------------------------------------------------


@pytest.fixture
def old_db(backend: Backend) -> str:
    """``build`` ending 10 days ago: its old sessions ended ~100 days ago (a SQLite
    file or a PostgreSQL URI)."""
    build(backend.target, ManualClock(datetime.now(UTC) - timedelta(days=100, hours=1)))
    return backend.target


def test_prune_dry_run_writes_nothing(old_db: str, cli: Callable[..., Result]) -> None:
    before = digest(old_db)
    result = cli("prune", "--db", old_db, "--older-than", "90d", "--platform", "telegram")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(
        "Would forget the content of 4 sessions (2 messages, 6 events with content):"
        " content from before "
    )
    assert lines[0].endswith(", platform telegram:")
    assert lines[-1] == "Nothing was changed; run again with --yes to forget it."
    assert len(lines) == 6  # the header, four sessions, the footer
    result = cli("prune", "--db", old_db, "--older-than", "90d", "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["dry_run"] is True and report["position"] is None
    assert (
        report["messages"] == 4 and len(report["sessions"]) == 8
    )  # the old four, the starts after
    assert digest(old_db) == before
    assert contents(old_db)["telegram:dm"] == ["old telegram dm", "recent dm"]


def test_prune_yes_forgets_only_old_content_of_the_matching_sessions(
    old_db: str, cli: Callable[..., Result]
) -> None:
    usage = cli("report", "usage-by-platform-day", "--db", old_db, "--json")
    assert usage.exit_code == 0, usage.output
    args = ("prune", "--db", old_db, "--older-than", "90d", "--platform", "telegram")
    result = cli(*args, "--chat-type", "dm", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "Forgot the content of 2 sessions (1 message, 3 events with content): content from before"
    )
    assert "Recorded as event 35 (subject_erased, requested by hermes-ledger prune)" in (
        result.output
    )
    assert contents(old_db) == {
        "telegram:group": ["old telegram group"],
        "telegram:dm": ["[erased]", "recent dm"],  # the recent session stays
        "discord:group": ["old discord group"],
        "discord:dm": ["old discord dm"],
    }
    result = cli(*args, "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["messages"] == 2  # the dm's again (already gone) + group
    assert contents(old_db)["telegram:group"] == ["[erased]"]
    assert contents(old_db)["discord:group"] == ["old discord group"]
    # metadata and usage stay: the same figures
    after = cli("report", "usage-by-platform-day", "--db", old_db, "--json")
    assert after.output == usage.output
    verified = cli("verify", "--db", old_db)
    assert "hash chain: ok" in verified.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "soon"], "Error: cannot read 'soon' as a time"),
        (["--older-than", "9d", "--platform", "no way"], "'no way' is not a valid platform"),
        (["--older-than", "9d", "--chat-type", "room"], "'room' is not one of"),
        ([], "Missing option '--older-than'"),
    ],
)
def test_prune_refuses_bad_input_and_writes_nothing(
    old_db: str, cli: Callable[..., Result], args: list[str], message: str
) -> None:
    before = digest(old_db)
    result = cli("prune", "--db", old_db, *args, "--yes")
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert digest(old_db) == before


# -- the runner ------------------------------------------------------------------


def test_the_runner_applies_retention_once_per_interval_and_records_each(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(datetime(2026, 1, 1, 9, tzinfo=UTC))
    db = backend.target
    build(db, clock)  # the clock is now 90 days and an hour on
    policy = RetentionPolicy.model_validate(
        {
            "default": {"content_days": 365},
            "platforms": {"telegram": {"content_days": 30}},
            "chat_types": {"group": {"content_days": 7}},
            "interval": 10 * 86_400,
        }
    )
    settings = RunnerSettings(retention=policy)
    with open_log(db, clock=clock) as led:
        runner = Runner(led, GatewayConfig(), settings, HookRegistry([]), clock=clock)
        caplog.set_level(logging.INFO, logger="hermes_ledger")
        report = runner.once()
        applied = [(r["scope"]["platform"], r["scope"]["chat_type"]) for r in report.retained]
        assert applied == [("discord", "group"), ("telegram", "dm"), ("telegram", "group")]
        lines = [r for r in caplog.records if getattr(r, "event", None) == "retention_applied"]
        assert [(r.platform, r.chat_type, r.sessions) for r in lines] == [  # type: ignore[attr-defined]
            ("discord", "group", 2),  # the old session, and the start of the one after it
            ("telegram", "dm", 2),
            ("telegram", "group", 2),
        ]
        erasures = [r for r in led.read_all() if r.type == "subject_erased"]
        assert [(r.data["scope"], r.data["platform"], r.data["chat_type"]) for r in erasures] == [
            ("retention", "discord", "group"),
            ("retention", "telegram", "dm"),
            ("retention", "telegram", "group"),
        ]
        assert [r.data["requested_by"] for r in erasures] == ["ledger.retention"] * 3

        # A discord group session that ends now is 7 days old in 8 days, but the
        # next application is due only 10 days after this one.
        store = SessionStore(led, GatewayConfig(), clock)  # type: ignore[arg-type]
        group = SOURCES[2]
        entry = store.get_session(GatewayConfig().session_key(group))
        assert entry is not None
        store.append_to_transcript(entry.session_id, {"role": "user", "content": "new group"})
        store.reset_session(entry.session_key)
        clock.advance(days=8)
        assert runner.once().retained == []
        assert contents(db)["discord:group"] == ["[erased]", "new group"]
        clock.advance(days=2)
        again = runner.once()
        assert [(r["scope"]["platform"], r["scope"]["chat_type"]) for r in again.retained] == [
            ("discord", "group")
        ]
        assert contents(db)["discord:group"] == ["[erased]", "[erased]"]
        assert contents(db)["discord:dm"] == ["old discord dm"]  # 365 days
        assert contents(db)["telegram:dm"] == ["[erased]", "recent dm"]  # ended 10 days ago
        assert sum(1 for r in led.read_all() if r.type == "subject_erased") == 4
        clock.advance(days=10)
        assert runner.once().retained == []  # due, but nothing left: no event
        assert sum(1 for r in led.read_all() if r.type == "subject_erased") == 4
