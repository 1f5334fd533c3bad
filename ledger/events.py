"""The event models: frozen, discriminated by ``type``, versioned, upcast on read.

Each model is what a producer fills in. The log stores ``type`` and ``event_id``
in their own columns, the rest of the model as the ``data`` JSON, and the model's
``schema_version`` in ``meta``. Old shapes are never rewritten in the log: an
upcaster turns a stored older body into the current shape when it is read.

**What a model refuses.** Making a model with bad fields raises
``EventValidationError`` (every problem listed), never pydantic's error. Beyond
each field's type, no text may hold a lone surrogate (``ledger.text``); the
free-form JSON fields (``tool_calls``, ``policy``, a source's extra keys, and an
append's ``meta``) must be JSON: finite numbers (NaN and infinities are refused,
not stored as null), string keys, at most ``MAX_JSON_DEPTH`` levels deep;
counts must fit SQLite's 64-bit integers. Models are frozen: setting a field
raises ``EventValidationError``. A model changed behind its back anyway
(``object.__setattr__``, ``model_copy(update=…)``, ``model_construct``, or an
in-place change to one of its lists or dicts) is caught when it is appended:
``storable_body`` re-validates, from the JSON about to be stored, every model
that is not exactly as validated, so the log never holds a body it cannot read.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, TypeAlias

import pydantic
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from hermes_ledger.ledger.errors import EventValidationError
from hermes_ledger.ledger.text import has_lone_surrogates

__all__ = [
    "EVENT_TYPES",
    "MAX_JSON_DEPTH",
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
    "SubjectErased",
    "UsageRecorded",
    "body_json",
    "check_json",
    "check_storable",
    "from_stored",
    "is_sealed",
    "json_schema",
    "parse",
    "partial_body",
    "seal",
    "storable_body",
    "upcaster",
]

MAX_JSON_DEPTH: Final = 64
"""How deeply the free-form JSON of an event (and ``meta``) may nest."""
_MAX_INT: Final = 2**63 - 1  # SQLite's INTEGER


def check_json(value: Any, where: str = "value") -> Any:
    """``value`` if it is JSON the ledger can store and read back, else ValueError
    naming the first problem: a NaN or infinite number, a lone surrogate, a key
    that is not a string, or nesting deeper than ``MAX_JSON_DEPTH``."""
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        if len(path) > 60:
            path = path[:60] + "…"
        if isinstance(item, str):
            if has_lone_surrogates(item):
                raise ValueError(f"{path} holds a lone surrogate (not storable as UTF-8)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path} is {item!r}; JSON numbers must be finite")
        elif isinstance(item, dict | list | tuple):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{path} nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, inner in item.items():
                    if not isinstance(key, str):
                        raise ValueError(f"{path} has a key that is not a string: {key!r}")
                    if has_lone_surrogates(key):
                        raise ValueError(f"{path} has a key with a lone surrogate")
                    stack.append((inner, f"{path}.{key}", depth + 1))
            else:
                stack.extend((inner, f"{path}[{i}]", depth + 1) for i, inner in enumerate(item))
    return value


def _json_field(value: Any) -> Any:
    return check_json(value, "the value")


NonEmpty = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(ge=0, le=_MAX_INT)]
Attempt = Annotated[int, Field(ge=1, le=_MAX_INT)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_field)]
JsonObjects = Annotated[list[dict[str, Any]], AfterValidator(_json_field)]


_Seal: TypeAlias = tuple[tuple[Any, ...], tuple[tuple[BaseModel, tuple[Any, ...]], ...]]


def _seal(model: BaseModel) -> _Seal | None:
    """What a just-validated ``model`` holds, for ``storable_body`` to tell whether
    it still holds it; None if it holds lists or dicts (they can change in place,
    so such a model is re-validated when stored). Raises ValueError for text with
    a lone surrogate (here rather than in a validator: reading the log skips it)."""
    nested = []
    owners: list[tuple[str, BaseModel]] = [("", model)]
    while owners:
        prefix, owner = owners.pop()
        for name, value in owner.__dict__.items():
            kind = type(value)  # exact types: what validation just produced
            if kind is str:
                if has_lone_surrogates(value):
                    raise ValueError(
                        f"{prefix}{name} holds a lone surrogate (not storable as UTF-8)"
                    )
            elif kind is list or kind is dict:
                return None
            elif kind is Source:
                owners.append((f"{prefix}{name}.", value))
        if owner.__pydantic_extra__:
            check_json(owner.__pydantic_extra__, prefix.rstrip("."))
            return None
        if owner is not model:
            nested.append((owner, tuple(owner.__dict__.values())))
    return tuple(model.__dict__.values()), tuple(nested)


def _still_sealed(model: BaseModel, seal: _Seal | None) -> bool:
    if seal is None:
        return False
    values, nested = seal
    if tuple(model.__dict__.values()) != values:
        return False
    return all(tuple(inner.__dict__.values()) == held for inner, held in nested)


def _sealed(model: EventModel) -> EventModel:
    try:
        seal = _seal(model)
    except ValueError as err:
        raise EventValidationError(f"invalid {model.type} event: {err}") from None
    object.__setattr__(model, "_validated", seal)
    return model


def _new_event_id() -> str:
    return str(uuid.uuid4())


class EventModel(BaseModel):
    """Common shape of every event: a type tag, an idempotency id, a schema version."""

    # NaN and infinities never reach a body (the fields refuse them); if a model is
    # changed behind its back, "constants" writes them out so that the re-validation
    # in storable_body refuses them, where "null" would store them silently.
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=False, ser_json_inf_nan="constants"
    )
    # What the model held when it was validated (``_seal``), or unset.
    __slots__ = ("_validated",)

    schema_version: ClassVar[int] = 1

    type: str
    event_id: NonEmpty = Field(default_factory=_new_event_id)
    occurred_at: AwareDatetime | None = Field(
        default=None,
        description="when it happened in the gateway's clock, if not when it was recorded",
    )

    if not TYPE_CHECKING:
        # The domain error (every problem listed) instead of pydantic's; and a
        # fingerprint of what was validated, for storable_body.
        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except pydantic.ValidationError as err:
                raise EventValidationError(
                    _describe_errors(data.get("type") or _default_type(type(self)), err)
                ) from None
            _sealed(self)

        # Not a "custom" __init__ to pydantic: validating a dict or JSON (parse,
        # reading the log) does not go through it.
        __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

        def __setattr__(self, name: str, value: Any) -> None:
            raise EventValidationError(
                f"{self.type} events are frozen: {name} cannot be set",
                hint="make a new event with the changed fields",
            )

        def __delattr__(self, name: str) -> None:
            raise EventValidationError(f"{self.type} events are frozen: {name} cannot be deleted")


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
    """One message of a session's transcript.

    ``user_id`` and ``user_name`` say who spoke: the sender of a user-role message
    (in a group session shared by several people, this message's sender, not the
    session's opener); None for the agent's own turns and where it is not known.
    """

    type: Literal["message_appended"] = "message_appended"
    session_id: NonEmpty
    role: Literal["user", "assistant", "tool", "system"]
    content: str | None
    user_id: str | None = None
    user_name: str | None = None
    tool_calls: JsonObjects | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    input_tokens: Count = 0
    output_tokens: Count = 0
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
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    cost_usd: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = None
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
    policy: JsonObject = Field(default_factory=dict)


class MemoryFlushed(EventModel):
    type: Literal["memory_flushed"] = "memory_flushed"
    session_id: NonEmpty
    provider: NonEmpty
    attempt: Attempt = 1
    detail: str | None = None


class MemoryFlushFailed(EventModel):
    type: Literal["memory_flush_failed"] = "memory_flush_failed"
    session_id: NonEmpty
    provider: NonEmpty
    attempt: Attempt = 1
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


class SubjectErased(EventModel):
    """The personal content of a subject was erased (``ledger.erasure``): which
    scope, who asked, and nothing of the content. ``scope`` is ``user``,
    ``session_key``, ``session_id`` or ``retention``; ``value`` the user id, key or
    session id (None for retention); ``platform``, ``chat_type`` and ``before``
    narrow a retention erasure. ``through`` is the last position it covers (the
    position before its own, unless it re-applies an erasure to an imported log)."""

    type: Literal["subject_erased"] = "subject_erased"
    scope: Literal["user", "session_key", "session_id", "retention"]
    value: str | None = None
    platform: str | None = None
    chat_type: str | None = None
    before: AwareDatetime | None = None
    through: Count
    requested_by: NonEmpty


Event: TypeAlias = Annotated[
    SessionStarted
    | MessageAppended
    | UsageRecorded
    | SessionReset
    | SessionExpired
    | MemoryFlushed
    | MemoryFlushFailed
    | MemoryFlushSkipped
    | SessionEnded
    | SubjectErased,
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
        SubjectErased,
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


def _default_type(model: type[EventModel]) -> str | None:
    field = model.model_fields.get("type")
    return field.default if field is not None and isinstance(field.default, str) else None


def _shown(value: object) -> str:
    """A short repr of a refused input (pydantic's message does not say what it was)."""
    if isinstance(value, dict | list | tuple | set | BaseModel):
        return ""
    text = repr(value)
    return f" (got {text[:60]}…)" if len(text) > 60 else f" (got {text})"


def _describe_errors(event_type: object, err: pydantic.ValidationError) -> str:
    problems = []
    for item in err.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"] if p != event_type) or "(event)"
        inner = item.get("ctx", {}).get("error")
        if isinstance(inner, EventValidationError):
            # Raised by a nested model's __init__ (pydantic calls it): already described.
            problems.append(str(inner).split(" event: ", 1)[-1])
            continue
        message = item["msg"].removeprefix("Value error, ")
        shown = "" if item["type"] in ("value_error", "missing") else _shown(item.get("input"))
        problems.append(f"{where}: {message}{shown}")
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
        model = _ADAPTER.validate_python(body)
    except pydantic.ValidationError as err:
        raise EventValidationError(_describe_errors(event_type, err)) from None
    return _sealed(model)


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


def storable_body(event: EventModel) -> str:
    """The ``data`` column for ``event`` (``body_json``), refusing with
    EventValidationError what could not be stored or read back: text that is not
    UTF-8, and a model that no longer holds what it was validated with (changed
    behind its back), which is re-validated from this very JSON."""
    data = partial_body(event)
    check_storable(event, data)
    return data


@functools.cache
def _exclude(without: frozenset[str]) -> set[str]:
    return _BODY_EXCLUDE | without


def partial_body(event: EventModel, without: frozenset[str] = frozenset()) -> str:
    """``body_json`` without the fields ``without`` (``ledger.personal`` stores them
    apart), refusing what cannot be serialised (see ``storable_body``)."""
    try:
        data = (
            type(event)
            .__pydantic_serializer__.to_json(
                event, exclude=_exclude(without) if without else _BODY_EXCLUDE,
                warnings=False,
            )
            .decode()
        )  # fmt: skip
    except (PydanticSerializationError, UnicodeError, RecursionError) as exc:
        reason = str(exc).removeprefix("Error serializing to JSON: ")
        raise EventValidationError(
            f"{getattr(event, 'type', 'an')} event cannot be stored as JSON: {reason}"
        ) from None
    return data


def seal(event: EventModel) -> EventModel:
    """``event`` (a model read with ``from_stored``) marked as validated, as a model
    made by its constructor or ``parse`` is: what ``is_sealed`` tests."""
    return _sealed(event)


def is_sealed(event: EventModel) -> bool:
    """True while ``event`` holds exactly what it was validated with and nothing
    that can change in place (no lists or dicts): it needs no re-validation."""
    return _still_sealed(event, getattr(event, "_validated", None))


def check_storable(event: EventModel, data: str) -> None:
    """Re-validate ``event`` from ``data`` (its whole body as JSON text) unless it
    still holds exactly what it was validated with (see ``storable_body``)."""
    if not is_sealed(event):
        try:
            from_stored(event.type, event.event_id, data, event.schema_version)
        except EventValidationError as err:
            raise EventValidationError(
                f"{err} (the {event.type} event was changed after it was validated)"
            ) from None


def json_schema() -> dict[str, Any]:
    """JSON Schema of every event type (what ``hermes-ledger schema`` prints)."""
    return _ADAPTER.json_schema()
