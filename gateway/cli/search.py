"""``hermes-ledger search TEXT``: full-text search over the transcripts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

import click

from hermes_ledger.gateway.cli.filters import VALUE, platform_option, user_option
from hermes_ledger.gateway.cli.options import (
    count_range,
    db_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import cell, print_json
from hermes_ledger.gateway.cli.times import TIME, Zone, show_time, tz_option
from hermes_ledger.gateway.config.paths import resolve_ledger
from hermes_ledger.gateway.sessions import reports
from hermes_ledger.gateway.sessions.search import (
    SEARCH_ORDERS,
    SearchFilter,
    SearchHit,
    SearchOrder,
    search_messages,
)

__all__ = ["search_cmd"]


def _line(hit: SearchHit, color: bool, widths: tuple[int, int], zone: Zone) -> str:
    if color:
        snippet = "".join(
            click.style(cell(text), bold=True, fg="yellow") if matched else cell(text)
            for text, matched in hit.parts
        )
    else:
        snippet = cell(hit.marked("[", "]"))
    key, sid = hit.session_key.ljust(widths[0]), hit.session_id.ljust(widths[1])
    return f"{show_time(hit.ts, zone)}  {key}  {sid}  {hit.role:<9} {snippet}"


@click.command("search")
@postgres_ready
@click.argument("text")
@db_option
@click.option("--session-key", type=VALUE, metavar="KEY", help="Only this session key.")
@platform_option
@user_option
@click.option("--since", type=TIME, help="Messages at or after TIME (ISO-8601 or 2h, 7d…).")
@click.option("--until", type=TIME, help="Messages before TIME.")
@click.option("--order", type=click.Choice(SEARCH_ORDERS), default="newest", show_default=True,
              help="newest: latest first; relevance: best match first (FTS5's bm25, which"
              " ranks every match: slow for very common words in a big ledger).")  # fmt: skip
@click.option("--limit", type=count_range(1), default=20, show_default=True)
@tz_option
@json_option
@reports_errors
def search_cmd(
    text: str,
    db: Path | str | None,
    session_key: str | None,
    platform: str | None,
    user: str | None,
    since: str | None,
    until: str | None,
    order: str,
    limit: int,
    tz: Zone,
    as_json: bool,
) -> None:
    """Search the transcripts for TEXT.

    \b
    TEXT is an FTS5 query: words (all must occur; cafe finds café), "a phrase",
    prefix*, AND / OR / NOT, NEAR(a b). Quote it for the shell, e.g.
      hermes-ledger search 'deploy AND "build failed"' --since 7d
    Each line: the message's time (in --tz), session key, session id, role and a
    snippet with the match highlighted ([brackets] when not on a terminal).
    --platform is the message's session's; --user is who spoke (the agent's
    turns count as their session's user's); --since/--until compare the
    message's time. On a PostgreSQL ledger (--db postgresql://…) TEXT is read by
    websearch_to_tsquery (words, "a phrase", -word, or); the same filters apply.
    """
    which = SearchFilter(
        session_key=session_key, platform=platform, user=user, since=since, until=until
    )
    target = resolve_ledger(db)
    if isinstance(target, str):
        hits = _search_postgres(target, text, which, cast(SearchOrder, order), limit)
    else:
        with reports.open_existing(target) as led:
            hits = search_messages(led, text, which, limit=limit, order=cast(SearchOrder, order))
    if as_json:
        print_json([hit.to_dict() for hit in hits])
        return
    if not hits:
        click.echo("No messages match.")
        return
    color = sys.stdout.isatty()
    widths = (max(len(h.session_key) for h in hits), max(len(h.session_id) for h in hits))
    for hit in hits:
        click.echo(_line(hit, color, widths, tz))


def _search_postgres(
    dsn: str, text: str, which: SearchFilter, order: SearchOrder, limit: int
) -> list[SearchHit]:
    """The PostgreSQL search's hits as SQLite's (the same fields and match marks), so
    both print the same lines and JSON."""
    from hermes_ledger.gateway.sessions import postgres

    with postgres.open_postgres(dsn) as log:
        return [SearchHit(*hit) for hit in postgres.search(log, text, which, order=order,
                                                           limit=limit)]  # fmt: skip
