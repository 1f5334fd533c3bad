"""``python -m gateway`` is the ``hermes`` command."""

from gateway.cli import hermes

hermes()
