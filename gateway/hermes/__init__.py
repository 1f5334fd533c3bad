"""Hermes homes: reading one (``reading``), mapping its sessions to session keys and
ledger events (``mapping``), importing them into a ledger (``importing``), and
recording a running Hermes from the plugin's spooled hook records (``records``,
``live``).

``import_hermes_home(ledger, path)`` is the batch entry point; it returns a
``HermesImportReport``. ``LiveRecorder(ledger, home).apply(records)`` is the live
one; it returns a ``LiveReport``. ``open_hermes_home`` opens a home's read-only
snapshot, and raises ``HermesImportError`` for a path that is not a readable Hermes
0.19 home. Both take either backend (an ``EventLog``: a SQLite ``Ledger`` or a
``PostgresLog``); what they read of the ledger is ``held``'s, written once for both.
docs/hermes-import.md has the mapping and its limits.
"""

from hermes_ledger.gateway.hermes.importing import (
    IMPORT_ACTOR,
    HermesImportReport,
    import_hermes_home,
)
from hermes_ledger.gateway.hermes.live import LiveRecorder
from hermes_ledger.gateway.hermes.mapping import PLUGIN_ACTOR, SUPERSEDED_REASON, import_key
from hermes_ledger.gateway.hermes.reading import (
    SUPPORTED_SCHEMA_VERSIONS,
    HermesHome,
    HermesImportError,
    open_hermes_home,
)
from hermes_ledger.gateway.hermes.records import LiveReport

__all__ = [
    "IMPORT_ACTOR",
    "PLUGIN_ACTOR",
    "SUPERSEDED_REASON",
    "SUPPORTED_SCHEMA_VERSIONS",
    "HermesHome",
    "HermesImportError",
    "HermesImportReport",
    "LiveRecorder",
    "LiveReport",
    "import_hermes_home",
    "import_key",
    "open_hermes_home",
]
