"""The ``hermes-ledger`` command line, a thin shell over the library."""

from hermes_ledger.gateway.cli.root import cli, main

__all__ = ["cli", "main"]
