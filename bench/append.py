"""Append throughput: the ledger against raw apsw and the eventsourcing library.

One run prints one table of events/s, then the ratios docs/design.md ("Performance") sets
targets for:

  (a) raw apsw INSERT into the events table (migrations 0001 and 0003), one event per
      BEGIN IMMEDIATE…COMMIT
  (b) Ledger.append(stream, [event]), one event per call
  (c) Ledger.append(stream, events) with --batch events per call
  (d) raw apsw executemany, --batch rows per transaction
  (e) eventsourcing 9.5 on SQLite: get -> trigger event -> save, one event per save
  (f) Ledger.append with the projections attached (session map, history, transcript + FTS
      kept in the same transaction), one event per call
  (g) raw apsw doing the same writes as (f) with precomputed values: the event row, the
      messages row and its FTS entry, the history and map updates, the checkpoints

Every row gets a fresh file in one temporary directory (removed at the end). Rows that
are compared run interleaved (a, b, e; then c, d): each is cut into --rounds steps that
take turns in rotating order, so a busy machine slows them alike and the ratios hold. Building
the events (pydantic models, raw row tuples) is not timed: that is the producer's cost.

    python bench/append.py [--events N] [--synchronous NORMAL] [--json]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import platform
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, closing
from importlib import metadata
from pathlib import Path
from typing import Any

import apsw

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source, body_json

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
DDL = (MIGRATIONS / "0001_events.sql", MIGRATIONS / "0003_occurred_at.sql")
"""The ``events`` table as a ledger has it: its columns, indexes and triggers, and the
business-time column with its index (migration 2 holds only the gateway's tables)."""
INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
META = '{"schema_version":1}'
RECORDED_AT = "2026-05-22T10:15:00.000000Z"
HASH = "ab" * 32
TARGETS = {"b/a": 0.7, "c/d": 0.7, "b/e": 5.0, "f/g": 0.7}
# Rows that share turns; the batched rows run apart, their big writes would slow the rest.
INTERLEAVED = (["a", "b", "e"], ["c", "d"], ["f", "g"])
WORDS = ("the", "session", "gateway", "ledger", "message", "reply", "agent", "telegram",
         "memory", "flush", "token", "schedule", "reset", "idle", "daily", "context", "tool",
         "result", "user", "assistant", "summary", "note")  # fmt: skip


def session_key(n: int) -> str:
    return f"agent:main:telegram:dm:{n}"


def session_id(n: int) -> str:
    return f"20260522_101500_{n:08x}"


def message(rng: random.Random, stream_no: int, i: int) -> MessageAppended:
    """A realistic message_appended event with ~200 characters of content."""
    content = " ".join(rng.choice(WORDS) for _ in range(40))[:200]
    user = i % 2 == 0
    return MessageAppended(
        session_id=session_id(stream_no),
        role="user" if user else "assistant",
        content=content,
        input_tokens=0 if user else rng.randrange(50, 4000),
        output_tokens=0 if user else rng.randrange(10, 800),
        platform_message_id=str(100000 + i) if user else None,
    )


def steps(
    total: int, per_write: int, streams: int, rounds: int, build: Callable[..., Any]
) -> Iterator[list]:
    """``rounds`` lists of writes ``(stream_no, [items])``, ``per_write`` items per write,
    built just in time (untimed) so memory stays flat."""
    rng = random.Random(42)
    counter = itertools.count()
    bounds = [total // per_write * k // rounds for k in range(rounds + 1)]
    for lo, hi in itertools.pairwise(bounds):
        yield [
            (n % streams, [build(rng, n % streams, next(counter)) for _ in range(per_write)])
            for n in range(lo, hi)
        ]


def timed(
    units: Iterator[list], write: Callable[[int, list], None]
) -> Generator[float, None, None]:
    """Run ``write`` over each step's writes; yield the seconds spent inside the writes only."""
    for step in units:
        t0 = time.perf_counter()
        for stream_no, items in step:
            write(stream_no, items)
        yield time.perf_counter() - t0


# -- raw apsw ---------------------------------------------------------------------


def raw_connection(path: Path, synchronous: str, *, create: bool = True) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.setbusytimeout(30_000)
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute(f"PRAGMA synchronous = {synchronous}").fetchall()
    conn.execute("PRAGMA foreign_keys = ON").fetchall()
    if create:
        for script in DDL:
            for _ in conn.execute(script.read_text("utf-8")):
                pass  # apsw runs a multi-statement script as it is consumed
    return conn


def bench_raw(
    path: Path, synchronous: str, total: int, per_txn: int, streams: int, rounds: int
) -> Generator[float, None, None]:
    conn = raw_connection(path, synchronous)
    versions = [0] * streams
    position = 0

    def build(rng: random.Random, s: int, i: int) -> tuple:
        # Precomputed row of the ledger's shape (same event body as (b)/(c)).
        nonlocal position
        position += 1
        versions[s] += 1
        m = message(rng, s, i)
        return (position, m.event_id, session_key(s), versions[s], m.type, m.session_id,
                body_json(m), META, RECORDED_AT, HASH)  # fmt: skip

    def write(_s: int, rows: list) -> None:
        conn.execute("BEGIN IMMEDIATE")
        if per_txn == 1:
            conn.execute(INSERT, rows[0])
        else:
            conn.executemany(INSERT, rows)
        conn.execute("COMMIT")

    try:
        yield from timed(steps(total, per_txn, streams, rounds, build), write)
    finally:
        conn.close()


# -- the ledger -------------------------------------------------------------------


def bench_ledger(
    path: Path, synchronous: str, total: int, per_call: int, streams: int, rounds: int
) -> Generator[float, None, None]:
    with Ledger.open(path, synchronous=synchronous) as ledger:
        for s in range(streams):  # untimed: every session starts before its messages
            source = Source(platform="telegram", chat_id=str(1000 + s), user_id=str(1000 + s))
            ledger.append(session_key(s), [SessionStarted(session_id=session_id(s), source=source)])

        def write(s: int, events: list) -> None:
            ledger.append(session_key(s), events)

        yield from timed(steps(total, per_call, streams, rounds, message), write)


def bench_ledger_projected(
    path: Path, synchronous: str, total: int, streams: int, rounds: int
) -> Generator[float, None, None]:
    with Ledger.open(path, synchronous=synchronous) as ledger:
        projections.attach(ledger)
        for s in range(streams):
            source = Source(platform="telegram", chat_id=str(1000 + s), user_id=str(1000 + s))
            ledger.append(session_key(s), [SessionStarted(session_id=session_id(s), source=source)])

        def write(s: int, events: list) -> None:
            ledger.append(session_key(s), events)

        yield from timed(steps(total, 1, streams, rounds, message), write)


RAW_PROJECTION_WRITES = tuple(
    (sql, max(int(n) for n in re.findall(r"\?(\d)", sql)))
    for sql in (
        "INSERT INTO messages (position, session_id, session_key, role, content, tool_calls,"
        " tool_name, tool_call_id, input_tokens, output_tokens, platform_message_id, ts)"
        " VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, NULL, 0, 0, NULL, ?6)",
        "INSERT INTO messages_fts (rowid, content) VALUES (?1, ?5)",
        "UPDATE session_history SET message_count = message_count + 1,"
        " first_message_at = coalesce(first_message_at, ?6), last_message_at = ?6"
        " WHERE session_id = ?2",
        "UPDATE session_map SET updated_at = ?6, message_count = message_count + 1"
        " WHERE session_key = ?3",
        "UPDATE projection_checkpoints SET position = ?1",
    )
)


def bench_raw_projected(
    path: Path, synchronous: str, total: int, streams: int, rounds: int
) -> Generator[float, None, None]:
    # The same tables and indexes as (f): let the projections create them, then write
    # to them directly with plain values (no JSON extraction, no upserts).
    with Ledger.open(path, synchronous=synchronous) as ledger:
        projections.attach(ledger)
        for s in range(streams):
            source = Source(platform="telegram", chat_id=str(1000 + s), user_id=str(1000 + s))
            ledger.append(session_key(s), [SessionStarted(session_id=session_id(s), source=source)])
        position, versions = ledger.head(), [1] * streams
    conn = raw_connection(path, synchronous, create=False)

    def build(rng: random.Random, s: int, i: int) -> tuple:
        nonlocal position
        position += 1
        versions[s] += 1
        m = message(rng, s, i)
        row = (position, m.event_id, session_key(s), versions[s], m.type, m.session_id,
               body_json(m), META, RECORDED_AT, HASH)  # fmt: skip
        return row, (position, m.session_id, session_key(s), m.role, m.content, RECORDED_AT)

    def write(_s: int, items: list) -> None:
        row, values = items[0]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT, row)
        for sql, arity in RAW_PROJECTION_WRITES:
            conn.execute(sql, values[:arity])
        conn.execute("COMMIT")

    try:
        yield from timed(steps(total, 1, streams, rounds, build), write)
    finally:
        conn.close()


# -- eventsourcing ----------------------------------------------------------------


@functools.cache
def session_aggregate() -> type:
    """The aggregate class, defined once (eventsourcing registers each class by topic)."""
    from eventsourcing.domain import Aggregate, event

    class Session(Aggregate):
        @event("Started")
        def __init__(self, key: str) -> None:
            self.key = key
            self.messages = 0

        @event("MessageAppended")
        def append_message(self, body: dict) -> None:
            self.messages += 1

    return Session


def bench_eventsourcing(
    path: Path, synchronous: str, total: int, streams: int, rounds: int, found: dict[str, str]
) -> Generator[float, None, None]:
    """get -> trigger -> save per event; ``found["synchronous"]`` is the level in effect."""
    from eventsourcing.application import Application
    from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool

    Session = session_aggregate()
    # eventsourcing has no synchronous setting (its connections keep SQLite's default,
    # FULL); to compare like with like, set it on each connection the pool opens.
    original = SQLiteConnectionPool._create_connection

    def create_connection(pool: SQLiteConnectionPool) -> SQLiteConnection:
        conn = original(pool)
        conn._sqlite_conn.execute(f"PRAGMA synchronous = {synchronous}")
        return conn

    SQLiteConnectionPool._create_connection = create_connection  # type: ignore[method-assign, assignment]
    try:
        app: Application = Application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                                            "SQLITE_DBNAME": str(path)})  # fmt: skip
        aggregates = [Session(session_key(s)) for s in range(streams)]
        app.save(*aggregates)
        ids = [agg.id for agg in aggregates]

        def build(rng: random.Random, s: int, i: int) -> dict:
            return json.loads(body_json(message(rng, s, i)))  # the same payload

        def write(s: int, bodies: list) -> None:
            agg: Any = app.repository.get(ids[s])
            agg.append_message(bodies[0])
            app.save(agg)

        with app.factory.datastore.get_connection(commit=False) as c:  # type: ignore[attr-defined]
            level = c._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0]
        found["synchronous"] = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, "?")
        yield from timed(steps(total, 1, streams, rounds, build), write)
        app.close()
    finally:
        SQLiteConnectionPool._create_connection = original  # type: ignore[method-assign]


# -- the run ----------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    sync, n, big, es_n, batch, streams, rounds = (
        args.synchronous, args.events, args.batched or 10 * args.events,
        args.es_events or max(1, args.events // 4), args.batch, args.streams, args.rounds,
    )  # fmt: skip
    big = max(batch, big - big % batch)
    rounds = min(rounds, n, es_n)  # a row with fewer writes than rounds has empty steps
    found = {"synchronous": "?"}
    with tempfile.TemporaryDirectory(prefix="hermes-bench-") as tmp, ExitStack() as stack:
        files = iter(Path(tmp) / f"{k}.db" for k in itertools.count())
        plan = {  # key: (what, events, per txn, timed steps)
            "a": ("raw apsw INSERT", n, 1, bench_raw(next(files), sync, n, 1, streams, rounds)),
            "b": ("Ledger.append, 1 event/call", n, 1,
                  bench_ledger(next(files), sync, n, 1, streams, rounds)),
            "c": (f"Ledger.append, {batch} events/call", big, batch,
                  bench_ledger(next(files), sync, big, batch, streams, rounds)),
            "d": ("raw apsw executemany", big, batch,
                  bench_raw(next(files), sync, big, batch, streams, rounds)),
            "e": ("eventsourcing get/trigger/save", es_n, 1,
                  bench_eventsourcing(next(files), sync, es_n, streams, rounds, found)),
            "f": ("Ledger.append + projections, 1/call", n, 1,
                  bench_ledger_projected(next(files), sync, n, streams, rounds)),
            "g": ("raw apsw, same writes as (f), 1/txn", n, 1,
                  bench_raw_projected(next(files), sync, n, streams, rounds)),
        }  # fmt: skip
        seconds = dict.fromkeys(plan, 0.0)
        for key in plan:
            stack.enter_context(closing(plan[key][3]))  # closes every file, even on errors
        for group in INTERLEAVED:
            for r in range(rounds):  # rotate who goes first, so no row always follows another
                for key in group[r % len(group) :] + group[: r % len(group)]:
                    seconds[key] += next(plan[key][3])
            for key in group:
                plan[key][3].close()
    rows = {
        key: {"what": what, "events": count, "per_txn": per_txn, "seconds": seconds[key],
              "events_per_s": count / seconds[key]}
        for key, (what, count, per_txn, _) in plan.items()
    }  # fmt: skip
    rate = {k: r["events_per_s"] for k, r in rows.items()}
    ratios = {
        name: {"value": rate[name[0]] / rate[name[2]], "target": target,
               "pass": rate[name[0]] / rate[name[2]] >= target}
        for name, target in TARGETS.items()
    }  # fmt: skip
    body_size = len(body_json(message(random.Random(0), 0, 0)))
    notes = [
        f"{streams} streams; message_appended bodies of ~{body_size} bytes of JSON;"
        " building events and rows is untimed",
        "raw rows: precomputed tuples (position, version, hash, recorded_at given), INSERT only",
        f"eventsourcing: {streams} aggregates, get replays each one (no cache, no snapshots); "
        f"it runs on the stdlib sqlite3 (SQLite {sqlite3.sqlite_version}), not apsw's SQLite",
        "eventsourcing has no synchronous setting (default FULL); the bench sets PRAGMA "
        f"synchronous on its connections: in effect {found['synchronous']}"
        + ("" if found["synchronous"] == sync else f" -- NOT EQUAL to {sync}"),
        f"a, b, e interleaved in {rounds} rounds, then c, d, then f, g; seconds count only"
        " the writes",
        "g writes the event row, the messages row, its FTS entry, the session_history and"
        " session_map updates and the checkpoints, with precomputed values",
    ]
    versions = {"python": platform.python_version(), "sqlite": apsw.sqlite_lib_version(),
                "apsw": apsw.apsw_version(), "eventsourcing": metadata.version("eventsourcing"),
                "stdlib_sqlite3": sqlite3.sqlite_version}  # fmt: skip
    return {"synchronous": sync, "versions": versions, "rows": rows, "ratios": ratios,
            "notes": notes}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    v = result["versions"]
    out = [
        f"hermes-ledger append benchmark: synchronous={result['synchronous']}, WAL",
        f"Python {v['python']}, SQLite {v['sqlite']}, apsw {v['apsw']}, "
        f"eventsourcing {v['eventsourcing']}",
        "",
        f"{'':4}{'what':36}{'events':>9}{'per txn':>9}{'seconds':>9}{'events/s':>11}",
    ]
    for key, r in result["rows"].items():
        out.append(
            f"({key}) {r['what']:36}{r['events']:>9,}{r['per_txn']:>9,}"
            f"{r['seconds']:>9.2f}{r['events_per_s']:>11,.0f}"
        )
    out.append("")
    for name, r in result["ratios"].items():
        mark = "PASS" if r["pass"] else "short"
        out.append(f"{name:4}{r['value']:>8.3f}   target >= {r['target']:<5g} {mark}")
    out.append("")
    out += [f"- {note}" for note in result["notes"]]
    return "\n".join(out)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=positive, default=20_000, help="single-event appends (a, b)")
    p.add_argument("--batched", type=positive, help="events for the batched rows (default 10x)")
    p.add_argument("--es-events", type=positive, help="eventsourcing saves (default events/4)")
    p.add_argument("--batch", type=positive, default=1000, help="events per batched transaction")
    p.add_argument("--streams", type=positive, default=100, help="sessions to spread events over")
    p.add_argument("--synchronous", default="NORMAL", choices=["OFF", "NORMAL", "FULL", "EXTRA"],
                   type=str.upper)  # fmt: skip
    p.add_argument("--rounds", type=positive, default=20, help="interleaved steps per row")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
