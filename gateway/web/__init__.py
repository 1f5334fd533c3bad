"""A browsable ledger: Datasette over the ledger file, read-only, on loopback.

``metadata`` builds Datasette's metadata (table and column descriptions from the
projection definitions, the audit queries as canned queries, full-text search on
``messages``); ``server`` runs Datasette on a ledger (``hermes-ledger serve``).
Datasette is the optional ``web`` extra: ``pip install 'hermes-ledger[web]'``.
See docs/browse.md.
"""

from hermes_ledger.gateway.web.metadata import DATABASE_NAME, build_metadata
from hermes_ledger.gateway.web.queries import AUDIT_QUERIES, DOC_QUERIES, AuditQuery

__all__ = ["AUDIT_QUERIES", "DATABASE_NAME", "DOC_QUERIES", "AuditQuery", "build_metadata"]
