"""``hermes-ledger hooks``: list hooks, their problems, pending deliveries and dead
letters; re-queue dead letters.

Each command parses its options, calls one library function from
``gateway.hooks`` and prints the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hermes_ledger.gateway.cli.options import (
    db_option,
    hooks_dir_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_json
from hermes_ledger.gateway.config.paths import resolve_ledger
from hermes_ledger.gateway.hooks import HermesSideHook, HooksOverview, hooks_overview
from hermes_ledger.gateway.hooks.delivery import PendingDelivery, requeue_dead_letters
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import format_utc

__all__ = ["hooks_group", "retry_cmd"]


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _print_overview(ov: HooksOverview) -> None:
    # With the plugin enabled, Hermes's gateway delivers $HERMES_HOME/hooks itself:
    # say which side delivers what.
    side = " (delivered by the ledger)" if ov.plugin_enabled else ""
    if ov.hooks:
        click.echo(f"Hooks in {ov.hooks_dir}{side}:")
        width = max(len(h.name) for h in ov.hooks)
        for hook in ov.hooks:
            state = ov.states.get(hook.name)
            counts = (
                "not started yet"
                if state is None
                else f"checkpoint {state.checkpoint}, {state.done} delivered, "
                f"{state.pending + state.claimed} pending, {state.dead} dead"
            )
            click.echo(f"  {hook.name:<{width}}  {', '.join(hook.events)}  ({counts})")
            if hook.description:
                click.echo(f"  {'':<{width}}  {_one_line(hook.description)}")
    else:
        click.echo(f"No hooks in {ov.hooks_dir}{side}.")
    if ov.problems:
        click.echo("Skipped:")
        for problem in ov.problems:
            click.echo(f"  {problem}")
    if not ov.dead_letters:
        click.echo("No dead letters.")
    else:
        click.echo("Dead letters (re-queue with `hermes-ledger hooks retry [DELIVERY_ID...]`):")
        for d in ov.dead_letters:
            click.echo(
                f"  {d.delivery_id}  {d.hook}  {d.event_type}  position {d.position}"
                f"  session {d.session_id}  {d.attempts} attempts  {_one_line(d.last_error)}"
            )
    if ov.pending:
        _print_pending(ov)
    if ov.hermes_hooks_dir is not None:
        _print_hermes_side(ov.hermes_hooks_dir, ov.hermes_hooks)


def _pending_line(d: PendingDelivery) -> str:
    attempts = f"{d.attempts} attempt{'' if d.attempts == 1 else 's'}"
    if d.status == "claimed" and d.claimed_until is not None:
        when = f"being delivered by {d.claimed_by} until {format_utc(d.claimed_until)}"
    elif d.attempts:
        when = f"next retry {format_utc(d.next_attempt_at)}"
    else:
        when = f"due {format_utc(d.next_attempt_at)}"
    error = f"  {_one_line(d.last_error)}" if d.last_error else ""
    return (
        f"  {d.delivery_id}  {d.hook}  {d.event_type}  position {d.position}"
        f"  session {d.session_id}  {attempts}  {when}{error}"
    )


def _print_pending(ov: HooksOverview) -> None:
    """Each hook's first pending deliveries (its queue, in order), then how many more."""
    click.echo("Pending deliveries (made in order by the next pass of `hermes-ledger run`):")
    shown: dict[str, int] = {}
    for d in ov.pending:
        click.echo(_pending_line(d))
        shown[d.hook] = shown.get(d.hook, 0) + 1
    for hook, count in shown.items():
        state = ov.states.get(hook)
        more = 0 if state is None else state.pending + state.claimed - count
        if more > 0:
            click.echo(f"  … and {more} more pending for {hook}")


def _print_hermes_side(hooks_dir: Path, hooks: tuple[HermesSideHook, ...]) -> None:
    side = "delivered by Hermes's gateway, not the ledger"
    if not hooks:
        click.echo(f"No hooks in {hooks_dir} ({side}).")
        return
    click.echo(f"Hooks in {hooks_dir} ({side}):")
    width = max(len(h.name) for h in hooks)
    for hook in hooks:
        click.echo(f"  {hook.name:<{width}}  {', '.join(hook.events)}")
        if hook.description:
            click.echo(f"  {'':<{width}}  {_one_line(hook.description)}")


@click.group("hooks", invoke_without_command=True)
@postgres_ready
@hooks_dir_option
@db_option
@json_option
@click.pass_context
@reports_errors
def hooks_group(
    ctx: click.Context, hooks_dir: Path | None, db: Path | str | None, as_json: bool
) -> None:
    """List hooks, their pending deliveries and dead letters.

    \b
    A hook is a directory under $HERMES_HOME/hooks with HOOK.yaml (name,
    description, events) and handler.py (handle(event_type, context)). Listing
    imports each handler to check that it loads.

    \b
    With the ledger plugin enabled in Hermes (`hermes plugins enable ledger`),
    Hermes's gateway delivers $HERMES_HOME/hooks itself and the ledger delivers
    $HERMES_HOME/ledger-hooks; both are listed, each saying who delivers it
    (Hermes's are read from HOOK.yaml, their handlers are not imported).

    \b
    Pending deliveries are listed (the first few of each hook, in the order they
    will be made) with their attempts, the next retry time and the last error;
    dead letters are those that failed too often (re-queue: `hooks retry`).
    --db may be a postgresql:// URI (a hook's checkpoint there is the log's
    head: appends queue their deliveries themselves).
    """
    ctx.ensure_object(dict)
    ctx.obj.update(db=db, as_json=as_json)
    if ctx.invoked_subcommand is not None:
        return
    ov = hooks_overview(hooks_dir, resolve_ledger(db))
    if as_json:
        print_json(ov.to_dict())
    else:
        _print_overview(ov)


@hooks_group.command("retry")
@postgres_ready
@click.argument("delivery_ids", nargs=-1, metavar="[DELIVERY_ID]...")
@db_option
@json_option
@click.pass_context
@reports_errors
def retry_cmd(
    ctx: click.Context, delivery_ids: tuple[str, ...], db: Path | str | None, as_json: bool
) -> None:
    """Re-queue dead letters: the ones named, or all of them.

    A re-queued delivery is due at once, with its attempts reset; the next
    delivery pass calls its hook again with the same delivery_id.
    """
    db = db or ctx.obj.get("db")
    as_json = as_json or ctx.obj.get("as_json", False)
    target = resolve_ledger(db)
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions.postgres import open_postgres

        opened: Any = open_postgres(target, projections=False)
    else:
        opened = Ledger.open_existing(target)
    with opened as ledger:
        ids = requeue_dead_letters(ledger, delivery_ids or None)
    if as_json:
        print_json({"requeued": ids})
    elif not ids:
        click.echo("No dead letters to re-queue.")
    else:
        noun = "dead letter" if len(ids) == 1 else "dead letters"
        click.echo(f"Re-queued {len(ids)} {noun}:")
        for did in ids:
            click.echo(f"  {did}")
