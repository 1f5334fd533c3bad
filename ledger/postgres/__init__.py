"""The log on PostgreSQL (issue 14): one ledger for gateways on many hosts.

``PostgresLog`` is the PostgreSQL ``EventLog`` (``ledger.backend``): the SQLite
``Ledger``'s log methods with the same semantics (``open_log`` opens either);
``migrate`` applies the schema (``migrations/NNNN_*.sql``). See docs/postgres.md.
Needs the ``postgres`` extra (psycopg 3).
"""

from hermes_ledger.ledger.postgres.log import PostgresLog, describe_dsn
from hermes_ledger.ledger.postgres.schema import SCHEMA, WRITER_ROLE, load_migrations, migrate

__all__ = ["SCHEMA", "WRITER_ROLE", "PostgresLog", "describe_dsn", "load_migrations", "migrate"]
