"""``hermes-ledger anchor``: record the chain's head in the witness outside the ledger."""

from __future__ import annotations

from pathlib import Path

import click

from hermes_ledger.gateway.cli.options import db_option, json_option, postgres_ready, reports_errors
from hermes_ledger.gateway.cli.output import print_json
from hermes_ledger.gateway.config.paths import hermes_home, resolve_ledger
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.anchors import Witness

__all__ = ["anchor_cmd"]


@click.command("anchor")
@postgres_ready
@db_option
@json_option
@reports_errors
def anchor_cmd(db: Path | str | None, as_json: bool) -> None:
    """Anchor the chain's head in $HERMES_HOME/ledger.anchors.

    \b
    Appends the last position and its hash, with an HMAC under the key
    $HERMES_HOME/ledger.key (created 0600 on first use), after checking the chain
    from the previous anchor. `verify` then detects a truncation or a rewrite of
    anything at or below an anchored position. `run` anchors every
    ledger.anchor_interval seconds (default 3600). On a PostgreSQL ledger (--db
    postgresql://…) the anchor names the database as postgresql://host:port/dbname
    (no user, no password).
    """
    witness = Witness.in_directory(hermes_home())
    target = resolve_ledger(db)
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions import postgres

        with postgres.open_postgres(target, projections=False) as log:
            anchor = witness.anchor(log)
    else:
        with Ledger.open_existing(target) as led:
            anchor = witness.anchor(led)
    if as_json:
        print_json({**anchor.to_dict(), "witness": str(witness.path), "key": str(witness.key_path)})
        return
    click.echo(f"Anchored position {anchor.position} of {anchor.ledger} at {anchor.at}")
    click.echo(f"  hash    {anchor.hash}")
    click.echo(f"  witness {witness.path} (line {anchor.line}, key {witness.key_path})")
