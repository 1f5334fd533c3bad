"""Memory flush: hand a closing session's transcript to a memory provider, with a timeout.

A flusher is any callable ``flusher(context, transcript)`` (sync or async) that
saves what is worth remembering from a session before it closes. Its outcome
becomes an event — ``memory_flushed``, ``memory_flush_failed`` or, when no
flusher is configured, ``memory_flush_skipped`` — recorded between the close's
cause and its ``session_ended``. A flusher that raises or outlives its timeout
is recorded as failed; the close proceeds.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hermes_ledger.gateway.usercode.bounded import CallTimeoutError, call_bounded
from hermes_ledger.ledger.events import MemoryFlushed, MemoryFlushFailed, MemoryFlushSkipped

__all__ = ["DEFAULT_FLUSH_TIMEOUT", "FlushContext", "FlushOutcome", "Flusher", "run_flush"]

DEFAULT_FLUSH_TIMEOUT = 30.0
"""Seconds a flusher may take before its flush is recorded as failed."""

FlushOutcome = MemoryFlushed | MemoryFlushFailed | MemoryFlushSkipped


@dataclass(frozen=True)
class FlushContext:
    """What a flusher is told about the session it flushes."""

    session_key: str
    session_id: str
    reason: str
    platform: str | None = None
    user_id: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Flusher(Protocol):
    """Save a closing session's memory. Return an optional detail string; raise on failure."""

    def __call__(self, context: FlushContext, transcript: Sequence[dict[str, Any]]) -> Any: ...


def provider_name(flusher: object) -> str:
    """A stable, readable name for the audit trail (``module:qualname``)."""
    name = getattr(flusher, "provider_name", None)
    if isinstance(name, str) and name:
        return name
    target = flusher if inspect.isfunction(flusher) or inspect.ismethod(flusher) else type(flusher)
    module = getattr(target, "__module__", "?")
    return f"{module}:{getattr(target, '__qualname__', type(flusher).__name__)}"


def run_flush(
    flusher: Flusher | None,
    context: FlushContext,
    transcript: Sequence[dict[str, Any]],
    *,
    timeout: float = DEFAULT_FLUSH_TIMEOUT,
    attempt: int = 1,
) -> FlushOutcome:
    """Run one flush attempt and return the event that records its outcome.

    The flusher runs through ``call_bounded``: a hung provider cannot stall the
    caller past ``timeout``, and a timed-out one is recorded as failed.
    """
    if flusher is None:
        return MemoryFlushSkipped(session_id=context.session_id, reason="no flusher configured")
    provider = provider_name(flusher)
    try:
        result = call_bounded(
            flusher, context, list(transcript), timeout=timeout, name=f"flush-{context.session_id}"
        )
    except BaseException as exc:  # a timeout, or whatever the provider raised
        return MemoryFlushFailed(
            session_id=context.session_id,
            provider=provider,
            attempt=attempt,
            error=_describe_failure(exc),
        )
    return MemoryFlushed(
        session_id=context.session_id,
        provider=provider,
        attempt=attempt,
        detail=None if result is None else str(result),
    )


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, CallTimeoutError) or not str(exc):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
