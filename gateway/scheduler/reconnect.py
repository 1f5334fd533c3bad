"""Riding out a lost database connection: what ``hermes-ledger run`` does on PostgreSQL.

A runner on one of several gateway hosts keeps going through a PostgreSQL restart
or failover. ``run_reconnecting`` runs pass after pass on the gateway ``open``
gives; when a pass fails because the log's connection is gone (psycopg's
OperationalError, raised as the log's LedgerError, and the connection closed), it
leaves that gateway, logs one warning, and opens a new one through ``open`` (the
composition root: the log, its projectors, the scheduler and the hook queue, all
anew) after 1, 2, 4 … 30 s, until one opens or ``stop`` is set (a SIGTERM during
the wait stops at once). It logs when it is back. A claim the lost pass held is
a lease: it is taken again when it expires (by this runner's new scheduler or
another host's), and the close goes on from where the log says it stands, so a
session still ends once.

The first open is not retried: a wrong connection string or password is a
configuration error and fails at once. Any other error, and every error on a
SQLite ledger (which has no connection to lose), is raised as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import TYPE_CHECKING

from hermes_ledger.gateway.logs import fields, seconds_text
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.backend import EventLog

if TYPE_CHECKING:
    from hermes_ledger.gateway.bootstrap import Gateway

__all__ = ["BACKOFF", "lost_connection", "run_reconnecting", "where"]

log = logging.getLogger(__name__)

BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Seconds before each attempt to open the gateway again; the last repeats."""

OpenGateway = Callable[[], AbstractContextManager["Gateway"]]


def where(ledger: EventLog) -> str:
    """The ledger a gateway runs on: the file as given, or the database's identity
    (``postgresql://host:port/dbname``: no user, no password)."""
    return str(ledger.path) if isinstance(ledger, Ledger) else ledger.identity


def _operational(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised from, psycopg's OperationalError (a
    connection refused, lost or terminated)."""
    import psycopg

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, psycopg.OperationalError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def lost_connection(exc: BaseException, ledger: EventLog) -> bool:
    """Whether ``exc`` (raised by a pass over ``ledger``) means the PostgreSQL
    connection is gone: an OperationalError behind it and the connection closed
    (a cancelled statement or a lock timeout leave the connection open, and are
    not a lost connection). Never on SQLite."""
    if isinstance(ledger, Ledger):
        return False
    from hermes_ledger.ledger.postgres import PostgresLog

    return isinstance(ledger, PostgresLog) and ledger.connection.closed and _operational(exc)


def run_reconnecting(
    open_gateway: OpenGateway,
    stop: threading.Event,
    interval: float | None = None,
    *,
    started: Callable[[Gateway], None] | None = None,
) -> int:
    """``Runner.run`` (a pass every ``interval`` seconds, default the gateway's
    ``tick_interval``, until ``stop`` is set) on the gateway ``open_gateway()``
    opens; after a lost connection, on a new one (see the module docstring).
    ``started(gateway)`` is called once, when the first gateway is open. Returns
    the number of passes made."""
    passes = 0
    with ExitStack() as stack:
        gateway = stack.enter_context(open_gateway())  # not retried: a configuration error
        if started is not None:
            started(gateway)
        while True:
            try:
                return passes + gateway.runner.run(stop, interval)
            except Exception as exc:
                if not lost_connection(exc, gateway.ledger):
                    raise
                passes += gateway.runner.passes
                name = where(gateway.ledger)
                stack.close()  # the old gateway: its log's connection is gone
                reopened = _reopen(open_gateway, stop, name, exc, stack)
                if reopened is None:
                    return passes
                gateway = reopened


def _reopen(
    open_gateway: OpenGateway, stop: threading.Event, name: str, error: Exception, stack: ExitStack
) -> Gateway | None:
    """Open the gateway again after 1, 2, 4 … 30 s until it opens (entered on
    ``stack``) or ``stop`` is set (None). One warning for the outage, one line
    when it is back; the failed attempts between are debug records."""
    message = str(error)
    log.warning(
        "lost the connection to %s (%s); reconnecting in %s", name, message,
        seconds_text(BACKOFF[0]),
        extra=fields("connection_lost", error=message, retry_in=BACKOFF[0]),
    )  # fmt: skip
    began = time.monotonic()
    attempt = 0
    while True:
        delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
        if stop.wait(delay):
            return None
        attempt += 1
        try:
            gateway = stack.enter_context(open_gateway())
        except Exception as exc:
            if not _operational(exc):  # the server is back, but refuses the ledger
                raise
            following = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            log.debug(
                "still cannot reach %s (%s); next try in %s", name, exc, seconds_text(following),
                extra=fields("reconnect_failed", error=str(exc), attempt=attempt,
                             retry_in=following),
            )  # fmt: skip
            continue
        log.info(
            "reconnected to %s after %s (%d attempt%s)", name,
            seconds_text(time.monotonic() - began), attempt, "" if attempt == 1 else "s",
            extra=fields("reconnected", attempt=attempt),
        )  # fmt: skip
        return gateway
