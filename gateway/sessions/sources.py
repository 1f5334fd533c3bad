"""Where a message comes from: ``Platform`` and ``SessionSource``.

A ``SessionSource`` names one conversation on one platform: the chat, its type
(``dm``, ``group``, ``channel`` or ``thread``), the sender, and the thread or
topic inside the chat. Session keys (``sessions.keys``) are derived from it, and
its dictionary form (``to_dict`` / ``from_dict``) is the one Hermes stores as a
session's ``origin``, so sources round-trip between the two.

Sources are validated when they are made: an empty or malformed platform, an
unknown chat type, or an identifier containing control characters raises
``InvalidSourceError`` with every problem listed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, field_validator

from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.events import Source
from hermes_ledger.ledger.text import has_control_chars, has_unstorable_chars

__all__ = [
    "CHAT_TYPES",
    "ChatType",
    "InvalidSourceError",
    "Platform",
    "SessionSource",
    "describe_validation_error",
    "parse_platform",
]

ChatType = Literal["dm", "group", "channel", "thread"]
CHAT_TYPES: Final[tuple[str, ...]] = ("dm", "group", "channel", "thread")

_PLATFORM_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_PLATFORM_RULE = "lowercase letters, digits, '_' or '-', starting with a letter, at most 64"


class InvalidSourceError(LedgerError, ValueError):
    """A session source (or a platform name) that cannot name a conversation."""

    hint = "check the platform name, the chat type and the ids the adapter passed"


class Platform(StrEnum):
    """A messaging platform the gateway talks to.

    The built-in platforms are members. Any other well-formed name is accepted
    as a plugin platform: ``Platform("irc")`` makes (once) and returns a member
    that compares equal to ``"irc"``, so plugin adapters need no change here.
    Names are case-insensitive and stored lowercase.
    """

    LOCAL = "local"
    TELEGRAM = "telegram"
    DISCORD = "discord"
    WHATSAPP = "whatsapp"
    SLACK = "slack"
    SIGNAL = "signal"
    MATTERMOST = "mattermost"
    MATRIX = "matrix"
    EMAIL = "email"
    SMS = "sms"
    HOMEASSISTANT = "homeassistant"
    API_SERVER = "api_server"
    WEBHOOK = "webhook"

    @property
    def title_name(self) -> str:
        """The name as the context prompt shows it (``Telegram``, ``Api_Server``)."""
        return self.value.title()

    @property
    def is_builtin(self) -> bool:
        return self.value in _BUILTIN_VALUES

    @classmethod
    def _missing_(cls, value: object) -> Platform | None:
        if not isinstance(value, str):
            return None
        name = value.strip().lower()
        with _PLUGIN_LOCK:
            known = cls._value2member_map_.get(name)
            if known is not None:
                return known  # type: ignore[return-value]
            if not _PLATFORM_NAME.fullmatch(name):
                return None
            member = str.__new__(cls, name)
            member._value_ = name
            member._name_ = name.upper().replace("-", "_")
            cls._value2member_map_[name] = member
            return member


_PLUGIN_LOCK = threading.Lock()
_BUILTIN_VALUES: Final[frozenset[str]] = frozenset(member.value for member in Platform)


def _to_platform(value: object) -> Platform:
    """``value`` as a Platform; ValueError says what is wrong with it."""
    if isinstance(value, Platform):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("must not be empty")
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    try:
        return Platform(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a valid platform name ({_PLATFORM_RULE} characters)"
        ) from None


def parse_platform(value: object) -> Platform:
    """``value`` as a Platform, or InvalidSourceError saying what is wrong with it."""
    try:
        return _to_platform(value)
    except ValueError as err:
        raise InvalidSourceError(f"platform {err}") from None


def describe_validation_error(err: pydantic.ValidationError) -> str:
    """One line per problem, ``field: message``, without pydantic's URLs."""
    problems = []
    for item in err.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


_ID_FIELDS: Final = ("chat_id", "user_id", "thread_id", "user_id_alt", "chat_id_alt", "profile")
_TEXT_FIELDS: Final = ("chat_name", "user_name", "chat_topic")


class SessionSource(BaseModel):
    """Where a message originated: platform, chat, sender and thread.

    Identifier fields accept numbers (Telegram ids arrive as ints) and store
    them as strings; an empty string means "not given". Every id is optional,
    ``chat_id`` too, whatever the chat type: Hermes builds a key for a group,
    channel or thread without one (``sessions.keys``), so a Hermes home or a
    live gateway can hand us such a source. ``profile`` is the Hermes profile
    the message is routed to (``None`` for the default one).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    platform: Platform
    chat_id: str | None = None
    chat_name: str | None = None
    chat_type: ChatType = "dm"
    user_id: str | None = None
    user_name: str | None = None
    thread_id: str | None = None
    chat_topic: str | None = None
    user_id_alt: str | None = None
    chat_id_alt: str | None = None
    profile: str | None = None

    # Hermes' wire layout: these keys are always written, in this order; the
    # optional ones follow only when set.
    _ALWAYS: ClassVar[tuple[str, ...]] = (
        "chat_id",
        "chat_name",
        "chat_type",
        "user_id",
        "user_name",
        "thread_id",
        "chat_topic",
    )
    _OPTIONAL: ClassVar[tuple[str, ...]] = ("user_id_alt", "chat_id_alt", "profile")

    if TYPE_CHECKING:
        # What callers may pass: a platform's name, numeric ids, any chat-type spelling.
        def __init__(
            self,
            *,
            platform: Platform | str,
            chat_id: str | int | None = None,
            chat_name: str | None = None,
            chat_type: str | None = "dm",
            user_id: str | int | None = None,
            user_name: str | None = None,
            thread_id: str | int | None = None,
            chat_topic: str | None = None,
            user_id_alt: str | int | None = None,
            chat_id_alt: str | int | None = None,
            profile: str | None = None,
        ) -> None: ...

    else:
        # Raise the domain error (with every problem listed) instead of
        # pydantic's ValidationError.
        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except pydantic.ValidationError as err:
                raise InvalidSourceError(
                    "invalid session source: " + describe_validation_error(err)
                ) from None

    @field_validator("platform", mode="before")
    @classmethod
    def _platform(cls, value: object) -> Platform:
        return _to_platform(value)

    @field_validator("chat_type", mode="before")
    @classmethod
    def _chat_type(cls, value: object) -> object:
        if value is None or value == "":
            return "dm"
        if isinstance(value, str) and value.strip().lower() in CHAT_TYPES:
            return value.strip().lower()
        allowed = ", ".join(CHAT_TYPES)
        raise ValueError(f"{value!r} is not a chat type (allowed: {allowed})")

    @field_validator(*_ID_FIELDS, mode="after")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if not value:
            return None
        if has_control_chars(value):
            raise ValueError("identifiers must not contain control characters")
        return value

    @field_validator(*_TEXT_FIELDS, mode="after")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and has_unstorable_chars(value):
            raise ValueError("must not contain NUL or unpaired surrogate characters")
        return value

    @property
    def is_dm(self) -> bool:
        return self.chat_type == "dm"

    @property
    def description(self) -> str:
        """How the source reads to a person: ``DM with ada``, ``group: Dev, thread: 7``."""
        if self.platform == Platform.LOCAL:
            return "CLI terminal"
        chat = self.chat_name or self.chat_id or ""
        if self.chat_type == "dm":
            text = f"DM with {self.user_name or self.user_id or 'user'}"
        elif self.chat_type in ("group", "channel"):
            text = f"{self.chat_type}: {chat}"
        else:
            text = chat
        return f"{text}, thread: {self.thread_id}" if self.thread_id else text

    def to_dict(self) -> dict[str, Any]:
        """The dictionary Hermes stores as a session's ``origin`` (same keys, same order)."""
        data: dict[str, Any] = {"platform": self.platform.value}
        data.update((name, getattr(self, name)) for name in self._ALWAYS)
        data.update((name, value) for name in self._OPTIONAL if (value := getattr(self, name)))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionSource:
        """Rebuild a source from ``to_dict`` output or a Hermes ``origin`` dictionary.

        Keys this model does not hold (Hermes adds ``scope_id``, ``is_bot``,
        ``message_id`` …) are ignored; a missing ``chat_type`` means ``dm``.
        """
        if not isinstance(data, Mapping):
            raise InvalidSourceError(
                f"a session source must be a mapping, not {type(data).__name__}"
            )
        if "platform" not in data:
            raise InvalidSourceError("invalid session source: platform is missing")
        known = {name: data[name] for name in cls.model_fields if name in data}
        return cls(**known)

    @classmethod
    def local_cli(cls) -> SessionSource:
        """The source of the local command line."""
        return cls(platform=Platform.LOCAL, chat_id="cli", chat_name="CLI terminal")

    def to_event_source(self) -> Source:
        """The ``source`` of a ``session_started`` event."""
        return Source(**self.model_dump(mode="json"))

    @classmethod
    def from_event_source(cls, source: Source) -> SessionSource:
        """The source recorded in a ``session_started`` event (extra keys ignored)."""
        return cls.from_dict(source.model_dump())
