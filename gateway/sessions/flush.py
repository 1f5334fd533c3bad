"""Old home of the memory-flush names; they live in ``gateway.sessions.closing`` now,
next to the close sequence that runs the flush. Import them from there."""

from hermes_ledger.gateway.sessions.closing import (
    DEFAULT_FLUSH_TIMEOUT,
    FlushContext,
    Flusher,
    FlushOutcome,
    provider_name,
    run_flush,
)

__all__ = [
    "DEFAULT_FLUSH_TIMEOUT",
    "FlushContext",
    "FlushOutcome",
    "Flusher",
    "provider_name",
    "run_flush",
]
