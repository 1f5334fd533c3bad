"""Bad input through the public interfaces is refused clearly (issue 11, items 9 and 10).

The Python API raises a LedgerError (never a raw ValueError, pydantic error,
RecursionError or OverflowError) and stores nothing; the command line's options
that take seconds refuse what is not a finite number in range, as a usage error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import Result
from helpers import ManualClock

from hermes_ledger.gateway import GatewayConfig, SessionSource
from hermes_ledger.gateway.cli.log import events_cmd
from hermes_ledger.gateway.cli.options import Seconds
from hermes_ledger.gateway.cli.run import run_cmd
from hermes_ledger.gateway.sessions.keys import validate_session_id
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.errors import EventValidationError, ExpectedVersionError
from hermes_ledger.ledger.events import (
    EVENT_TYPES,
    MAX_JSON_DEPTH,
    MessageAppended,
    SessionStarted,
    UsageRecorded,
)
from hermes_ledger.projections import attach

# --- the command line: seconds --------------------------------------------------


def _option(command: click.Command, name: str) -> click.Parameter:
    return next(p for p in command.params if name in p.opts)


SECONDS_OPTIONS = [
    (run_cmd, "--interval"),
    (events_cmd, "--poll-interval"),
    (events_cmd, "--follow-timeout"),
]


@pytest.mark.parametrize(("command", "name"), SECONDS_OPTIONS)
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1", "1e6"])
def test_seconds_options_refuse_what_is_not_a_sane_finite_number(
    command: click.Command, name: str, text: str
) -> None:
    option = _option(command, name)
    assert isinstance(option.type, Seconds)
    with pytest.raises(click.BadParameter):
        option.type.convert(text, option, None)


@pytest.mark.parametrize(("command", "name"), SECONDS_OPTIONS)
def test_seconds_options_take_finite_numbers_in_range(command: click.Command, name: str) -> None:
    option = _option(command, name)
    for text, seconds in [("0.01", 0.01), ("30", 30.0), ("86400", 86400.0), (" 1.5 ", 1.5)]:
        assert option.type.convert(text, option, None) == seconds
    assert option.type.convert(2.5, option, None) == 2.5


def test_follow_timeout_may_be_zero_and_intervals_may_not() -> None:
    assert _option(events_cmd, "--follow-timeout").type.convert("0", None, None) == 0.0
    for command, name in SECONDS_OPTIONS[:2]:
        with pytest.raises(click.BadParameter, match=r"between 0\.01 and 86400"):
            _option(command, name).type.convert("0", None, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--interval", "nan"], "'nan' is not a finite number of seconds"),
        (["run", "--interval", "inf"], "'inf' is not a finite number of seconds"),
        (["run", "--interval", "0"], "0 is not between 0.01 and 86400 seconds"),
        (["run", "--interval", "86401"], "86401 is not between 0.01 and 86400 seconds"),
        (["run", "--interval", "soon"], "'soon' is not a number of seconds"),
        (["events", "--follow", "--poll-interval", "nan"], "'nan' is not a finite number"),
        (["events", "--follow", "--follow-timeout", "inf"], "'inf' is not a finite number"),
        (["events", "--follow", "--follow-timeout", "-1"], "-1 is not between 0 and 86400"),
    ],
)
def test_bad_seconds_are_usage_errors(
    cli: Callable[..., Result], tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli(*args, "--db", str(tmp_path / "ledger.db"))
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output and message in result.output
    assert not (tmp_path / "ledger.db").exists()


# --- the Python API -------------------------------------------------------------

KEY = "agent:main:telegram:dm:1"
SID = "20261122_090000_1a2b3c4d"
WHEN = "2026-11-22T09:00:00Z"


def _nested(depth: int) -> list[Any]:
    top: list[Any] = []
    inner = top
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return top


def _message(**fields: Any) -> dict[str, Any]:
    return {"type": "message_appended", "session_id": SID, "role": "user", "content": "hi"} | fields


def _expired(policy: Any) -> dict[str, Any]:
    return {
        "type": "session_expired", "session_id": SID, "reason": "idle",
        "deadline": WHEN, "evaluated_at": WHEN, "policy": policy,
    }  # fmt: skip


def _started(**source: Any) -> dict[str, Any]:
    return {"type": "session_started", "session_id": SID, "source": {"platform": "x"} | source}


def _usage(**fields: Any) -> dict[str, Any]:
    return {"type": "usage_recorded", "session_id": SID} | fields


NAN, INF = float("nan"), float("inf")
DEEP = _nested(100_000)  # RecursionError in json.dumps, before

# (case, event body, what the error says). Each is refused as a dict (Ledger.append
# parses it) and as a model (made by its constructor).
BAD_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("surrogate content", _message(content="a\ud800b"), "content holds a lone surrogate"),
    ("surrogate tool call", _message(tool_calls=[{"id": "\udc80"}]), "lone surrogate"),
    ("surrogate tool call key", _message(tool_calls=[{"\udc80": 1}]), "key with a lone surrogate"),
    ("surrogate session id", _message(session_id="s\ud800"), "session_id: .*unicode string"),
    ("surrogate source", _started(chat_name="\udfff"), "source.chat_name holds a lone surrogate"),
    ("surrogate source extra", _started(extra="\udfff"), "source.extra holds a lone surrogate"),
    ("deep tool calls", _message(tool_calls=[{"a": DEEP}]), f"deeper than {MAX_JSON_DEPTH}"),
    ("deep policy", _expired({"a": DEEP}), f"deeper than {MAX_JSON_DEPTH}"),
    ("deep source extra", _started(extra=DEEP), f"deeper than {MAX_JSON_DEPTH}"),
    ("just too deep", _expired({"a": _nested(MAX_JSON_DEPTH)}), "deeper than"),
    ("nan cost", _usage(cost_usd=NAN), "cost_usd: Input should be a finite number"),
    ("inf cost", _usage(cost_usd=INF), "cost_usd: Input should be a finite number"),
    ("huge cost", _usage(cost_usd=1e300), "cost_usd: Input should be less than"),
    ("nan in tool call", _message(tool_calls=[{"x": NAN}]), "is nan; JSON numbers must be finite"),
    ("inf in policy", _expired({"x": [-INF]}), "is -inf; JSON numbers must be finite"),
    ("nan in source extra", _started(extra=NAN), "source.extra is nan"),
    ("negative tokens", _usage(input_tokens=-5), r"input_tokens: .* to 0 \(got -5\)"),
    ("tokens beyond int64", _usage(output_tokens=2**63), "output_tokens: .*less than or equal"),
    ("zero attempt", {"type": "memory_flushed", "session_id": SID, "provider": "p", "attempt": 0},
     "attempt"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"), [row[1:] for row in BAD_EVENTS], ids=[row[0] for row in BAD_EVENTS]
)
def test_bad_events_are_refused_by_append(led: Ledger, body: dict[str, Any], message: str) -> None:
    with pytest.raises(EventValidationError, match=message):
        led.append(KEY, [body])
    assert led.head() == 0


@pytest.mark.parametrize(
    ("body", "message"), [row[1:] for row in BAD_EVENTS], ids=[row[0] for row in BAD_EVENTS]
)
def test_bad_events_are_refused_by_their_model(body: dict[str, Any], message: str) -> None:
    fields = dict(body)
    model = EVENT_TYPES[fields.pop("type")]
    with pytest.raises(EventValidationError, match=message) as info:
        model(**fields)
    assert str(info.value).startswith(f"invalid {body['type']} event: ")
    assert "pydantic" not in str(info.value)


def test_json_at_the_depth_limit_and_finite_numbers_are_stored(led: Ledger) -> None:
    policy = {"a": _nested(MAX_JSON_DEPTH - 1), "idle_minutes": 1.5, "big": 10**30}
    led.append(KEY, [_expired(policy)])
    stored = next(led.read_all())
    assert json.loads(stored.data_json)["policy"] == policy
    assert stored.event.policy == policy  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"actor": "\ud800"}, "meta.actor holds a lone surrogate"),
        ({"\ud800": 1}, "key with a lone surrogate"),
        ({"trace": DEEP}, f"deeper than {MAX_JSON_DEPTH}"),
        ({"score": NAN}, "meta.score is nan"),
        ({"score": [INF]}, r"meta.score\[0\] is inf"),
        ({"when": object()}, "not JSON serializable"),
    ],
)
def test_bad_meta_is_refused(led: Ledger, meta: dict[str, Any], message: str) -> None:
    with pytest.raises(EventValidationError, match=message):
        led.append(KEY, [_usage()], meta=meta)
    assert led.head() == 0


def test_nothing_non_finite_is_stored_as_null(led: Ledger) -> None:
    # Before: cost_usd=inf and a NaN inside tool_calls were written as null.
    for body in (_usage(cost_usd=INF), _message(tool_calls=[{"x": NAN}])):
        with pytest.raises(EventValidationError):
            led.append(KEY, [body])
    assert led.head() == 0


@pytest.mark.parametrize("expected", [-1, -100, 1.0, "1", None, True])
def test_bad_expected_versions_are_ledger_errors(led: Ledger, expected: object) -> None:
    with pytest.raises(ExpectedVersionError, match="expected_version must be") as info:
        led.append(KEY, [_usage()], expected_version=expected)  # type: ignore[arg-type]
    assert isinstance(info.value, LedgerError) and isinstance(info.value, TypeError)
    assert info.value.hint
    assert led.head() == 0


def _mutations() -> list[tuple[str, Any, str]]:
    def set_behind(model: Any, name: str, value: Any) -> Any:
        object.__setattr__(model, name, value)
        return model

    usage = UsageRecorded(session_id=SID)
    msg = MessageAppended(session_id=SID, role="user", content="hi", tool_calls=[{"a": 1}])
    msg.tool_calls[0]["a"] = NAN  # type: ignore[index]
    msg2 = MessageAppended(session_id=SID, role="user", content="hi", tool_calls=[{"a": 1}])
    msg2.tool_calls[0]["a"] = "\udc80"  # type: ignore[index]
    started = SessionStarted(session_id=SID, source={"platform": "telegram"})  # type: ignore[arg-type]
    object.__setattr__(started.source, "platform", "")
    return [
        ("negative tokens", set_behind(UsageRecorded(session_id=SID), "input_tokens", -5),
         "input_tokens: .*greater than or equal to 0"),
        ("nan cost", set_behind(usage, "cost_usd", NAN), "cost_usd: Input should be a finite"),
        ("wrong type", set_behind(MessageAppended(session_id=SID, role="user", content="x"),
                                  "content", 5), "content: Input should be a valid string"),
        ("bad role", set_behind(MessageAppended(session_id=SID, role="user", content="x"),
                                "role", "bogus"), "role: Input should be"),
        ("model_copy", UsageRecorded(session_id=SID).model_copy(update={"cache_read_tokens": -1}),
         "cache_read_tokens"),
        ("model_construct", MessageAppended.model_construct(session_id=SID, role="x", content="x"),
         "role"),
        ("in place nan", msg, "tool_calls.*is nan"),
        ("in place surrogate", msg2, "cannot be stored as JSON"),
        ("nested source", started, "source.platform"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("event", "message"), [m[1:] for m in _mutations()], ids=[m[0] for m in _mutations()]
)
def test_a_frozen_model_changed_behind_its_back_is_refused(
    led: Ledger, event: Any, message: str
) -> None:
    with pytest.raises(EventValidationError, match=message):
        led.append(KEY, [UsageRecorded(session_id=SID), event])
    assert led.head() == 0


def test_setting_a_field_is_a_ledger_error() -> None:
    usage = UsageRecorded(session_id=SID)
    with pytest.raises(EventValidationError, match="usage_recorded events are frozen"):
        usage.input_tokens = 5  # type: ignore[misc]
    with pytest.raises(EventValidationError, match="frozen"):
        del usage.model
    assert usage.input_tokens == 0


def test_unchanged_and_read_back_models_append(led: Ledger) -> None:
    first = SessionStarted(session_id=SID, source={"platform": "telegram", "x": [1]})  # type: ignore[arg-type]
    usage = UsageRecorded(session_id=SID, cost_usd=0.25)
    led.append(KEY, [first, usage, usage.model_copy(update={"event_id": "copy-1"})])
    events = [rec.event for rec in led.read_all()]
    assert events[0] == first and events[1] == usage
    with Ledger.open(led.path.with_name("other.db")) as other:
        assert other.append(KEY, events).positions == (1, 2, 3)


LINE_BREAKS = ["\x85", "\u2028", "\u2029", "\n", "\r", "\x1c"]


@pytest.mark.parametrize("char", LINE_BREAKS)
def test_ids_with_line_breaks_are_refused(led: Ledger, char: str) -> None:
    for stream, body in [
        (f"agent:{char}", _usage()),
        (KEY, _usage(session_id=f"s{char}")),
        (KEY, _usage(event_id=f"e{char}")),
    ]:
        with pytest.raises(EventValidationError, match="control characters, line breaks"):
            led.append(stream, [body])
    with pytest.raises(LedgerError, match="identifiers must not contain control characters"):
        SessionSource(platform="telegram", chat_id=f"1{char}2")
    with pytest.raises(LedgerError, match="control characters"):
        validate_session_id(f"s{char}")
    assert led.head() == 0


def test_update_session_refuses_negative_tokens(led: Ledger, clock: ManualClock) -> None:
    attach(led)
    store = SessionStore(led, GatewayConfig(), clock)
    entry = store.get_or_create_session(SessionSource(platform="telegram", chat_id="1"))
    head = led.head()
    for bad, message in [
        ({"input_tokens": -5}, r"input_tokens: .* \(got -5\)"),
        ({"cost_usd": NAN}, "cost_usd: Input should be a finite number"),
        ({"output_tokens": "many"}, "output_tokens"),
    ]:
        with pytest.raises(EventValidationError, match=message):
            store.update_session(entry.session_key, **bad)
    assert led.head() == head
    assert store.update_session(entry.session_key, input_tokens=5).input_tokens == 5
    assert store.update_session(entry.session_key, cost_usd=0.5).estimated_cost_usd == 0.5
