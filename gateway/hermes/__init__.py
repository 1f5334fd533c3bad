"""Hermes homes: reading one (``reading``), mapping its sessions to session keys and
ledger events (``mapping``), and importing them into a ledger (``importing``).

``import_hermes_home(ledger, path)`` is the entry point; it returns a
``HermesImportReport``. ``open_hermes_home`` opens a home's read-only snapshot, and
raises ``HermesImportError`` for a path that is not a readable Hermes 0.19 home.
docs/hermes-import.md has the mapping and its limits.
"""

from hermes_ledger.gateway.hermes.importing import (
    IMPORT_ACTOR,
    HermesImportReport,
    import_hermes_home,
)
from hermes_ledger.gateway.hermes.mapping import SUPERSEDED_REASON, import_key
from hermes_ledger.gateway.hermes.reading import (
    SUPPORTED_SCHEMA_VERSIONS,
    HermesHome,
    HermesImportError,
    open_hermes_home,
)

__all__ = [
    "IMPORT_ACTOR",
    "SUPERSEDED_REASON",
    "SUPPORTED_SCHEMA_VERSIONS",
    "HermesHome",
    "HermesImportError",
    "HermesImportReport",
    "import_hermes_home",
    "import_key",
    "open_hermes_home",
]
