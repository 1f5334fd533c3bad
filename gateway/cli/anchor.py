"""``hermes-ledger anchor``: record the chain's head in the witness outside the ledger."""

from __future__ import annotations

from pathlib import Path

import click

from hermes_ledger.gateway.cli.options import db_option, json_option, reports_errors
from hermes_ledger.gateway.cli.output import print_json
from hermes_ledger.gateway.config.paths import hermes_home, resolve_ledger_path
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.anchors import Witness

__all__ = ["anchor_cmd"]


@click.command("anchor")
@db_option
@json_option
@reports_errors
def anchor_cmd(db: Path | None, as_json: bool) -> None:
    """Anchor the chain's head in $HERMES_HOME/ledger.anchors.

    \b
    Appends the last position and its hash, with an HMAC under the key
    $HERMES_HOME/ledger.key (created 0600 on first use), after checking the chain
    from the previous anchor. `verify` then detects a truncation or a rewrite of
    anything at or below an anchored position. `run` anchors every
    ledger.anchor_interval seconds (default 3600).
    """
    witness = Witness.in_directory(hermes_home())
    with Ledger.open_existing(resolve_ledger_path(db)) as led:
        anchor = witness.anchor(led)
    if as_json:
        print_json({**anchor.to_dict(), "witness": str(witness.path), "key": str(witness.key_path)})
        return
    click.echo(f"Anchored position {anchor.position} of {anchor.ledger} at {anchor.at}")
    click.echo(f"  hash    {anchor.hash}")
    click.echo(f"  witness {witness.path} (line {anchor.line}, key {witness.key_path})")
