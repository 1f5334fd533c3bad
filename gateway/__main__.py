"""``python -m hermes_ledger.gateway`` is the ``hermes-ledger`` command."""

from hermes_ledger.gateway.cli import main

main()
