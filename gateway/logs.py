"""What the ledger's background work reports, and how the command line prints it.

The library logs through the standard ``logging`` module, under the
``hermes_ledger`` logger hierarchy (each module's ``logging.getLogger(__name__)``).
A record that reports something an operator monitors names it: ``extra=
fields("session_closed", session_key=…, …)`` sets ``record.event`` and the
structured fields (the keys of ``FIELDS``). The library never configures
handlers; ``configured_logging`` is what ``hermes-ledger run`` and ``tick`` use:

* ``text``: one line per record, ``<UTC time> <LEVEL> <what happened>``;
* ``json``: one JSON object per line with the keys ``ts``, ``level``, ``event``,
  ``logger``, ``message``, then each structured field the record carries (see
  ``FIELDS``) and ``traceback`` when it has one.

Callers on hot paths (a tick, a hook delivery, a plugin callback) test
``log.isEnabledFor(level)`` before building fields, so logging that is off costs
one cached comparison.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO

__all__ = [
    "FIELDS",
    "ROOT_LOGGER",
    "JsonFormatter",
    "TextFormatter",
    "configured_logging",
    "fields",
    "seconds_text",
]

ROOT_LOGGER = "hermes_ledger"

FIELDS = (
    "session_key",
    "session_id",
    "reason",
    "deadline",
    "flush",
    "provider",
    "hook",
    "hook_event",
    "delivery_id",
    "attempt",
    "max_attempts",
    "retry_in",
    "retry_at",
    "error",
    "path",
    "position",
    "signal",
    "passes",
    "platform",
    "chat_type",
    "before",
    "sessions",
    "messages",
)
"""The structured fields a record may carry, in the order JSON lines show them."""

LogFormat = Literal["text", "json"]


def fields(event: str, **values: Any) -> dict[str, Any]:
    """The ``extra=`` of a record reporting ``event`` with structured ``values``
    (each a key of ``FIELDS``)."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"not log fields: {', '.join(sorted(unknown))}")
    return {"event": event, **values}


def seconds_text(seconds: float) -> str:
    """A wait as a log line shows it: ``30 s``, ``1.5 s``."""
    return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.0f} s"


def _utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-22T09:31:00.123Z INFO closed agent:… session … reason idle_expiry; …``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``event`` (``log`` for a record
    that names none), ``logger``, ``message``, the fields it carries, ``traceback``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            if key in record.__dict__:
                data[key] = record.__dict__[key]
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


@contextmanager
def configured_logging(
    log_format: LogFormat = "text", level: int = logging.INFO, stream: TextIO | None = None
) -> Iterator[logging.Handler]:
    """Print records to ``stream`` (default: the current ``sys.stderr``) for the
    length of the ``with`` block: the ledger's own at ``level`` and up, other
    libraries' warnings and errors; the previous configuration comes back after.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root, ours = logging.getLogger(), logging.getLogger(ROOT_LOGGER)
    saved = root.level, ours.level
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    ours.setLevel(level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])
        handler.flush()
