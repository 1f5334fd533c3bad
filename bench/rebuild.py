"""Rebuild throughput: a hand-written pure-SQL rebuild vs ``projections.rebuild``.

    python bench/rebuild.py                      # 1,000,000 events over 10,000 sessions
    python bench/rebuild.py --events 100000 --sessions 1000

Generates a ledger (once; cached under bench/results/, reused with --keep), then
runs each rebuild in its own subprocess so each reports its own peak RSS:

* pure SQL: ATTACH a fresh database and fill the same tables with one
  INSERT … SELECT (json_extract) per table, plus the FTS5 'rebuild' command;
* projections.rebuild: our rebuild (chunked replay into fresh tables, atomic swap).

Both must produce the same rows (checked, and printed), so the ratio compares
the same work. Targets: ours >= 0.75x the pure-SQL events/s; peak RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import apsw  # noqa: E402

from hermes_ledger.ledger import Ledger  # noqa: E402
from hermes_ledger.ledger.events import (  # noqa: E402
    MemoryFlushed,
    MemoryFlushFailed,
    MessageAppended,
    SessionEnded,
    SessionExpired,
    SessionReset,
    SessionStarted,
    Source,
    UsageRecorded,
)
from hermes_ledger.projections.quoting import Target  # noqa: E402
from hermes_ledger.projections.statements import TS, utc_text  # noqa: E402
from hermes_ledger.projections.tables import MESSAGES, MESSAGES_FTS, SESSION_HISTORY, SESSION_MAP  # noqa: E402

RESULTS = ROOT / "bench" / "results"
_VOCABULARY = (
    "the a to of and in is it you that for on with this be are not have was what can do "
    "session memory flush telegram discord slack agent tool search file code error retry "
    "deploy branch test merge config token cost model reply thread channel group user "
    "schedule cron daily idle reset summary note remember weather calendar email invoice"
)
WORDS = _VOCABULARY.split(" ")

# -- the ledger ------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=2500)
        return self.now


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _session_events(
    rng: random.Random, sid: str, source: Source, n: int, previous: str | None, closes: bool
) -> Iterator[object]:
    """About ``n`` events: a start, messages (some tool calls, some with occurred_at),
    usage after assistant turns, and, if ``closes``, cause → flush → end."""
    yield SessionStarted(
        session_id=sid,
        source=source,
        reason="first" if previous is None else "auto_reset",
        previous_session_id=previous,
    )
    body = n - 1 - (4 if closes else 0)
    when = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 86400 * 3))
    pending: list[object] = []
    while body > 0:
        when += timedelta(seconds=rng.randint(1, 90))
        stamp = when if rng.random() < 0.5 else None
        pending.append(MessageAppended(session_id=sid, role="user", content=_text(rng, 3, 30),
                                       platform_message_id=str(rng.randint(1, 10**9)),
                                       occurred_at=stamp))  # fmt: skip
        if rng.random() < 0.15:
            call = f"c{rng.randint(1, 10**6)}"
            pending.append(MessageAppended(
                session_id=sid, role="assistant", content=None,
                tool_calls=[{"id": call, "type": "function",
                             "function": {"name": "search", "arguments": '{"q": "x"}'}}],
                output_tokens=rng.randint(5, 50),
            ))  # fmt: skip
            pending.append(MessageAppended(session_id=sid, role="tool", content=_text(rng, 5, 40),
                                           tool_name="search", tool_call_id=call))  # fmt: skip
        pending.append(MessageAppended(session_id=sid, role="assistant",
                                       content=_text(rng, 5, 60),
                                       output_tokens=rng.randint(10, 400)))  # fmt: skip
        pending.append(UsageRecorded(session_id=sid, input_tokens=rng.randint(100, 4000),
                                     output_tokens=rng.randint(10, 400),
                                     cache_read_tokens=rng.randint(0, 2000),
                                     cost_usd=round(rng.random() / 100, 6), model="m"))  # fmt: skip
        yield from pending[:body]
        body -= min(len(pending), body)
        pending.clear()
    if closes:
        if rng.random() < 0.5:
            yield SessionReset(session_id=sid, trigger="/new")
        else:
            yield SessionExpired(session_id=sid, reason="idle", deadline=when,
                                 evaluated_at=when + timedelta(minutes=1))  # fmt: skip
        yield MessageAppended(session_id=sid, role="user", content="flush now", synthetic=True)
        if rng.random() < 0.1:
            yield MemoryFlushFailed(session_id=sid, provider="honcho", error="timeout")
        else:
            yield MemoryFlushed(session_id=sid, provider="honcho", detail="ok")
        yield SessionEnded(session_id=sid, reason="auto_reset")


def _key_events(rng: random.Random, k: int, sessions: int, per_session: int) -> Iterator[object]:
    """The events of key ``k``: its ``sessions`` sessions one after the other."""
    platform = ("telegram", "discord", "slack", "whatsapp", "api_server")[k % 5]
    source = Source(platform=platform, chat_id=str(k), user_id=f"u{k}", user_name=f"User {k}")
    for n in range(sessions):
        previous = f"k{k}-s{n - 1}" if n else None
        yield from _session_events(
            rng, f"k{k}-s{n}", source, per_session, previous, closes=n < sessions - 1
        )


def generate(path: Path, events: int, sessions: int, keys: int, seed: int = 7) -> None:
    """``events`` events over ``sessions`` sessions on ``keys`` keys, interleaved the way
    many chats are: every round, each key appends a batch of its current session.
    Streams the events (nothing like the whole log is held in memory)."""
    rng = random.Random(seed)
    per_session = max(events // sessions, 8)
    streams = [
        _key_events(rng, k, sessions // keys + (k < sessions % keys), per_session)
        for k in range(keys)
    ]
    done = 0
    started = time.perf_counter()
    with Ledger.open(path, clock=_Clock()) as led:
        while streams:
            alive = []
            for k, stream in enumerate(streams):
                batch = list(itertools.islice(stream, rng.randint(5, 40)))
                if batch:
                    led.append(f"agent:main:{k % 5}:dm:{k}", batch)  # type: ignore[arg-type]
                    done += len(batch)
                    alive.append(stream)
            streams = alive
            print(f"\r  generating: {done:,} events", end="", file=sys.stderr)
    print(f"\r  generated {done:,} events in {time.perf_counter() - started:.0f}s" + " " * 20,
          file=sys.stderr)  # fmt: skip


# -- the two rebuilds -----------------------------------------------------------------

B = Target("b")  # the attached database of the pure-SQL rebuild
BODY = "e.data"  # every event in the bench is in its current shape

PURE_SQL = [
    f"""INSERT INTO {B.table("messages")} SELECT e.position, e.session_id, e.stream,
    {BODY} ->> '$.role', {BODY} ->> '$.content', nullif({BODY} -> '$.tool_calls', 'null'),
    {BODY} ->> '$.tool_name', {BODY} ->> '$.tool_call_id',
    coalesce({BODY} ->> '$.input_tokens', 0), coalesce({BODY} ->> '$.output_tokens', 0),
    {BODY} ->> '$.platform_message_id', {TS}
FROM main.events AS e
WHERE e.type = 'message_appended' AND NOT coalesce({BODY} ->> '$.synthetic', 0)""",
    f"INSERT INTO {B.table('messages_fts')} (messages_fts) VALUES ('rebuild')",
    f"""INSERT INTO {B.table("session_history")}
WITH first AS (
    SELECT e.session_id, e.stream, min(e.position) FROM main.events AS e
    WHERE e.session_id IS NOT NULL GROUP BY e.session_id
), starts AS (
    SELECT e.session_id, min(e.position), {BODY} ->> '$.source.platform' AS platform,
        {BODY} ->> '$.source.chat_type' AS chat_type, {BODY} ->> '$.source.user_id' AS user_id,
        {BODY} ->> '$.source.user_name' AS user_name, {BODY} ->> '$.reason' AS reason,
        {BODY} ->> '$.previous_session_id' AS previous_session_id, {TS} AS ts
    FROM main.events AS e WHERE e.type = 'session_started' GROUP BY e.session_id
), messages AS (
    SELECT e.session_id, count(*) AS n, min({TS}) AS first_at, max({TS}) AS last_at
    FROM main.events AS e
    WHERE e.type = 'message_appended' AND NOT coalesce({BODY} ->> '$.synthetic', 0)
    GROUP BY e.session_id
), usage AS (
    SELECT e.session_id, sum({BODY} ->> '$.input_tokens') AS i,
        sum({BODY} ->> '$.output_tokens') AS o, sum({BODY} ->> '$.cache_read_tokens') AS cr,
        sum({BODY} ->> '$.cache_write_tokens') AS cw,
        sum(CAST(round(coalesce({BODY} ->> '$.cost_usd', 0) * 1e9) AS INTEGER)) AS cost
    FROM main.events AS e WHERE e.type = 'usage_recorded' GROUP BY e.session_id
), causes AS (
    SELECT e.session_id, min(e.position),
        CASE e.type WHEN 'session_reset' THEN 'reset' ELSE 'expired' END AS cause,
        CASE e.type WHEN 'session_reset' THEN {BODY} ->> '$.trigger' ELSE {BODY} ->> '$.reason' END
            AS detail,
        e.meta ->> '$.actor' AS actor, {utc_text(f"({BODY} ->> '$.deadline')")} AS deadline,
        {TS} AS ts
    FROM main.events AS e WHERE e.type IN ('session_reset', 'session_expired')
    GROUP BY e.session_id
), flushes AS (
    SELECT e.session_id, max(e.position),
        CASE e.type WHEN 'memory_flushed' THEN 'ok' WHEN 'memory_flush_failed' THEN 'failed'
            ELSE 'skipped' END AS status,
        {BODY} ->> '$.provider' AS provider,
        CASE e.type WHEN 'memory_flushed' THEN {BODY} ->> '$.detail'
            WHEN 'memory_flush_failed' THEN {BODY} ->> '$.error' ELSE {BODY} ->> '$.reason' END
            AS detail,
        {TS} AS ts, sum(e.type <> 'memory_flush_skipped') AS attempts
    FROM main.events AS e
    WHERE e.type IN ('memory_flushed', 'memory_flush_failed', 'memory_flush_skipped')
    GROUP BY e.session_id
), ends AS (
    SELECT e.session_id, min(e.position), {BODY} ->> '$.reason' AS reason, {TS} AS ts
    FROM main.events AS e WHERE e.type = 'session_ended' GROUP BY e.session_id
)
SELECT f.session_id, f.stream, s.platform, s.chat_type, s.user_id, s.user_name, s.reason,
    s.previous_session_id, s.ts, m.first_at, m.last_at, coalesce(m.n, 0),
    coalesce(u.i, 0), coalesce(u.o, 0), coalesce(u.cr, 0), coalesce(u.cw, 0), coalesce(u.cost, 0),
    c.cause, c.detail, c.actor, c.deadline, c.ts,
    x.status, coalesce(x.attempts, 0), x.provider, x.detail, x.ts, n.ts, n.reason
FROM first AS f
LEFT JOIN starts AS s USING (session_id) LEFT JOIN messages AS m USING (session_id)
LEFT JOIN usage AS u USING (session_id) LEFT JOIN causes AS c USING (session_id)
LEFT JOIN flushes AS x USING (session_id) LEFT JOIN ends AS n USING (session_id)""",
    f"""INSERT INTO {B.table("session_map")}
WITH keys AS (
    SELECT e.stream, min({TS}) AS created_at, max({TS}) AS updated_at
    FROM main.events AS e GROUP BY e.stream
), current AS (
    SELECT e.stream, max(e.position), e.session_id, {BODY} ->> '$.reason' AS reason,
        {BODY} -> '$.source' AS origin, {BODY} ->> '$.source.platform' AS platform,
        {BODY} ->> '$.source.chat_type' AS chat_type, {BODY} ->> '$.source.chat_id' AS chat_id,
        {BODY} ->> '$.source.chat_name' AS chat_name, {BODY} ->> '$.source.user_id' AS user_id,
        {BODY} ->> '$.source.user_name' AS user_name,
        {BODY} ->> '$.source.thread_id' AS thread_id, {TS} AS ts
    FROM main.events AS e WHERE e.type = 'session_started' GROUP BY e.stream
)
SELECT k.stream, c.session_id,
    CASE WHEN c.session_id IS NULL THEN NULL WHEN h.ended_at IS NOT NULL THEN 'closed'
        WHEN h.close_requested_at IS NOT NULL THEN 'closing' ELSE 'open' END,
    c.platform, c.chat_type, c.chat_id, c.chat_name, c.user_id, c.user_name, c.thread_id,
    coalesce(c.chat_name, c.user_name, c.user_id, c.chat_id), c.origin, c.reason, c.ts,
    k.created_at, k.updated_at, coalesce(h.message_count, 0), coalesce(h.input_tokens, 0),
    coalesce(h.output_tokens, 0), coalesce(h.cache_read_tokens, 0),
    coalesce(h.cache_write_tokens, 0), coalesce(h.cost_nano_usd, 0)
FROM keys AS k LEFT JOIN current AS c USING (stream)
LEFT JOIN {B.table("session_history")} AS h ON h.session_id = c.session_id""",
]
TABLES = (SESSION_HISTORY, SESSION_MAP, MESSAGES, MESSAGES_FTS)


def run_pure_sql(db: Path, out: Path) -> dict[str, float]:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    conn = apsw.Connection(str(db))  # only reads the ledger; writes the attached file
    started, cpu = time.perf_counter(), time.process_time()
    conn.execute("ATTACH ? AS b", (str(out),))
    conn.execute("PRAGMA b.journal_mode = OFF").fetchall()
    conn.execute("PRAGMA b.synchronous = OFF")
    conn.execute("BEGIN")
    for table in TABLES:
        conn.execute(table.create_sql(B))
    for sql in PURE_SQL:
        conn.execute(sql)
    for table in TABLES:
        for sql in table.index_sql(B):
            conn.execute(sql)
    conn.execute("COMMIT")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    events = conn.execute("SELECT max(position) FROM main.events").fetchone()[0]
    conn.close()
    return {"events": events, "seconds": seconds, "cpu": cpu}


def run_ours(db: Path, chunk_size: int) -> dict[str, float]:
    from hermes_ledger import projections

    with Ledger.open(db) as led:
        cpu = time.process_time()
        report = projections.rebuild(led, chunk_size=chunk_size)
        cpu = time.process_time() - cpu
    return {"events": report.events, "seconds": report.seconds, "cpu": cpu}


def run_verify(db: Path, chunk_size: int) -> dict[str, float]:
    from hermes_ledger import projections

    with Ledger.open(db) as led:
        events = led.head()
        started, cpu = time.perf_counter(), time.process_time()
        report = projections.verify(led, chunk_size=chunk_size)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if not report.ok:
            raise SystemExit(f"verify failed after the rebuild:\n{report}")
    return {"events": events, "seconds": seconds, "cpu": cpu}


def same_rows(db: Path, baseline: Path) -> list[str]:
    """Tables where ours and the pure-SQL rebuild differ (empty list: identical)."""
    conn = apsw.Connection(str(db))
    conn.execute("ATTACH ? AS b", (str(baseline),))
    differ = []
    for table in (SESSION_HISTORY, SESSION_MAP, MESSAGES):
        columns = ", ".join(table.columns)
        for a, b in (("main", "b"), ("b", "main")):
            sql = (
                f"SELECT count(*) FROM (SELECT {columns} FROM {a}.{table.name}"
                f" EXCEPT SELECT {columns} FROM {b}.{table.name})"
            )
            if conn.execute(sql).fetchone()[0]:
                differ.append(table.name)
                break
    for name in ("live", "base"):
        schema = "main" if name == "live" else "b"
        conn.execute(
            f"CREATE VIRTUAL TABLE temp.{name} USING fts5vocab({schema}, messages_fts, row)"
        )
    if conn.execute(
        "SELECT count(*) FROM (SELECT * FROM temp.live EXCEPT SELECT * FROM temp.base)"
    ).fetchone()[0]:
        differ.append("messages_fts")
    conn.close()
    return differ


# -- driver ---------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    db, phase = Path(args.db), args.child
    if phase == "pure":
        result = run_pure_sql(db, Path(args.baseline))
    elif phase == "ours":
        result = run_ours(db, args.chunk_size)
    else:
        result = run_verify(db, args.chunk_size)
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident set size. (VmHWM, not ru_maxrss: Linux carries
    ru_maxrss over fork and exec, so a child would report its parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(args: argparse.Namespace, phase: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", phase, "--db", str(args.db),
               "--baseline", str(args.baseline), "--chunk-size", str(args.chunk_size)]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=0, help="session keys (default sessions/2)")
    parser.add_argument("--chunk-size", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=1, help="repeat and keep each best time")
    parser.add_argument("--keep", action="store_true", help="reuse a generated ledger")
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--child", choices=("pure", "ours", "verify"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    keys = args.keys or max(args.sessions // 2, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.db = args.db or RESULTS / f"rebuild-{args.events}-{args.sessions}-{keys}.db"
    args.baseline = args.baseline or RESULTS / f"rebuild-{args.events}-pure-sql.db"
    if args.child:
        _child(args)
        return
    if not (args.keep and args.db.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
        generate(args.db, args.events, args.sessions, keys)
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.runs):  # alternate, and keep each phase's best wall and CPU time
        for phase in ("pure", "ours", "verify"):
            result = _run_child(args, phase)
            best = results.setdefault(phase, result)
            for measure in ("seconds", "cpu"):
                best[measure] = min(best[measure], result[measure])
    differ = same_rows(args.db, args.baseline)
    pure = results["pure"]["events"] / results["pure"]["seconds"]
    print(f"\nrebuild of {int(results['ours']['events']):,} events over {args.sessions:,} "
          f"sessions ({keys:,} keys), chunk {args.chunk_size:,}, best of {args.runs}")  # fmt: skip
    print(f"{'approach':<44} {'seconds':>8} {'events/s':>10} {'ratio':>6} "
          f"{'CPU s':>7} {'ratio':>6} {'peak RSS':>9}")  # fmt: skip
    labels = {
        "pure": "pure SQL (ATTACH + INSERT…SELECT)",
        "ours": "projections.rebuild (chunked, swap)",
        "verify": "projections.verify (scratch replay + diff)",
    }
    pure_cpu = results["pure"]["cpu"]
    for phase, label in labels.items():
        r = results[phase]
        rate = r["events"] / r["seconds"]
        print(f"{label:<44} {r['seconds']:>8.2f} {rate:>10,.0f} {rate / pure:>5.2f}x "
              f"{r['cpu']:>7.2f} {pure_cpu / r['cpu']:>5.2f}x {r['rss_mb']:>6.0f} MB")  # fmt: skip
    ours = results["ours"]["events"] / results["ours"]["seconds"]
    same = "yes" if not differ else "NO: " + ", ".join(differ)
    print(f"\nsame rows as the pure-SQL rebuild: {same}")
    print(f"targets: ours/pure >= 0.75 -> {ours / pure:.2f} "
          f"({'met' if ours / pure >= 0.75 else 'NOT met'}); peak RSS < 200 MB -> "
          f"{results['ours']['rss_mb']:.0f} MB "
          f"({'met' if results['ours']['rss_mb'] < 200 else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
