"""Real Hermes gateways recording into one PostgreSQL ledger (issue 14): two Hermes
homes as two hosts at once, and a gateway whose PostgreSQL server cannot be reached.

Each gateway is Hermes's own (``plugin_workers.py hermes-day``: its PluginManager
loads the plugin, its GatewayRunner/SessionStore run the sessions, every hook is
fired with its call site's arguments) in a process of its own, with its own
``HERMES_HOME``, spool and ``ledger-hooks/audit`` (the same hook on every host, as
an operator deploys it: a close is delivered once across the hosts, by whichever
host's worker claims it).
"""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import Backend, pg_uri
from helpers import ManualClock
from pg_support import fresh_database
from test_plugin_capture import line_of
from test_plugin_hermes import (
    CLOSED,
    CONFIG,
    TIMEOUT,
    calls_of,
    check_the_day,
    check_the_events,
    day,
    hermes,
    private_hook,
)

from hermes_ledger.gateway.plugin.spool import pending_records
from hermes_ledger.ledger import open_log


def make_home(root: Path, name: str, config: str) -> Path:
    home = root / name
    home.mkdir(mode=0o700)
    (home / "config.yaml").write_text(config)
    return home


@pytest.fixture
def pg(tmp_path: Path, clock: ManualClock) -> Iterator[Backend]:
    """A fresh PostgreSQL database (these tests are about PostgreSQL only: a home's
    SQLite file is not shared by hosts)."""
    with fresh_database() as dsn:
        yield Backend("postgresql", pg_uri(dsn), clock)


# -- two hosts, one ledger ----------------------------------------------------------------


def test_two_hermes_homes_record_into_one_postgresql_ledger_without_loss_or_doubles(
    tmp_path: Path, pg: Backend
) -> None:
    uri = pg.target
    homes = [make_home(tmp_path, name, CONFIG + f"  db: {uri}\n") for name in ("a", "b")]
    calls = [tmp_path / f"calls-{home.name}.jsonl" for home in homes]
    for home, heard in zip(homes, calls, strict=True):
        private_hook(home / "ledger-hooks", "audit", heard)
        # each host's ledger hooks are registered before either gateway closes anything
        assert hermes(home, "ledger", "sync").returncode == 0
    procs = [day(home, "shared", heard, chat_id=chat)
             for home, heard, chat in zip(homes, calls, ("71", "72"), strict=True)]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    # what a host's worker had not delivered yet when it stopped
    for home in homes:
        synced = hermes(home, "ledger", "sync", "--json")
        assert synced.returncode == 0, synced.stderr
        assert json.loads(synced.stdout)["records"] == 0  # nothing was left in a spool

    with open_log(uri) as log:
        events = list(log.read_all())
        assert log.verify().ok
    keys = [result["key"] for result in results]
    assert sorted({r.stream for r in events}) == sorted(keys)
    for result in results:  # each host's day, whole, once (the SQLite test's checks)
        check_the_events(uri, result["ids"], result["key"])
    assert len({r.event_id for r in events}) == len(events) == pg.count()
    assert [r.position for r in events] == list(range(1, len(events) + 1))
    for home in homes:
        assert pending_records(home) == [] and not (home / "ledger.db").exists()

    # the hook heard each close of both hosts once, across the two hosts
    heard = [c for path in calls for c in calls_of(path)]
    ends = [c["context"] for c in heard if c["event"] == "session:end"]
    expected = {sid: why for r in results for sid, why in zip(r["ids"][:3], CLOSED, strict=True)}
    assert Counter(c["session_id"] for c in ends) == Counter(expected.keys())
    assert all(c["reason"] == expected[c["session_id"]] for c in ends)
    assert len({c["context"]["delivery_id"] for c in heard}) == len(heard)


# -- the server cannot be reached ---------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URI whose server accepts connections and never answers: a connection attempt
    waits for its ``connect_timeout``, as with a server that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:  # accept and keep each connection open, saying nothing
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/ledger"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_an_unreachable_server_never_stops_the_gateway_and_a_later_sync_records_everything(
    tmp_path: Path, pg: Backend, silent_server: str
) -> None:
    # The gateway's config.yaml names a server that never answers: the whole day runs
    # (every callback returns), the worker's passes fail and are logged, the records
    # stay in the spool, and the process exits normally.
    home = make_home(tmp_path, "home", CONFIG + f"  db: {silent_server}\n")
    calls = tmp_path / "calls.jsonl"
    private_hook(home / "ledger-hooks", "audit", calls)
    proc = day(home, "unreachable", calls)
    ids = json.loads(line_of(proc))["ids"]
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "recording the spool in the ledger failed: LedgerError: cannot connect to" in err
    assert "the records stay in" in err
    assert "Traceback" not in err
    waiting = len(pending_records(home))
    assert waiting > 20
    assert not (home / "ledger.db").exists()

    # `hermes ledger sync` with the server back (HERMES_LEDGER_DB wins over config.yaml)
    synced = hermes(home, "ledger", "sync", "--json", env={"HERMES_LEDGER_DB": pg.target})
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert (report["records"], report["applied"], report["skipped"]) == (waiting, waiting, [])
    assert sorted(c["reason"] for c in report["closes"]) == sorted(CLOSED)
    assert report["hooks"]["delivered"] >= 3
    check_the_day(home, ids, calls, target=pg.target)
    again = hermes(home, "ledger", "sync", "--json", env={"HERMES_LEDGER_DB": pg.target})
    assert json.loads(again.stdout)["events"] == 0
    check_the_day(home, ids, calls, target=pg.target)


def test_sync_against_an_unreachable_server_is_an_error_and_keeps_the_spool(
    tmp_path: Path, silent_server: str
) -> None:
    home = make_home(tmp_path, "home", CONFIG + f"  db: {silent_server}\n")
    proc = day(home, "unreachable", tmp_path / "calls.jsonl")
    json.loads(line_of(proc))
    proc.communicate(timeout=TIMEOUT)
    waiting = len(pending_records(home))
    failed = hermes(home, "ledger", "sync")
    assert failed.returncode == 1
    assert failed.stderr.startswith("Error: cannot connect to PostgreSQL at 127.0.0.1:"), failed
    assert "\nTry: " in failed.stderr and "Traceback" not in failed.stderr
    assert "postgresql://" not in failed.stderr  # the ledger named without its URI
    assert len(pending_records(home)) == waiting
