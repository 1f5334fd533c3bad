"""Search of CJK text on PostgreSQL (projections.postgres.search), against a real
server: a term holding a CJK character matches as a substring (Chinese, Japanese,
Korean; one, two, three or more characters; with Latin words; ``%`` ``_`` taken
literally), its excerpt marks the match, the trigram index on ``messages.content``
exists after attach and after a rebuild, and the plan of such a search uses it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest
from backends import pg_uri
from click.testing import Result
from helpers import ManualClock
from pg_support import as_user, fresh_database, login_role

from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source
from hermes_ledger.ledger.postgres import SCHEMA, WRITER_ROLE, PostgresLog
from hermes_ledger.projections import postgres as pgp
from hermes_ledger.projections.postgres import tables
from hermes_ledger.projections.postgres.search import split_cjk
from hermes_ledger.projections.postgres.tables import TRIGRAM_INDEX

KEY = "agent:main:telegram:dm:88"
SOURCE = Source(platform="telegram", chat_id="88", user_id="u8", user_name="Mei")
TEXTS = [
    "我们明天去东京开会",  # 2: Chinese
    "東京に行きます",  # 3: Japanese
    "서울에서 만나요",  # 4: Korean
    "meeting in 東京 tomorrow",  # 5: mixed
    "東_京 is written with an underscore",  # 6
    "東X京",  # 7
    "東%京",  # 8
    "東は京",  # 9
    "plain english only",  # 10
]


def _say(text: str) -> MessageAppended:
    return MessageAppended(session_id="s1", role="user", content=text)


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def log(pg_dsn: str, clock: ManualClock) -> Iterator[PostgresLog]:
    with PostgresLog.open(pg_dsn, clock=clock) as opened:
        pgp.attach(opened)
        opened.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
        for text in TEXTS:
            opened.append(KEY, [_say(text)])
        yield opened


def _found(log: PostgresLog, text: str, **options: bool) -> list[int]:
    return sorted(h.position for h in pgp.search_messages(log, text, **options))


def test_chinese_japanese_and_korean_terms_match_inside_a_run_of_cjk(log: PostgresLog) -> None:
    assert _found(log, "东京") == [2]  # two characters, inside 我们明天去东京开会
    assert _found(log, "明天去") == [2]  # three
    assert _found(log, "会") == [2]  # one
    assert _found(log, "東京") == [3, 5]  # 東京に行きます, and the word in a Latin sentence
    assert _found(log, "行きます") == [3]
    assert _found(log, "に") == [3]
    assert _found(log, "서울") == [4]  # 서울에서 만나요
    assert _found(log, "만나요") == [4]
    assert _found(log, "에서") == [4]
    assert _found(log, "大阪") == []


def test_cjk_terms_and_words_combine_with_and_and_not(log: PostgresLog) -> None:
    assert _found(log, "東京 tomorrow") == [5]
    assert _found(log, "tomorrow 東京") == [5]
    assert _found(log, "東京 -tomorrow") == [3]
    assert _found(log, "-東京 meeting") == []
    assert _found(log, "東京 行き") == [3]  # two CJK terms, both required
    assert _found(log, "東京 nothing") == []
    assert _found(log, '"東京に行" ') == [3]  # a quoted CJK phrase is one substring
    assert _found(log, '"に 行"') == []
    assert _found(log, "東京。") == [3, 5]  # punctuation around a word is not searched
    assert _found(log, "東京 tomorrow", plain=True) == [5]
    with pytest.raises(LedgerError, match="or beside the CJK term") as refused:
        pgp.search_messages(log, "東京 or tomorrow")
    assert "drop the or" in str(refused.value.hint)
    assert _found(log, "english") == [10]  # a search without CJK is unchanged


def test_like_wildcards_in_a_cjk_term_are_literal(log: PostgresLog) -> None:
    assert _found(log, "東_京") == [6]  # not 東X京
    assert _found(log, "東%京") == [8]  # not 東は京, 東X京, 東京…
    assert _found(log, "東X京") == [7]
    assert _found(log, "\\東") == []


def test_the_excerpt_marks_the_cjk_match(log: PostgresLog) -> None:
    [hit] = pgp.search_messages(log, "东京")
    assert hit.marked() == "我们明天去[东京]开会"
    assert [h.marked() for h in pgp.search_messages(log, "東京")] == [
        "meeting in [東京] tomorrow",
        "[東京]に行きます",
    ]
    [mixed] = pgp.search_messages(log, "東京 tomorrow")
    assert mixed.marked() == "meeting in [東京] [tomorrow]"
    assert pgp.search_messages(log, "東_京")[0].marked("<", ">") == (
        "<東_京> is written with an underscore"
    )
    assert pgp.search_messages(log, "-東京 english")[0].marked() == "plain [english] only"


def test_a_long_message_is_cut_around_the_first_cjk_match(log: PostgresLog) -> None:
    text = "あ" * 100 + "東京タワー" + "い" * 100 + "東京"
    log.append(KEY, [_say(text)])
    [hit] = pgp.search_messages(log, "東京タワ")
    assert hit.marked() == "…" + "あ" * 20 + "[東京タワ]ー" + "い" * 39 + "…"
    [both] = pgp.search_messages(log, "タワー い")
    assert both.marked().startswith("…" + "あ" * 18 + "東京[タワー][い][い][い]")


def test_split_cjk_keeps_the_query_of_the_other_words() -> None:
    assert split_cjk('hello "東京 tower" -서울 world "a phrase"') == (
        'hello world "a phrase"',
        [("東京 tower", False), ("서울", True)],
    )
    assert split_cjk("no cjk at all -x") == ("no cjk at all -x", [])
    assert split_cjk('"東京" -x', plain=True) == ("-x", [("東京", False)])


def _trigram_indexes(log: PostgresLog) -> list[tuple[str, str]]:
    rows = log.connection.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s"
        " AND tablename = 'messages' AND indexdef LIKE '%%gin_trgm_ops%%'",
        (SCHEMA,),
    ).fetchall()
    return [(name, definition) for name, definition in rows]


def test_the_trigram_index_exists_after_attach_and_after_a_rebuild(log: PostgresLog) -> None:
    [(name, definition)] = _trigram_indexes(log)
    assert name == TRIGRAM_INDEX
    assert "USING gin (content" in definition
    assert "WHERE (content ~ '[" in definition  # only the messages holding CJK
    pgp.rebuild(log)
    assert [name for name, _ in _trigram_indexes(log)] == [TRIGRAM_INDEX]
    leftovers = log.connection.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname LIKE '%%\\_\\_next'",
        (SCHEMA,),
    ).fetchone()
    assert leftovers == (0,)
    assert _found(log, "東京") == [3, 5]


def test_a_search_of_three_cjk_characters_uses_the_trigram_index(log: PostgresLog) -> None:
    filler = [_say(f"message number {n} 上海{n % 7}北京") for n in range(600)]
    log.append(KEY, filler)
    conn = log.connection
    conn.execute("ANALYZE messages")
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_level = 'notice'")
    # the index a candidate: no sequential scan, and no walk of the primary key
    # (ORDER BY position LIMIT), whose cost the planner weighs by the table's size
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_indexscan = off")
    assert _found(log, "行きます") == [3]
    searched = [p for p in plans if "ILIKE" in p or "~~*" in p]
    assert searched, plans
    assert f"Bitmap Index Scan on {TRIGRAM_INDEX}" in searched[-1], searched[-1]


def test_without_the_trigram_index_the_search_still_finds_cjk_by_scan(log: PostgresLog) -> None:
    log.connection.execute(f"DROP INDEX {SCHEMA}.{TRIGRAM_INDEX}")
    assert _trigram_indexes(log) == []
    assert _found(log, "东京") == [2]
    assert _found(log, "行きます") == [3]
    assert _found(log, "東京 tomorrow") == [5]
    assert _found(log, "東%京") == [8]


def test_a_role_that_may_not_create_pg_trgm_makes_no_index_and_says_so_at_debug(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with PostgresLog.open(pg_dsn) as owner:  # migrated, projections never attached
        with login_role(WRITER_ROLE) as user, PostgresLog.open(as_user(pg_dsn, user)) as writer:
            with caplog.at_level(logging.DEBUG, logger=tables.__name__):
                assert tables.ensure_trigram(writer.connection) is None
            assert "pg_trgm not created" in caplog.text
        installed = "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'"
        assert owner.connection.execute(installed).fetchone() == (0,)
        assert tables.ensure_trigram(owner.connection) == f"{SCHEMA}.gin_trgm_ops"
        assert owner.connection.execute(installed).fetchone() == (1,)


def test_the_cli_finds_and_marks_cjk_on_postgresql(
    pg_dsn: str, log: PostgresLog, cli: Callable[..., Result]
) -> None:
    dsn = pg_uri(pg_dsn)
    result = cli("search", "--db", dsn, "東京")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split("  ")[-1] for line in lines] == [
        "meeting in [東京] tomorrow",
        "[東京]に行きます",
    ]
    result = cli("search", "--db", dsn, "--json", "東京 行き")
    assert result.exit_code == 0, result.output
    assert [h["position"] for h in json.loads(result.output)] == [3]
    result = cli("search", "--db", dsn, "東京 or tomorrow")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: or beside the CJK term '東京' is not supported")
    assert "Try: a CJK term is matched as a substring" in result.output
    assert "Traceback" not in result.output


def test_an_erased_message_is_not_found_by_its_cjk_text(log: PostgresLog) -> None:
    log.append("agent:main:telegram:dm:89", [SessionStarted(session_id="s2", source=SOURCE)])
    log.append(
        "agent:main:telegram:dm:89",
        [MessageAppended(session_id="s2", role="user", content="東京に住んでいます")],
    )
    assert _found(log, "東京に住") == [12]
    log.erase(ErasureScope("session_id", "s2"), requested_by="dpo", dry_run=False)
    assert _found(log, "東京に住") == []
    assert _found(log, "東京") == [3, 5]


def test_pg_trgm_already_installed_in_another_schema_serves_the_index(
    pg_dsn: str, clock: ManualClock
) -> None:
    with PostgresLog.open(pg_dsn, clock=clock) as opened:
        opened.connection.execute("CREATE EXTENSION pg_trgm SCHEMA public")
        pgp.attach(opened)
        [(name, definition)] = _trigram_indexes(opened)
        assert name == TRIGRAM_INDEX and "public.gin_trgm_ops" in definition
        opened.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
        opened.append(KEY, [_say("東京に行きます")])
        assert _found(opened, "東京に") == [2]
