"""Session keys: Hermes-identical layout, escaping, collision freedom; session ids."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hermes_ledger.gateway.sessions.keys import (
    InvalidSessionIdError,
    build_session_key,
    escape_component,
    is_shared_multi_user_session,
    session_namespace,
    unescape_component,
    validate_session_id,
    validate_session_key,
)
from hermes_ledger.gateway.sessions.sources import CHAT_TYPES, SessionSource

TG_GROUP = {"platform": "telegram", "chat_type": "group", "chat_id": "-1002285219667"}

# (case, source fields, build_session_key options, expected key). Every expected
# key is the one the Hermes gateway builds for the same source.
KEY_TABLE: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("dm", {"platform": "telegram", "chat_id": "99"}, {}, "agent:main:telegram:dm:99"),
    (
        "dm never adds the sender",
        {"platform": "telegram", "chat_id": "99", "user_id": "42"},
        {},
        "agent:main:telegram:dm:99",
    ),
    (
        "dm with thread",
        {"platform": "telegram", "chat_id": "99", "thread_id": "topic-1", "user_id": "42"},
        {},
        "agent:main:telegram:dm:99:topic-1",
    ),
    (
        "dm without chat_id: user_id_alt first",
        {"platform": "signal", "user_id": "+15550100", "user_id_alt": "uuid-7"},
        {},
        "agent:main:signal:dm:uuid-7",
    ),
    (
        "dm without chat_id: user_id",
        {"platform": "telegram", "chat_id": "", "user_id": "jordan"},
        {},
        "agent:main:telegram:dm:jordan",
    ),
    (
        "dm without chat_id: user, then thread",
        {"platform": "telegram", "user_id": "jordan", "thread_id": "7"},
        {},
        "agent:main:telegram:dm:jordan:7",
    ),
    (
        "dm without chat_id or user: thread",
        {"platform": "telegram", "thread_id": "7"},
        {},
        "agent:main:telegram:dm:7",
    ),
    ("dm with nothing: bare", {"platform": "telegram"}, {}, "agent:main:telegram:dm"),
    (
        "group per user (default)",
        {"platform": "discord", "chat_type": "group", "chat_id": "guild-123", "user_id": "alice"},
        {},
        "agent:main:discord:group:guild-123:alice",
    ),
    (
        "group, user_id_alt preferred to user_id",
        {
            "platform": "signal",
            "chat_type": "group",
            "chat_id": "grp",
            "user_id": "+15550100",
            "user_id_alt": "uuid-7",
        },
        {},
        "agent:main:signal:group:grp:uuid-7",
    ),
    (
        "group with per-user off",
        {"platform": "discord", "chat_type": "group", "chat_id": "guild-123", "user_id": "alice"},
        {"group_sessions_per_user": False},
        "agent:main:discord:group:guild-123",
    ),
    (
        "group without a user",
        {"platform": "discord", "chat_type": "group", "chat_id": "guild-123"},
        {},
        "agent:main:discord:group:guild-123",
    ),
    (
        "channel",
        {"platform": "slack", "chat_type": "channel", "chat_id": "C01", "user_id": "U9"},
        {},
        "agent:main:slack:channel:C01:U9",
    ),
    (
        "channel shared",
        {"platform": "slack", "chat_type": "channel", "chat_id": "C01", "user_id": "U9"},
        {"group_sessions_per_user": False},
        "agent:main:slack:channel:C01",
    ),
    (
        "group thread is shared by default",
        {**TG_GROUP, "thread_id": "17585", "user_id": "alice"},
        {},
        "agent:main:telegram:group:-1002285219667:17585",
    ),
    (
        "thread with thread_sessions_per_user",
        {**TG_GROUP, "thread_id": "17585", "user_id": "42"},
        {"thread_sessions_per_user": True},
        "agent:main:telegram:group:-1002285219667:17585:42",
    ),
    (
        "thread per user needs group per user too",
        {**TG_GROUP, "thread_id": "17585", "user_id": "42"},
        {"thread_sessions_per_user": True, "group_sessions_per_user": False},
        "agent:main:telegram:group:-1002285219667:17585",
    ),
    (
        "chat_type thread",
        {
            "platform": "discord",
            "chat_type": "thread",
            "chat_id": "guild-123",
            "thread_id": "thread-456",
            "user_id": "bob",
        },
        {},
        "agent:main:discord:thread:guild-123:thread-456",
    ),
    (
        "chat_type thread, per user",
        {
            "platform": "discord",
            "chat_type": "thread",
            "chat_id": "guild-123",
            "thread_id": "thread-456",
            "user_id": "bob",
        },
        {"thread_sessions_per_user": True},
        "agent:main:discord:thread:guild-123:thread-456:bob",
    ),
    (
        "profile namespace",
        {"platform": "telegram", "chat_id": "99"},
        {"profile": "coder"},
        "agent:coder:telegram:dm:99",
    ),
    (
        "profile 'default' is main",
        {"platform": "telegram", "chat_id": "99"},
        {"profile": "default"},
        "agent:main:telegram:dm:99",
    ),
    (
        "empty profile is main",
        {"platform": "telegram", "chat_id": "99"},
        {"profile": ""},
        "agent:main:telegram:dm:99",
    ),
    (
        "profile named main is marked",
        {"platform": "telegram", "chat_id": "99"},
        {"profile": "main"},
        "agent:main~:telegram:dm:99",
    ),
    (
        "profile from the source",
        {"platform": "telegram", "chat_id": "99", "profile": "coder"},
        {},
        "agent:coder:telegram:dm:99",
    ),
    (
        "explicit profile wins over the source's",
        {"platform": "telegram", "chat_id": "99", "profile": "coder"},
        {"profile": "default"},
        "agent:main:telegram:dm:99",
    ),
    (
        "plugin platform",
        {"platform": "irc", "chat_type": "channel", "chat_id": "#hermes", "user_id": "ada"},
        {},
        "agent:main:irc:channel:#hermes:ada",
    ),
    (
        "ids with ':' or '%' are escaped",
        {"platform": "matrix", "chat_type": "group", "chat_id": "!room:example.org"},
        {"group_sessions_per_user": False},
        "agent:main:matrix:group:!room%3Aexample.org",
    ),
    (
        "escaped participant",
        {
            "platform": "matrix",
            "chat_type": "group",
            "chat_id": "!r:x.org",
            "user_id": "@ada:x.org",
        },
        {},
        "agent:main:matrix:group:!r%3Ax.org:@ada%3Ax.org",
    ),
    (
        "escaped percent",
        {"platform": "telegram", "chat_id": "50%"},
        {},
        "agent:main:telegram:dm:50%25",
    ),
]


@pytest.mark.parametrize(
    ("fields", "options", "expected"),
    [row[1:] for row in KEY_TABLE],
    ids=[row[0] for row in KEY_TABLE],
)
def test_key_table(fields: dict[str, Any], options: dict[str, Any], expected: str) -> None:
    assert build_session_key(SessionSource(**fields), **options) == expected


def test_escaping_prevents_the_hermes_collision() -> None:
    # Hermes: both are agent:main:matrix:group:a:b.
    colon = SessionSource(platform="matrix", chat_type="group", chat_id="a:b")
    thread = SessionSource(platform="matrix", chat_type="group", chat_id="a", thread_id="b")
    assert build_session_key(colon) == "agent:main:matrix:group:a%3Ab"
    assert build_session_key(thread) == "agent:main:matrix:group:a:b"


def test_namespace_cannot_be_impersonated() -> None:
    assert session_namespace(None) == session_namespace("default") == "main"
    assert session_namespace("main") == "main~"
    assert session_namespace("main~") == "main%7E"
    assert session_namespace("a:b") == "a%3Ab"


def test_known_layout_ambiguities_are_the_hermes_ones() -> None:
    # Documented: the Hermes layout has optional slots, and keys must stay
    # byte-identical, so these differently-shaped sources share a key as in Hermes.
    dm_chat = SessionSource(platform="telegram", chat_id="42")
    dm_user = SessionSource(platform="telegram", user_id="42")
    assert build_session_key(dm_chat) == build_session_key(dm_user)
    thread = SessionSource(**TG_GROUP, thread_id="42")
    member = SessionSource(**TG_GROUP, user_id="42")
    assert build_session_key(thread) == build_session_key(member)
    no_chat_member = SessionSource(platform="telegram", chat_type="group", user_id="42")
    chat = SessionSource(platform="telegram", chat_type="group", chat_id="42")
    assert build_session_key(no_chat_member) == build_session_key(chat)


@pytest.mark.parametrize("text", ["", "plain", "a:b", "50%", "%3A", "::%%", "ü:ß%"])
def test_escape_round_trip(text: str) -> None:
    escaped = escape_component(text)
    assert ":" not in escaped
    assert unescape_component(escaped) == text
    if ":" not in text and "%" not in text:
        assert escaped == text


def test_shared_multi_user_session_mirrors_the_key_rules() -> None:
    dm = SessionSource(platform="telegram", chat_id="1", thread_id="2")
    group = SessionSource(**TG_GROUP, user_id="7")
    thread = SessionSource(**TG_GROUP, user_id="7", thread_id="9")
    assert not is_shared_multi_user_session(dm)
    assert not is_shared_multi_user_session(group)
    assert is_shared_multi_user_session(group, group_sessions_per_user=False)
    assert is_shared_multi_user_session(thread)
    assert not is_shared_multi_user_session(thread, thread_sessions_per_user=True)


# --- properties --------------------------------------------------------------

# A small alphabet with the separator, the escape and the namespace marker, so
# that near-collisions are common.
_component = st.text(alphabet="ab:%~", min_size=1, max_size=4)
_maybe = st.one_of(st.none(), _component)
_flags = st.fixed_dictionaries(
    {"group_sessions_per_user": st.booleans(), "thread_sessions_per_user": st.booleans()}
)


@st.composite
def sources(draw: st.DrawFn) -> SessionSource:
    chat_type = draw(st.sampled_from(CHAT_TYPES))
    return SessionSource(
        platform=draw(st.sampled_from(["telegram", "discord"])),
        chat_type=chat_type,
        chat_id=draw(_maybe),
        user_id=draw(_maybe),
        user_id_alt=draw(_maybe),
        thread_id=draw(_maybe),
        profile=draw(st.sampled_from([None, "default", "main", "main~", "a:b", "a%3Ab"])),
    )


def keyed_slots(source: SessionSource, flags: dict[str, bool]) -> dict[str, str | None]:
    """Which value fills each slot of the key: an oracle written from the Hermes rules."""
    participant = source.user_id_alt or source.user_id
    profile = None if source.profile in (None, "", "default") else source.profile
    slots: dict[str, str | None] = {
        "profile": profile,
        "platform": source.platform.value,
        "chat_type": source.chat_type,
        "chat": source.chat_id,
        "thread": source.thread_id,
        "user": None,
        "dm_fallback": None,
    }
    if source.chat_type == "dm":
        if not source.chat_id:
            slots["dm_fallback"] = participant
    elif flags["group_sessions_per_user"] and (
        flags["thread_sessions_per_user"] or not source.thread_id
    ):
        slots["user"] = participant
    return slots


def shape(slots: dict[str, str | None]) -> tuple[object, ...]:
    return tuple(sorted(name for name, value in slots.items() if value is not None))


@given(sources(), sources(), _flags)
@example(
    SessionSource(platform="telegram", chat_type="group", chat_id="a:b"),
    SessionSource(platform="telegram", chat_type="group", chat_id="a", user_id="b"),
    {"group_sessions_per_user": True, "thread_sessions_per_user": False},
)
@example(
    SessionSource(platform="telegram", chat_id="1", profile="main"),
    SessionSource(platform="telegram", chat_id="1", profile="main~"),
    {"group_sessions_per_user": True, "thread_sessions_per_user": False},
)
def test_sources_differing_in_a_keyed_component_never_share_a_key(
    a: SessionSource, b: SessionSource, flags: dict[str, bool]
) -> None:
    slots_a, slots_b = keyed_slots(a, flags), keyed_slots(b, flags)
    key_a, key_b = build_session_key(a, **flags), build_session_key(b, **flags)
    if slots_a == slots_b:
        assert key_a == key_b
    elif shape(slots_a) == shape(slots_b):
        assert key_a != key_b
    elif key_a == key_b:
        # Only the documented Hermes layout ambiguities may coincide: the same
        # ids in a different optional slot, never different ids.
        def head(s: dict[str, str | None]) -> list[str | None]:
            return [s["profile"], s["platform"], s["chat_type"]]

        def ids(s: dict[str, str | None]) -> list[str]:
            return [v for v in (s["chat"] or s["dm_fallback"], s["thread"], s["user"]) if v]

        assert head(slots_a) == head(slots_b) and ids(slots_a) == ids(slots_b)


_plain = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc"], exclude_characters=":%"),
    min_size=1,
    max_size=8,
)


@given(
    chat_type=st.sampled_from(CHAT_TYPES),
    chat_id=_plain,
    user_id=st.one_of(st.none(), _plain),
    thread_id=st.one_of(st.none(), _plain),
    profile=st.one_of(st.none(), _plain.filter(lambda p: "~" not in p)),
    flags=_flags,
)
def test_keys_without_colon_or_percent_are_hermes_keys(
    chat_type: str,
    chat_id: str,
    user_id: str | None,
    thread_id: str | None,
    profile: str | None,
    flags: dict[str, bool],
) -> None:
    source = SessionSource(
        platform="slack", chat_type=chat_type, chat_id=chat_id, user_id=user_id, thread_id=thread_id
    )
    # The Hermes formula, verbatim: raw ids joined with ':'.
    ns = "main" if profile in (None, "default") else "main~" if profile == "main" else profile
    parts = ["agent", ns, "slack", chat_type, chat_id]
    if chat_type == "dm":
        parts += [thread_id] if thread_id else []
    else:
        parts += [thread_id] if thread_id else []
        per_user = flags["group_sessions_per_user"] and (
            flags["thread_sessions_per_user"] or not thread_id
        )
        parts += [user_id] if per_user and user_id else []
    assert build_session_key(source, profile=profile, **flags) == ":".join(parts)


# --- session ids and keys ----------------------------------------------------


@pytest.mark.parametrize("session_id", ["20261122_090000_1a2b3c4d", "abc", "a.b", "x" * 255])
def test_valid_session_ids(session_id: str) -> None:
    assert validate_session_id(session_id) == session_id


@pytest.mark.parametrize(
    ("session_id", "message"),
    [
        ("", "non-empty"),
        (None, "non-empty"),
        ("../../etc/passwd", "looks like a path"),
        ("..", "looks like a path"),
        ("a/b", "looks like a path"),
        ("a\\b", "looks like a path"),
        ("C:evil", "looks like a path"),
        ("abc\n", "control characters"),
        ("x" * 256, "at most 255"),
    ],
)
def test_invalid_session_ids(session_id: object, message: str) -> None:
    with pytest.raises(InvalidSessionIdError, match=message):
        validate_session_id(session_id)


def test_session_keys() -> None:
    key = build_session_key(
        SessionSource(platform="irc", chat_type="group", chat_id="spaces/AAA/threads/x")
    )
    assert validate_session_key(key) == key
    for bad in ["", "/etc/passwd", "../agent:main", "\\x", "C:\\x", "agent:main\x00"]:
        with pytest.raises(InvalidSessionIdError):
            validate_session_key(bad)


# --- against the real Hermes -------------------------------------------------

# Hermes's own build_session_key, run in a clean interpreter (Hermes reads its
# paths at import, so it gets a home of its own; -I keeps this repository's
# gateway/ folder off sys.path). stdin: [[source fields, options], ...].
_HERMES_KEYS = """
import json, sys
from gateway.config import Platform
from gateway.session import SessionSource, build_session_key
keys = []
for fields, options in json.load(sys.stdin):
    fields = dict(fields, platform=Platform(fields["platform"]))
    fields.setdefault("chat_id", "")
    keys.append(build_session_key(SessionSource(**fields), **options))
json.dump(keys, sys.stdout)
"""


def hermes_keys(cases: list[tuple[dict[str, Any], dict[str, Any]]], home: Path) -> list[str]:
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "HERMES_HOME": str(home), "PATH": os.defpath}
    done = subprocess.run(
        [sys.executable, "-I", "-c", _HERMES_KEYS],
        input=json.dumps(cases),
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    keys: list[str] = json.loads(done.stdout)
    return keys


def _hermes_table() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every chat type with and without chat_id, thread_id, user_id and user_id_alt,
    under both per-user flags both ways, on a few platforms and profiles."""
    cases = []
    slots = itertools.product(
        CHAT_TYPES,
        (None, "-1002285219667"),  # chat_id
        (None, "17585"),  # thread_id
        (None, "42"),  # user_id
        (None, "uuid-9"),  # user_id_alt
    )
    for n, (chat_type, chat_id, thread_id, user_id, user_id_alt) in enumerate(slots):
        fields = {
            "platform": ("telegram", "discord", "slack", "signal", "matrix")[n % 5],
            "chat_type": chat_type,
            "chat_id": chat_id,
            "thread_id": thread_id,
            "user_id": user_id,
            "user_id_alt": user_id_alt,
        }
        for group_per_user, thread_per_user in itertools.product((True, False), repeat=2):
            options: dict[str, Any] = {
                "group_sessions_per_user": group_per_user,
                "thread_sessions_per_user": thread_per_user,
            }
            if n % 7 == 3:
                options["profile"] = ("coder", "default")[n % 2]
            cases.append(({k: v for k, v in fields.items() if v is not None}, options))
    return cases


def test_keys_are_the_real_hermes_keys(tmp_path: Path) -> None:
    """Byte for byte what Hermes 0.19's gateway.session.build_session_key returns,
    including groups, channels and threads without a chat_id."""
    cases = _hermes_table()
    assert any(f["chat_type"] != "dm" and "chat_id" not in f for f, _ in cases)
    expected = hermes_keys(cases, tmp_path / "home")
    ours = [build_session_key(SessionSource(**fields), **options) for fields, options in cases]
    mismatches = [
        (fields, options, mine, theirs)
        for (fields, options), mine, theirs in zip(cases, ours, expected, strict=True)
        if mine != theirs
    ]
    assert not mismatches
    bare = {key.rsplit(":", 1)[1] for key in expected if key.count(":") == 3}
    assert bare == {"dm", "group", "channel", "thread"}  # no chat, thread or sender at all
    assert any(key.startswith("agent:coder:") for key in expected)


def test_escaping_is_the_only_difference_from_hermes(tmp_path: Path) -> None:
    """Ids with ':' or '%': our key is the Hermes key of the escaped ids."""
    raw = [
        {"platform": "matrix", "chat_type": "group", "chat_id": "!r:x.org", "user_id": "@a:x.org"},
        {"platform": "matrix", "chat_type": "channel", "thread_id": "t:1", "user_id": "50%"},
        {"platform": "slack", "chat_type": "thread", "user_id_alt": "a:b"},
        {"platform": "telegram", "chat_id": "a%3Ab", "thread_id": "c"},
    ]
    escaped = [{k: escape_component(v) for k, v in fields.items()} for fields in raw]
    cases = [(fields, {}) for fields in escaped]
    expected = hermes_keys(cases, tmp_path / "home")
    assert [build_session_key(SessionSource(**fields)) for fields in raw] == expected
