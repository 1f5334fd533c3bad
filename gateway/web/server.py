"""Datasette over a ledger file, read-only: what ``hermes-ledger serve`` runs.

The ledger is opened as a *mutable* Datasette database, so every read connection
is SQLite's ``mode=ro`` and sees the WAL: what a running gateway appended a moment
ago is on the next page load. (``datasette --immutable`` would be wrong for a live
ledger: an immutable file is read as if no other process could change it, so it
ignores the WAL, and serves a stale or inconsistent view.) Every connection
Datasette opens also gets ``PRAGMA query_only``, so nothing it runs can write,
whatever a plugin or a query asks. Datasette is the optional ``web`` extra.

A PostgreSQL ledger is served as a read-only SQLite snapshot taken at start
(``serve_postgres``, ``gateway/web/snapshot.py``): Datasette reads SQLite only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hermes_ledger.gateway.sessions import reports
from hermes_ledger.gateway.web.metadata import DATABASE_NAME, build_metadata
from hermes_ledger.gateway.web.snapshot import PostgresSnapshot, postgres_snapshot
from hermes_ledger.ledger import LedgerError

__all__ = [
    "WEB_EXTRA_HINT",
    "build_datasette",
    "is_loopback",
    "listen",
    "prepare_ledger",
    "serve",
    "serve_postgres",
]

WEB_EXTRA_HINT = "pip install 'hermes-ledger[web]'"
"""How to install what ``serve`` needs."""

_PLUGIN_NAME = "hermes_ledger_read_only"


def _load_datasette() -> Any:
    """The ``datasette`` package with the read-only plugin registered, or a
    LedgerError saying how to install it."""
    try:
        import datasette
        import datasette.app
        import datasette.database
        import datasette.plugins
        import uvicorn  # noqa: F401 - Datasette's server, needed by serve
    except ImportError as exc:
        raise LedgerError(
            f"serve needs Datasette, which is not installed (no module {exc.name!r})",
            hint=WEB_EXTRA_HINT,
        ) from exc
    pm = datasette.plugins.pm
    if pm.get_plugin(_PLUGIN_NAME) is None:

        class ReadOnly:
            """Every connection Datasette opens to the ledger refuses writes (not
            those to its own in-memory ``_internal`` catalogue, which it writes)."""

            @staticmethod
            @datasette.hookimpl
            def prepare_connection(conn: Any, database: str, datasette: Any) -> None:
                if database == DATABASE_NAME:
                    conn.execute("PRAGMA query_only = 1")

        pm.register(ReadOnly, name=_PLUGIN_NAME)
    return datasette


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prepare_ledger(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a ledger (NoLedgerError, NotALedgerError…) and bring
    its projections up to date, since the server itself never writes them."""
    reports.open_existing(path).close()
    return Path(path)


def build_datasette(path: str | os.PathLike[str]) -> Any:
    """A Datasette instance serving the ledger at ``path`` read-only, as
    ``/ledger``, with the ledger's metadata. Does not touch the file."""
    ds = _load_datasette()
    app = ds.app.Datasette([], metadata=build_metadata(DATABASE_NAME))
    database = ds.database.Database(app, path=str(Path(path).resolve()), is_mutable=True)
    app.add_database(database, name=DATABASE_NAME)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: a free port), or a LedgerError
    saying why it cannot be had (the port is taken, the address is not this
    machine's…)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise LedgerError(
            f"cannot listen on {host}: {exc.strerror or exc}", hint="check --host"
        ) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise LedgerError(
            f"cannot listen on {host} port {port}: {exc.strerror or exc}",
            hint="choose another --port (or stop what is using it)",
        ) from exc
    return sock


def serve(
    path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the ledger at ``path`` until SIGINT/SIGTERM. ``ready`` is called with
    the ledger's URL once the port is listening (connections wait in its backlog
    until Datasette takes them)."""
    app = build_datasette(prepare_ledger(path))
    with listen(host, port) as sock:
        _run(app, sock, host, ready)


def serve_postgres(
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    ready: Callable[[str, PostgresSnapshot], None] | None = None,
) -> None:
    """Serve a read-only SQLite snapshot of the PostgreSQL ledger at ``dsn``, taken
    now (``snapshot.postgres_snapshot``), until SIGINT/SIGTERM; the snapshot is
    removed when it stops. The port is taken first, so a port in use costs no
    snapshot. ``ready`` gets the URL and the snapshot."""
    _load_datasette()  # without Datasette, say so before exporting anything
    with _sigterm_exits(), listen(host, port) as sock, postgres_snapshot(dsn) as snap:
        app = build_datasette(snap.path)
        _run(app, sock, host, None if ready is None else lambda url: ready(url, snap))


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit here, so the snapshot is removed: uvicorn handles the
    signal, shuts down, then raises it again with the handler it found in place, and
    the default one would end the process without running any cleanup."""

    def exit_now(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(app: Any, sock: socket.socket, host: str, ready: Callable[[str], None] | None) -> None:
    """Start ``app`` on the listening ``sock`` and run it until SIGINT/SIGTERM."""
    import uvicorn

    asyncio.run(app.invoke_startup())
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if ready is not None:
        ready(f"http://{shown}:{bound}/{DATABASE_NAME}")
    config = uvicorn.Config(app.app(), log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
