"""A named audit report on a PostgreSQL ledger: ``projections.audits.run_report``
when it is given a ``PostgresLog``.

The report's ``postgres_sql`` runs in one read-only, repeatable-read transaction
on the log's connection (``ledger.postgres.reading.snapshot``), bounded by
``statement_timeout``; its rows are fetched inside it, so the timeout covers the
whole query and the transaction ends before the rows are handed back. It runs
under ``SET LOCAL ROLE hermes_ledger_reader`` when the log's role may assume it
(``ledger.postgres.query.assume_reader``, as ``sql`` does), else as that role after
a one-line warning. The same report on the same events gives the same columns and
rows as on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.query import assume_reader, warn_on_stderr
from hermes_ledger.ledger.postgres.reading import snapshot
from hermes_ledger.ledger.query import QueryResult, QueryTimeoutError
from hermes_ledger.projections.postgres.tables import tables_exist

__all__ = ["run_report_sql"]

SQL_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"
"""This transaction's statement timeout (milliseconds as text; '0': no limit)."""


def run_report_sql(
    log: PostgresLog,
    sql: str,
    params: Mapping[str, Any],
    *,
    timeout: float | None,
    warn: Callable[[str], None] = warn_on_stderr,
) -> QueryResult:
    """Run one report's PostgreSQL ``sql`` with ``params`` on ``log``, read-only, as
    the reader role when the log's role may assume it (else ``warn`` is told so),
    stopped after ``timeout`` seconds (None or 0: no limit) with QueryTimeoutError.
    A database without the projections is a LedgerError saying how to create them."""
    with snapshot(log) as conn:
        if not tables_exist(conn):
            raise LedgerError(
                f"the ledger at {log.where} has no projections to report on",
                hint="create them with `hermes-ledger replay --db URI` (as the database owner)",
            )
        unbounded = assume_reader(conn, "the report")
        if unbounded is not None:
            warn(unbounded)
        conn.execute(SQL_STATEMENT_TIMEOUT, (str(round((timeout or 0) * 1000)),))
        try:
            cursor = conn.execute(sql, dict(params))  # type: ignore[arg-type]
            rows = [tuple(row) for row in cursor.fetchall()]
        except psycopg.errors.QueryCanceled:
            raise QueryTimeoutError(timeout or 0) from None
        columns = [c.name for c in cursor.description or ()]
    return QueryResult(columns, iter(rows))
