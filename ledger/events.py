"""The event models: frozen, discriminated by ``type``, versioned, upcast on read.

Each model is what a producer fills in. The log stores ``type`` and ``event_id``
in their own columns, the rest of the model as the ``data`` JSON, and the model's
``schema_version`` in ``meta``. Old shapes are never rewritten in the log: an
upcaster turns a stored older body into the current shape when it is read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

import pydantic
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from hermes_ledger.ledger.errors import EventValidationError

__all__ = [
    "EVENT_TYPES",
    "Event",
    "EventModel",
    "MemoryFlushFailed",
    "MemoryFlushSkipped",
    "MemoryFlushed",
    "MessageAppended",
    "SessionEnded",
    "SessionExpired",
    "SessionReset",
    "SessionStarted",
    "Source",
    "UsageRecorded",
    "body_json",
    "from_stored",
    "json_schema",
    "parse",
    "upcaster",
]

NonEmpty = Annotated[str, Field(min_length=1)]


def _new_event_id() -> str:
    return str(uuid.uuid4())


class EventModel(BaseModel):
    """Common shape of every event: a type tag, an idempotency id, a schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    schema_version: ClassVar[int] = 1

    type: str
    event_id: NonEmpty = Field(default_factory=_new_event_id)
    occurred_at: AwareDatetime | None = Field(
        default=None,
        description="when it happened in the gateway's clock, if not when it was recorded",
    )


class Source(BaseModel):
    """Where a session's messages come from (the gateway's SessionSource, as stored)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    platform: NonEmpty
    chat_id: str | None = None
    chat_type: NonEmpty = "dm"
    chat_name: str | None = None
    chat_topic: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    user_id_alt: str | None = None
    chat_id_alt: str | None = None
    thread_id: str | None = None
    profile: str | None = None


class SessionStarted(EventModel):
    type: Literal["session_started"] = "session_started"
    session_id: NonEmpty
    source: Source
    reason: Literal["first", "manual_reset", "auto_reset", "resume"] = "first"
    previous_session_id: str | None = None


class MessageAppended(EventModel):
    type: Literal["message_appended"] = "message_appended"
    session_id: NonEmpty
    role: Literal["user", "assistant", "tool", "system"]
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    platform_message_id: str | None = None
    synthetic: bool = False


class UsageRecorded(EventModel):
    """Token usage and cost of one agent turn.

    Version 2 renamed ``prompt_tokens`` / ``completion_tokens`` (v1, OpenAI naming)
    to ``input_tokens`` / ``output_tokens`` (Hermes naming).
    """

    schema_version: ClassVar[int] = 2

    type: Literal["usage_recorded"] = "usage_recorded"
    session_id: NonEmpty
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    cache_read_tokens: NonNegativeInt = 0
    cache_write_tokens: NonNegativeInt = 0
    cost_usd: Annotated[float, Field(ge=0)] | None = None
    model: str | None = None


class SessionReset(EventModel):
    type: Literal["session_reset"] = "session_reset"
    session_id: NonEmpty
    trigger: NonEmpty = "/new"


class SessionExpired(EventModel):
    type: Literal["session_expired"] = "session_expired"
    session_id: NonEmpty
    reason: Literal["idle", "daily", "cron"]
    deadline: AwareDatetime
    evaluated_at: AwareDatetime
    policy: dict[str, Any] = Field(default_factory=dict)


class MemoryFlushed(EventModel):
    type: Literal["memory_flushed"] = "memory_flushed"
    session_id: NonEmpty
    provider: NonEmpty
    attempt: PositiveInt = 1
    detail: str | None = None


class MemoryFlushFailed(EventModel):
    type: Literal["memory_flush_failed"] = "memory_flush_failed"
    session_id: NonEmpty
    provider: NonEmpty
    attempt: PositiveInt = 1
    error: NonEmpty


class MemoryFlushSkipped(EventModel):
    """The close had nothing to flush to (no flusher configured, empty transcript…)."""

    type: Literal["memory_flush_skipped"] = "memory_flush_skipped"
    session_id: NonEmpty
    reason: NonEmpty = "no flusher configured"


class SessionEnded(EventModel):
    """A session closed. Known reasons: manual_reset, auto_reset, idle_expiry,
    daily_reset, cron_reset, shutdown, resume_switch (imports may carry others)."""

    type: Literal["session_ended"] = "session_ended"
    session_id: NonEmpty
    reason: NonEmpty


Event: TypeAlias = Annotated[
    SessionStarted
    | MessageAppended
    | UsageRecorded
    | SessionReset
    | SessionExpired
    | MemoryFlushed
    | MemoryFlushFailed
    | MemoryFlushSkipped
    | SessionEnded,
    Field(discriminator="type"),
]

_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Event)

EVENT_TYPES: dict[str, type[EventModel]] = {
    model.model_fields["type"].default: model
    for model in (
        SessionStarted,
        MessageAppended,
        UsageRecorded,
        SessionReset,
        SessionExpired,
        MemoryFlushed,
        MemoryFlushFailed,
        MemoryFlushSkipped,
        SessionEnded,
    )
}

Upcaster: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]

# (type, from_version) -> function turning a body of that version into the next one.
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function turning a stored body of ``from_version`` into the next version."""

    def register(fn: Upcaster) -> Upcaster:
        key = (event_type, from_version)
        if key in _UPCASTERS:
            raise ValueError(f"an upcaster for {event_type} v{from_version} is already registered")
        _UPCASTERS[key] = fn
        return fn

    return register


@upcaster("usage_recorded", from_version=1)
def _usage_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    body["input_tokens"] = body.pop("prompt_tokens", 0)
    body["output_tokens"] = body.pop("completion_tokens", 0)
    return body


def _upcast(event_type: str, body: dict[str, Any], stored_version: int) -> dict[str, Any]:
    model = EVENT_TYPES.get(event_type)
    if model is None:
        return body
    current = model.schema_version
    if stored_version > current:
        raise EventValidationError(
            f"{event_type} v{stored_version} is newer than this code understands (v{current})",
            hint="upgrade hermes-ledger",
        )
    for version in range(stored_version, current):
        step = _UPCASTERS.get((event_type, version))
        if step is None:
            raise EventValidationError(f"no upcaster for {event_type} v{version} -> v{version + 1}")
        body = step(body)
    return body


def _describe_errors(event_type: object, err: pydantic.ValidationError) -> str:
    problems = []
    for item in err.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"] if p != event_type) or "(event)"
        problems.append(f"{where}: {item['msg']}")
    kind = f"{event_type} event" if isinstance(event_type, str) and event_type else "event"
    return f"invalid {kind}: " + "; ".join(problems)


def parse(raw: Mapping[str, Any], *, schema_version: int | None = None) -> EventModel:
    """Turn a plain dict (a stored ``data`` body plus its ``type``) into its model.

    ``schema_version`` (or a ``schema_version`` key in the dict) names the shape the
    body was written in; older shapes are upcast. Raises EventValidationError with
    every problem listed when the dict is not a valid event.
    """
    if not isinstance(raw, Mapping):
        raise EventValidationError(f"an event must be a JSON object, not {type(raw).__name__}")
    body = dict(raw)
    event_type = body.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise EventValidationError("invalid event: 'type' is missing")
    if event_type not in EVENT_TYPES:
        known = ", ".join(sorted(EVENT_TYPES))
        raise EventValidationError(f"unknown event type {event_type!r} (known types: {known})")
    stored = body.pop("schema_version", None) if schema_version is None else schema_version
    if stored is not None:
        body.pop("schema_version", None)
        if isinstance(stored, bool) or not isinstance(stored, int) or stored < 1:
            raise EventValidationError(
                f"invalid {event_type} event: schema_version must be an int >= 1"
            )
        body = _upcast(event_type, body, stored)
    try:
        return _ADAPTER.validate_python(body)  # type: ignore[no-any-return]
    except pydantic.ValidationError as err:
        raise EventValidationError(_describe_errors(event_type, err)) from None


def from_stored(event_type: str, event_id: str, data: str, schema_version: int) -> EventModel:
    """Rebuild the model of a stored row (``data`` JSON text, ``meta.schema_version``)."""
    model = EVENT_TYPES.get(event_type)
    if model is not None and schema_version == model.schema_version:
        # Current shape: splice type and event_id into the JSON text and let
        # pydantic parse it in one pass, without a round trip through dicts.
        head = f'{{"type":"{event_type}","event_id":{json.dumps(event_id)}'
        text = head + ("}" if data.strip() == "{}" else "," + data.lstrip()[1:])
        try:
            return model.model_validate_json(text)
        except pydantic.ValidationError as err:
            raise EventValidationError(_describe_errors(event_type, err)) from None
    body = json.loads(data)
    body["type"] = event_type
    body["event_id"] = event_id
    return parse(body, schema_version=schema_version)


_BODY_EXCLUDE = {"type", "event_id"}


def body_json(event: EventModel) -> str:
    """The ``data`` column for an event: every field but type and event_id, as JSON."""
    # The model's own serializer, called directly: same bytes as model_dump_json,
    # without its per-call argument handling (this runs for every appended event).
    return type(event).__pydantic_serializer__.to_json(event, exclude=_BODY_EXCLUDE).decode()


def json_schema() -> dict[str, Any]:
    """JSON Schema of every event type (what ``hermes-ledger schema`` prints)."""
    return _ADAPTER.json_schema()
