"""``hermes-ledger sessions / history / transcript / replay / verify``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from hermes_ledger import projections
from hermes_ledger.gateway.cli import times
from hermes_ledger.gateway.cli.filters import VALUE, platform_option, user_option
from hermes_ledger.gateway.cli.options import (
    LedgerCommandError,
    count_range,
    db_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_json, print_table, progress_bar
from hermes_ledger.gateway.cli.times import Zone, recorded_option, show_time, tz_option
from hermes_ledger.gateway.config.paths import hermes_home, resolve_ledger
from hermes_ledger.gateway.sessions import reports
from hermes_ledger.gateway.sessions.listing import SESSION_STATUSES, SessionFilter
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.anchors import Witness

__all__ = ["history_cmd", "replay_cmd", "sessions_cmd", "transcript_cmd", "verify_cmd"]


def _emit(rows: list[dict[str, Any]], columns: list[str], as_json: bool, zone: Zone) -> None:
    """``--json``: the rows as they are (UTC times); else a table, its times (the
    ``…_at`` columns) shown in ``zone``."""
    if as_json:
        print_json(rows)
    elif rows:
        print_table(columns, [tuple(_cell(r, c, zone) for c in columns) for r in rows])


def _cell(row: dict[str, Any], column: str, zone: Zone) -> Any:
    value = row.get(column)
    return show_time(value, zone) if column.endswith("_at") and value is not None else value


@click.command("sessions")
@postgres_ready
@db_option
@click.option("--all", "all_", is_flag=True, help="Include closed and closing sessions.")
@click.option("--status", "statuses", type=click.Choice(SESSION_STATUSES), multiple=True,
              help="Only keys whose current session has this status (repeatable; implies"
              " --all).")  # fmt: skip
@platform_option
@click.option("--chat-type", type=VALUE, metavar="TYPE", help="Only this chat type (dm, group…).")
@user_option
@click.option(
    "--key",
    type=VALUE,
    metavar="GLOB",
    help="Session keys matching this glob (* any text, ? one character, [abc] a set;"
    " case-sensitive; [*] is a literal *), e.g. 'agent:main:telegram:*'.",
)
@click.option("--since", type=times.TIME, help="Last active at or after TIME (ISO-8601, 2h, 7d…).")
@click.option("--until", type=times.TIME, help="Last active before TIME.")
@click.option("--end-reason", type=VALUE, metavar="REASON",
              help="Only sessions that ended so (idle_expiry, daily_reset, manual_reset…);"
              " implies --all.")  # fmt: skip
@click.option("--limit", type=count_range(1), default=1000, show_default=True)
@tz_option
@json_option
@reports_errors
def sessions_cmd(
    tz: Zone,
    db: Path | str | None,
    all_: bool,
    statuses: tuple[str, ...],
    platform: str | None,
    chat_type: str | None,
    user: str | None,
    key: str | None,
    since: str | None,
    until: str | None,
    end_reason: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List sessions by key, most recently active first.

    \b
    One row per session key, about its current session: the open ones, unless
    --all, --status or --end-reason says otherwise. Filters combine (all must
    hold). --since/--until compare the key's last activity (session_map's
    updated_at: the time of its latest event).
    """
    which = SessionFilter(
        statuses=statuses, all_=all_, platform=platform, chat_type=chat_type, user=user,
        key=key, since=since, until=until, end_reason=end_reason,
    )  # fmt: skip
    target = resolve_ledger(db)
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions import postgres

        with postgres.open_postgres(target) as log:
            rows = postgres.sessions(log, which, limit=limit)
    else:
        with reports.open_existing(target) as led:
            rows = reports.sessions(led, which=which, limit=limit)
    columns = ["session_key", "session_id", "status", "updated_at", "message_count"]
    if not rows and not as_json:
        plain = which == SessionFilter(all_=all_)
        click.echo(("No open sessions." if not all_ else "No sessions.") if plain else
                   "No sessions match.")  # fmt: skip
    _emit(rows, columns, as_json, tz)


@click.command("history")
@postgres_ready
@click.argument("session_key")
@db_option
@tz_option
@json_option
@reports_errors
def history_cmd(session_key: str, db: Path | str | None, tz: Zone, as_json: bool) -> None:
    """A key's sessions, oldest first, and endings.

    Every session (transcript) SESSION_KEY has had, with how each one ended.
    """
    target = resolve_ledger(db)
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions import postgres

        with postgres.open_postgres(target) as log:
            rows = postgres.history(log, session_key)
    else:
        with reports.open_existing(target) as led:
            rows = reports.history(led, session_key)
    columns = ["session_id", "started_at", "ended_at", "end_reason", "message_count"]
    _emit(rows, columns, as_json, tz)


@click.command("transcript")
@postgres_ready
@click.argument("session_id")
@db_option
@tz_option
@json_option
@reports_errors
def transcript_cmd(session_id: str, db: Path | str | None, tz: Zone, as_json: bool) -> None:
    """The messages of one session, in order.

    When its messages name more than one person (a group session), each user
    message shows who spoke. --json gives user_id and user_name where known
    (and UTC times, whatever --tz says).
    """
    target = resolve_ledger(db)
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions import postgres

        with postgres.open_postgres(target) as log:
            messages = postgres.transcript(log, session_id)
    else:
        with reports.open_existing(target) as led:
            messages = reports.transcript(led, session_id)
    if as_json:
        print_json(messages)
        return
    speakers = {m.get("user_id") or m.get("user_name") for m in messages} - {None}
    for message in messages:
        text = message["content"] if message["content"] is not None else ""
        speaker = message.get("user_name") or message.get("user_id")
        if len(speakers) > 1 and speaker is not None:
            text = f"{speaker}: {text}"
        if "tool_calls" in message:
            names = [c.get("function", {}).get("name", "?") for c in message["tool_calls"]]
            text = (text + " " if text else "") + f"[calls {', '.join(names)}]"
        if "tool_name" in message:
            text = f"[{message['tool_name']}] {text}"
        click.echo(f"{show_time(message['timestamp'], tz)}  {message['role']:<9} {text}")


@click.command("replay")
@postgres_ready
@db_option
@click.option(
    "--at", "at", type=times.TIME, help="Show the session map as of TIME (see --recorded)."
)
@click.option("--to", "to", type=count_range(0), metavar="POSITION",
              help="Show the session map as of this position.")  # fmt: skip
@recorded_option
@tz_option
@json_option
@reports_errors
def replay_cmd(
    db: Path | str | None, at: str | None, to: int | None, recorded: bool, tz: Zone, as_json: bool
) -> None:
    """Rebuild projections, or show a past state.

    \b
    Without options, replays every event into fresh tables and swaps them in.
    With --at TIME or --to POSITION, prints the session map as it was then,
    without changing anything. TIME is read as --since is (2026-11-22T09:30Z,
    3d, yesterday…) and is business time: the events that happened by then at
    the gateway, in log order, so a session imported today from last week shows
    as it was last week. --recorded: the log as it stood at TIME instead (the
    events recorded by then).
    """
    if at is not None and to is not None:
        raise click.UsageError("give --at or --to, not both")
    if recorded and at is None:
        raise click.UsageError("--recorded says how --at is read: give --at TIME with it")
    target = resolve_ledger(db)
    if isinstance(target, str):
        _replay_postgres(target, at, to, recorded, tz, as_json)
        return
    with reports.open_existing(target) as led:
        if at is None and to is None:
            with progress_bar("replaying") as progress:
                report = projections.rebuild(led, progress=progress)
            if as_json:
                print_json({"events": report.events, "position": report.position})
            else:
                click.echo(str(report))
            return
        state = projections.state_at(led, position=to, time=at, recorded=recorded)
    _print_state(state, at, recorded, tz, as_json)


def _replay_postgres(
    dsn: str, at: str | None, to: int | None, recorded: bool, zone: Zone, as_json: bool
) -> None:
    from hermes_ledger.gateway.sessions import postgres

    with postgres.open_postgres(dsn, projections=False) as log:
        if at is None and to is None:
            report = postgres.rebuild(log)
            if as_json:
                print_json({"events": report.events, "position": report.position})
            else:
                click.echo(str(report))
            return
        state = postgres.state_at(log, to, time=at, recorded=recorded)
    _print_state(state, at, recorded, zone, as_json)


def _print_state(
    state: projections.State, at: str | None, recorded: bool, tz: Zone, as_json: bool
) -> None:
    """The session map of ``state``, as ``replay --at/--to`` prints it."""
    rows = sorted(state.session_map.values(), key=lambda r: r["session_key"])
    if as_json:
        print_json({"position": state.position, "session_map": rows})
        return
    kind = "recorded" if recorded else "business"
    when = f"{kind} time {show_time(at, tz)}" if at else f"position {state.position}"
    click.echo(f"Session map as of {when} (position {state.position}):")
    if rows:
        print_table(
            ["session_key", "session_id", "status", "updated_at"],
            [(r["session_key"], r["session_id"], r["status"], show_time(r["updated_at"], tz))
             for r in rows],
        )  # fmt: skip
    else:
        click.echo("(no sessions)")


@click.command("verify")
@postgres_ready
@db_option
@click.option(
    "--quick",
    is_flag=True,
    help="PRAGMA quick_check instead of integrity_check (the default above 1 GiB).",
)
@json_option
@reports_errors
def verify_cmd(db: Path | str | None, quick: bool, as_json: bool) -> None:
    """Check the chain, the file, the anchors and the projections.

    \b
    The hash chain end to end; the projections against a replay; the triggers and
    indexes against the migrations; SQLite's integrity check of every page; and
    each anchor in $HERMES_HOME/ledger.anchors for this ledger (see `anchor`).
    Exits 1 when anything is wrong. On a PostgreSQL ledger (--db
    postgresql://…): the chain and payloads, the anchors, and the projections when
    the database has them.
    """
    target = resolve_ledger(db)
    report: Any
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions import postgres

        with (
            postgres.open_postgres(target, projections=False) as log,
            progress_bar("verifying") as progress,
        ):
            report = postgres.verify(
                log, progress=progress, witness=Witness.in_directory(hermes_home())
            )
    else:
        witness = Witness.in_directory(hermes_home())
        with (
            Ledger.open_existing(target) as led,
            progress_bar("verifying") as progress,
        ):
            report = reports.verify_all(
                led, progress=progress, witness=witness, quick=True if quick else None
            )
    if as_json:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            click.echo(line)
    problems = report.problems()
    if problems:
        if as_json:
            sys.exit(1)
        parts = ", ".join(what.split(":", 1)[0] for what, _ in problems)
        raise LedgerCommandError(f"the ledger does not verify ({parts})", problems[0][1])
