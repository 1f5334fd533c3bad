"""SessionSource and Platform: validation, description, dict round trips."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes_ledger.gateway.sessions.sources import (
    CHAT_TYPES,
    InvalidSourceError,
    Platform,
    SessionSource,
    parse_platform,
)
from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.events import SessionStarted, Source

BUILTINS = [
    "local",
    "telegram",
    "discord",
    "whatsapp",
    "slack",
    "signal",
    "mattermost",
    "matrix",
    "email",
    "sms",
    "homeassistant",
    "api_server",
    "webhook",
]


def test_builtin_platforms() -> None:
    assert [p.value for p in Platform] == BUILTINS
    assert Platform.TELEGRAM == "telegram"
    assert Platform("Telegram") is Platform.TELEGRAM
    assert Platform.API_SERVER.title_name == "Api_Server"
    assert all(p.is_builtin for p in Platform)


def test_plugin_platforms_are_accepted_and_stable() -> None:
    irc = Platform("irc")
    assert irc == "irc" and irc.value == "irc"
    assert Platform(" IRC ") is irc
    assert not irc.is_builtin
    assert irc not in list(Platform)  # plugins never join the built-in list
    source = SessionSource(platform="irc", chat_id="#hermes", chat_type="channel")
    assert source.platform is irc


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "platform must not be empty"),
        ("   ", "platform must not be empty"),
        (None, "platform must not be empty"),
        ("two words", "not a valid platform name"),
        ("9lives", "not a valid platform name"),
        ("tele:gram", "not a valid platform name"),
        (7, "must be a string"),
    ],
)
def test_bad_platform_names(value: object, message: str) -> None:
    with pytest.raises(InvalidSourceError, match=message):
        parse_platform(value)


def test_platform_given_as_enum_or_string() -> None:
    a = SessionSource(platform=Platform.SLACK, chat_id="C1", chat_type="channel")
    b = SessionSource(platform="slack", chat_id="C1", chat_type="channel")
    assert a == b and b.platform is Platform.SLACK


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"platform": ""}, r"platform: must not be empty"),
        ({"platform": "telegram", "chat_type": "forum"}, r"'forum' is not a chat type"),
        ({"platform": "telegram", "chat_id": "12\n3"}, r"chat_id: identifiers must not contain"),
        ({"platform": "telegram", "user_id": "\x1b[31m"}, r"user_id: identifiers must not"),
        ({"platform": "telegram", "thread_id": "t\x00"}, r"thread_id: identifiers must not"),
        ({"platform": "telegram", "profile": "a\u0085b"}, r"profile: identifiers must not"),
        ({"platform": "telegram", "user_name": "a\x00"}, r"user_name: must not contain NUL"),
        ({"platform": "telegram", "chat": "1"}, r"chat: Extra inputs are not permitted"),
    ],
)
def test_invalid_sources_get_a_clear_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSourceError, match=message) as info:
        SessionSource(**fields)
    assert str(info.value).startswith("invalid session source: ")
    assert isinstance(info.value, LedgerError) and isinstance(info.value, ValueError)
    assert info.value.hint


def test_every_problem_is_listed() -> None:
    with pytest.raises(InvalidSourceError) as info:
        SessionSource(platform="", chat_type="forum", user_id="\x07")
    text = str(info.value)
    assert "platform" in text and "chat_type" in text and "user_id" in text


def test_ids_are_strings_and_empty_means_absent() -> None:
    source = SessionSource(platform="telegram", chat_id=-100123, user_id=42, thread_id="")
    assert source.chat_id == "-100123" and source.user_id == "42"
    assert source.thread_id is None
    assert SessionSource(platform="telegram", chat_type="GROUP", chat_id="1").chat_type == "group"
    assert SessionSource(platform="telegram", chat_type=None).chat_type == "dm"
    # Display text may be multi-line (channel topics are).
    assert SessionSource(platform="discord", chat_topic="line 1\nline 2").chat_topic


@pytest.mark.parametrize("chat_type", ["group", "channel", "thread"])
def test_chat_id_is_optional_for_every_chat_type(chat_type: str) -> None:
    # Hermes builds a key for such a source, so a home or a live gateway can hand us one.
    source = SessionSource(platform="discord", chat_type=chat_type, thread_id="7", user_id="42")
    assert source.chat_id is None
    assert SessionSource.from_dict(source.to_dict()) == source
    assert SessionSource.from_event_source(source.to_event_source()) == source
    assert SessionSource.from_dict({"platform": "slack", "chat_type": chat_type, "chat_id": ""})


def test_sources_are_frozen() -> None:
    source = SessionSource(platform="telegram", chat_id="1")
    with pytest.raises(Exception, match="frozen"):
        source.chat_id = "2"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "description"),
    [
        ({"platform": "local", "chat_id": "cli"}, "CLI terminal"),
        ({"platform": "telegram", "chat_id": "1", "user_name": "ada"}, "DM with ada"),
        ({"platform": "telegram", "chat_id": "1", "user_id": "42"}, "DM with 42"),
        ({"platform": "telegram", "chat_id": "1"}, "DM with user"),
        (
            {"platform": "discord", "chat_id": "9", "chat_type": "group", "chat_name": "Dev"},
            "group: Dev",
        ),
        ({"platform": "discord", "chat_id": "9", "chat_type": "group"}, "group: 9"),
        (
            {"platform": "telegram", "chat_id": "5", "chat_type": "channel", "chat_name": "News"},
            "channel: News",
        ),
        (
            {"platform": "discord", "chat_id": "9", "chat_type": "thread", "chat_name": "Q&A"},
            "Q&A",
        ),
        (
            {
                "platform": "discord",
                "chat_id": "9",
                "chat_type": "group",
                "chat_name": "General",
                "thread_id": "thread-42",
            },
            "group: General, thread: thread-42",
        ),
        (
            {"platform": "telegram", "chat_id": "1", "user_name": "ada", "thread_id": "7"},
            "DM with ada, thread: 7",
        ),
    ],
)
def test_description(fields: dict[str, Any], description: str) -> None:
    assert SessionSource(**fields).description == description


def test_local_cli() -> None:
    cli = SessionSource.local_cli()
    assert (cli.platform, cli.chat_id, cli.chat_type) == (Platform.LOCAL, "cli", "dm")
    assert cli.description == "CLI terminal"


def test_to_dict_uses_the_hermes_layout() -> None:
    minimal = SessionSource(platform="telegram", chat_id="99")
    assert list(minimal.to_dict()) == [
        "platform",
        "chat_id",
        "chat_name",
        "chat_type",
        "user_id",
        "user_name",
        "thread_id",
        "chat_topic",
    ]
    full = SessionSource(
        platform="signal",
        chat_id="group:abc",
        chat_type="group",
        user_id="+15550100",
        user_id_alt="uuid:1234",
        chat_id_alt="abc",
        profile="work",
    )
    assert full.to_dict() == {
        "platform": "signal",
        "chat_id": "group:abc",
        "chat_name": None,
        "chat_type": "group",
        "user_id": "+15550100",
        "user_name": None,
        "thread_id": None,
        "chat_topic": None,
        "user_id_alt": "uuid:1234",
        "chat_id_alt": "abc",
        "profile": "work",
    }


def test_from_dict_reads_hermes_origins() -> None:
    origin = {
        "platform": "discord",
        "chat_id": 789,
        "chat_name": "Server / #general",
        "chat_type": "group",
        "user_id": "42",
        "user_name": "bob",
        "thread_id": None,
        "chat_topic": None,
        "scope_id": "guild-1",  # Hermes-only keys are ignored
        "guild_id": "guild-1",
        "is_bot": False,
    }
    source = SessionSource.from_dict(origin)
    assert source.platform is Platform.DISCORD and source.chat_id == "789"
    assert SessionSource.from_dict({"platform": "telegram", "chat_id": "1"}).chat_type == "dm"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"chat_id": "1"}, "platform is missing"),
        (["telegram"], "must be a mapping"),
        ({"platform": "telegram", "chat_type": "forum"}, "not a chat type"),
    ],
)
def test_from_dict_errors(data: Any, message: str) -> None:
    with pytest.raises(InvalidSourceError, match=message):
        SessionSource.from_dict(data)


def test_event_source_round_trip() -> None:
    source = SessionSource(
        platform="telegram", chat_id="-1001", chat_type="group", user_id="7", thread_id="3"
    )
    stored = source.to_event_source()
    assert isinstance(stored, Source)
    event = SessionStarted(session_id="s1", source=stored)
    assert SessionSource.from_event_source(event.source) == source


_ids = st.one_of(st.none(), st.text(st.characters(codec="utf-8", exclude_categories=["Cc"])))
_texts = st.one_of(st.none(), st.text(st.characters(codec="utf-8", exclude_characters="\x00")))


@st.composite
def sources(draw: st.DrawFn) -> SessionSource:
    chat_type = draw(st.sampled_from(CHAT_TYPES))
    chat_id = draw(_ids)
    if chat_type != "dm" and not chat_id:
        chat_id = "c"
    return SessionSource(
        platform=draw(st.sampled_from([*BUILTINS, "irc", "x-chat"])),
        chat_type=chat_type,
        chat_id=chat_id,
        chat_name=draw(_texts),
        user_id=draw(_ids),
        user_name=draw(_texts),
        thread_id=draw(_ids),
        chat_topic=draw(_texts),
        user_id_alt=draw(_ids),
        chat_id_alt=draw(_ids),
        profile=draw(_ids),
    )


@given(sources())
def test_dict_and_event_round_trips(source: SessionSource) -> None:
    assert SessionSource.from_dict(source.to_dict()) == source
    assert SessionSource.from_event_source(source.to_event_source()) == source
    assert isinstance(source.description, str)
