"""Day-to-day queries: ``sessions`` with filters and ``search`` vs the same SQL run raw.

    python bench/queries.py                     # 1,000,000 events (built once, --keep reuses)
    python bench/queries.py --events 5000 --runs 5

Builds a ledger (cached under bench/results/) of realistic sessions: keys on six
platforms and four chat types, users with several keys, sessions that end by idle
expiry, daily or manual reset, messages drawn from a Zipf-like vocabulary, usage
after assistant turns. Events go in through ``Ledger.append`` in batches (the
bulk path, no projections attached while writing); the projections catch up once
at the end.

Then, in one process, each query runs ``--runs`` times through our library
(``listing.list_sessions``, ``search.search_messages``) and the same number of
times as hand-written SQL on a plain apsw connection (same rows, checked),
alternating. The table gives p50 and p95 of each and the ratio raw p50 / ours p50.
Targets (issue 12): ratio >= 0.8 and ours p50 < 100 ms.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apsw

from hermes_ledger.gateway.sessions import reports
from hermes_ledger.gateway.sessions.listing import SessionFilter, list_sessions
from hermes_ledger.gateway.sessions.search import SearchFilter, search_messages
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import format_utc, parse_utc
from hermes_ledger.ledger.events import (
    MemoryFlushed,
    MessageAppended,
    SessionEnded,
    SessionExpired,
    SessionReset,
    SessionStarted,
    Source,
    UsageRecorded,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FIXTURE_VERSION = 1
START = datetime(2026, 11, 1, tzinfo=UTC)
PLATFORMS = ("telegram", "discord", "slack", "whatsapp", "signal", "api_server")
CHAT_TYPES = ("dm", "dm", "dm", "group", "group", "channel", "thread")
ENDINGS = (("idle", "idle_expiry"), ("daily", "daily_reset"), ("/new", "manual_reset"),
           ("/reset", "manual_reset"))  # fmt: skip
_VOCABULARY = (
    "the a to of and in is it you that for on with this be are not have was what can do "
    "session memory flush agent tool search file code error retry deploy branch test merge "
    "config token cost model reply thread channel group user schedule cron daily idle reset "
    "summary note remember weather calendar email invoice meeting report budget travel "
    "ticket server database backup release review design customer order payment refund"
)
_COMMON = _VOCABULARY.split(" ")
# A Zipf-like vocabulary: the common words first, then 3,000 rarer made-up ones.
WORDS = _COMMON + [f"w{n:04d}x" for n in range(3000)]
_WEIGHTS = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(WORDS))))


class _Clock:
    """Ledger time: 2.5 s per append from 2026-11-01 (1M events span ~2 months)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=2500)
        return self.now


def _text(rng: random.Random, low: int, high: int) -> str:
    n = rng.randint(low, high)
    top = _WEIGHTS[-1]
    return " ".join(WORDS[bisect.bisect(_WEIGHTS, rng.random() * top)] for _ in range(n))


def _session(rng: random.Random, sid: str, source: Source, n: int, previous: str | None,
             closes: bool) -> Iterator[object]:  # fmt: skip
    """About ``n`` events of one session: start, turns with usage, and if ``closes``
    a cause, the flush and the end."""
    yield SessionStarted(session_id=sid, source=source, previous_session_id=previous,
                         reason="first" if previous is None else "auto_reset")  # fmt: skip
    body = n - 1 - (4 if closes else 0)
    while body > 0:
        turn: list[object] = [
            MessageAppended(session_id=sid, role="user", content=_text(rng, 3, 25),
                            platform_message_id=str(rng.randint(1, 10**9))),
            MessageAppended(session_id=sid, role="assistant", content=_text(rng, 5, 50),
                            output_tokens=rng.randint(10, 400)),
            UsageRecorded(session_id=sid, input_tokens=rng.randint(100, 4000),
                          output_tokens=rng.randint(10, 400), cost_usd=0.001, model="m"),
        ]  # fmt: skip
        yield from turn[:body]
        body -= len(turn)
    if closes:
        cause, reason = rng.choice(ENDINGS)
        if cause in ("idle", "daily"):
            yield SessionExpired(session_id=sid, reason=cause, deadline=START,
                                 evaluated_at=START)  # fmt: skip
        else:
            yield SessionReset(session_id=sid, trigger=cause)
        yield MessageAppended(session_id=sid, role="user", content="flush now", synthetic=True)
        yield MemoryFlushed(session_id=sid, provider="honcho")
        yield SessionEnded(session_id=sid, reason=reason)


def _key(rng: random.Random, k: int, users: int, per: int) -> Iterator[object]:
    platform, chat_type = PLATFORMS[k % len(PLATFORMS)], rng.choice(CHAT_TYPES)
    user = rng.randrange(users)
    source = Source(platform=platform, chat_type=chat_type, chat_id=str(k),
                    user_id=f"u{user}", user_name=f"User {user}")  # fmt: skip
    # The key's last session stays open for some keys, is closed for the others.
    last_closes = rng.random() < 0.6
    sessions = rng.randint(1, 5)
    for n in range(sessions):
        previous = f"k{k}-s{n - 1}" if n else None
        closes = n < sessions - 1 or last_closes
        yield from _session(rng, f"k{k}-s{n}", source, rng.randint(per // 2, per * 3 // 2),
                            previous, closes)  # fmt: skip


def key_name(k: int) -> str:
    return f"agent:main:{PLATFORMS[k % len(PLATFORMS)]}:chat:{k}"


def generate(path: Path, events: int, seed: int = 12) -> None:
    """``events`` events on ``events // 100`` keys of 1-5 sessions each (about 15%
    more planned, so the keys still going at the cut stay open), interleaved the
    way many chats are."""
    rng = random.Random(seed)
    keys = max(events // 100, 6)
    users = max(keys // 3, 2)
    per = max(int(events * 1.15) // (keys * 3), 8)
    streams = {k: _key(rng, k, users, per) for k in range(keys)}
    done, started = 0, time.perf_counter()
    partial = path.with_suffix(".partial")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    with Ledger.open(partial, clock=_Clock(), synchronous="OFF") as led:
        while streams and done < events:
            for k in list(streams):
                batch = list(itertools.islice(streams[k], min(rng.randint(5, 40), events - done)))
                if not batch:
                    del streams[k]
                    continue
                led.append(key_name(k), batch)  # type: ignore[arg-type]
                done += len(batch)
                if done >= events:
                    break
            print(f"\r  generating: {done:,} events", end="", file=sys.stderr)
    print(f"\r  generated {done:,} events in {time.perf_counter() - started:.0f} s; "
          "projections ...", end="", file=sys.stderr, flush=True)  # fmt: skip
    started = time.perf_counter()
    with reports.open_existing(partial) as led:  # attaching catches the projections up
        led.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    print(f" {time.perf_counter() - started:.0f} s", file=sys.stderr)
    for suffix in ("-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    partial.replace(path)


# -- the queries ----------------------------------------------------------------------

RAW_SESSION_COLUMNS = (
    "m.session_key, m.session_id, m.status, m.platform, m.chat_type, m.user_id, m.user_name,"
    " m.display_name, m.created_at, m.updated_at, m.message_count, m.input_tokens,"
    " m.output_tokens, h.ended_at, h.end_reason, d.deadline"
)
RAW_SESSIONS_FROM = (
    " FROM session_map AS m LEFT JOIN session_history AS h ON h.session_id = m.session_id"
    " LEFT JOIN session_deadlines AS d"
    " ON d.session_key = m.session_key AND d.session_id = m.session_id"
)
RAW_SEARCH = (
    "SELECT m.position, m.session_key, m.session_id, m.role, m.ts, h.platform, h.user_id,"
    " h.user_name, snippet(messages_fts, -1, char(2), char(3), '…', 12)"
    " FROM messages_fts JOIN messages AS m ON m.position = messages_fts.rowid"
    " LEFT JOIN session_history AS h ON h.session_id = m.session_id"
    " WHERE messages_fts MATCH :q{where} ORDER BY messages_fts.rowid DESC LIMIT 20"
)


class Case:
    """One query: ours (the library, on a Ledger) and raw (hand-written SQL, apsw)."""

    def __init__(self, label: str, ours: Callable[[Ledger], list[Any]],
                 raw_sql: str, raw_args: dict[str, Any],
                 same: Callable[[list[Any], list[Any]], bool]) -> None:  # fmt: skip
        self.label, self.ours, self.raw_sql, self.raw_args, self.same = (
            label,
            ours,
            raw_sql,
            raw_args,
            same,
        )


def _same_sessions(ours: list[Any], raw: list[Any]) -> bool:
    return [tuple(r.values()) for r in ours] == [tuple(r) for r in raw]


def _same_hits(ours: list[Any], raw: list[Any]) -> bool:
    return [h.position for h in ours] == [r[0] for r in raw]


def cases(since: str) -> list[Case]:
    telegram_groups = SessionFilter(platform="telegram", chat_type="group", since=since,
                                    all_=True)  # fmt: skip
    user_keys = SessionFilter(user="User 7", key="agent:main:discord:*", all_=True)
    idle = SessionFilter(end_reason="idle_expiry", platform="slack")
    slack_since = SearchFilter(platform="slack", since=since)
    return [
        Case("sessions --platform telegram --chat-type group --since T --all",
             lambda led: list_sessions(led, telegram_groups),
             f"SELECT {RAW_SESSION_COLUMNS}{RAW_SESSIONS_FROM} WHERE m.platform = :p"
             " AND m.chat_type = :c AND m.updated_at >= :since"
             " ORDER BY m.updated_at DESC, m.session_key LIMIT 1000",
             {"p": "telegram", "c": "group", "since": since}, _same_sessions),
        Case("sessions --user 'User 7' --key 'agent:main:discord:*' --all",
             lambda led: list_sessions(led, user_keys),
             f"SELECT {RAW_SESSION_COLUMNS}{RAW_SESSIONS_FROM}"
             " WHERE m.session_key GLOB :k AND (m.user_id = :u OR m.user_name = :u COLLATE NOCASE)"
             " ORDER BY m.updated_at DESC, m.session_key LIMIT 1000",
             {"u": "User 7", "k": "agent:main:discord:*"}, _same_sessions),
        Case("sessions --end-reason idle_expiry --platform slack",
             lambda led: list_sessions(led, idle),
             f"SELECT {RAW_SESSION_COLUMNS}{RAW_SESSIONS_FROM}"
             " WHERE m.platform = :p AND h.end_reason = :r"
             " ORDER BY m.updated_at DESC, m.session_key LIMIT 1000",
             {"p": "slack", "r": "idle_expiry"}, _same_sessions),
        Case("search invoice",
             lambda led: search_messages(led, "invoice"),
             RAW_SEARCH.format(where=""), {"q": "invoice"}, _same_hits),
        Case("search refund --platform slack --since T",
             lambda led: search_messages(led, "refund", slack_since),
             RAW_SEARCH.format(where=" AND h.platform = :p AND m.ts >= :since"),
             {"q": "refund", "p": "slack", "since": since}, _same_hits),
        Case("search 'w0500x' (a rare word)",
             lambda led: search_messages(led, "w0500x"),
             RAW_SEARCH.format(where=""), {"q": "w0500x"}, _same_hits),
        Case("search 'w0500x' --order relevance",
             lambda led: search_messages(led, "w0500x", order="relevance"),
             RAW_SEARCH.format(where="").replace("messages_fts.rowid DESC",
                                                 "messages_fts.rank, m.position"),
             {"q": "w0500x"}, _same_hits),
    ]  # fmt: skip


def _ms(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (seconds) in milliseconds (0.5: the median)."""
    if q == 0.5:
        return statistics.median(samples) * 1000
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def measure(db: Path, runs: int) -> list[tuple[str, int, list[float], list[float]]]:
    """(label, rows, our times, raw times) per case; ours and raw alternate."""
    results = []
    with reports.open_existing(db) as led:
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        first, last = led.query("SELECT min(updated_at), max(updated_at) FROM session_map")[0]
        since = format_utc(parse_utc(first) + (parse_utc(last) - parse_utc(first)) / 2)
        for case in cases(since):
            ours_rows = case.ours(led)
            raw_rows = conn.execute(case.raw_sql, case.raw_args).fetchall()
            if not case.same(ours_rows, raw_rows):
                raise SystemExit(f"{case.label}: ours and raw SQL gave different rows")
            ours_t: list[float] = []
            raw_t: list[float] = []
            for _ in range(runs):
                started = time.perf_counter()
                case.ours(led)
                ours_t.append(time.perf_counter() - started)
                started = time.perf_counter()
                conn.execute(case.raw_sql, case.raw_args).fetchall()
                raw_t.append(time.perf_counter() - started)
            results.append((case.label, len(ours_rows), ours_t, raw_t))
        conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50, help="timed runs of each query")
    parser.add_argument("--keep", action="store_true", help="reuse a ledger built before")
    parser.add_argument("--db", type=Path, default=None, help="where the ledger is built")
    args = parser.parse_args()
    if args.events < 100 or args.runs < 1:
        parser.error("--events must be >= 100 and --runs >= 1")
    db = args.db or RESULTS / f"queries-{args.events}-v{FIXTURE_VERSION}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    if not (args.keep and db.exists()):
        generate(db, args.events)
    with Ledger.open(db, readonly=True) as led:
        events = led.head()
    results = measure(db, args.runs)
    print(f"\nqueries on {events:,} events, {args.runs} runs each (ratio: raw p50 / ours p50)")
    print(f"{'query':<64} {'rows':>5} {'ours p50':>9} {'p95':>7} {'raw p50':>8} {'p95':>7}"
          f" {'ratio':>6}")  # fmt: skip
    met = True
    for label, rows, ours, raw in results:
        p50 = _ms(ours, 0.5)
        ratio = _ms(raw, 0.5) / p50
        met = met and ratio >= 0.8 and p50 < 100
        print(f"{label:<64} {rows:>5} {p50:>6.2f} ms {_ms(ours, 0.95):>7.2f} "
              f"{_ms(raw, 0.5):>5.2f} ms {_ms(raw, 0.95):>7.2f} {ratio:>5.2f}x")  # fmt: skip
    print(f"\ntargets: ratio >= 0.8x and ours p50 < 100 ms -> {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
