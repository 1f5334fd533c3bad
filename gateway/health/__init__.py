"""Health checks of a ledger and its gateway: what ``hermes-ledger doctor`` runs.

``diagnose`` runs every check and returns a ``DoctorReport`` of ``Check`` results
(``ok``, ``warn`` or ``fail``, a detail and a hint); docs/operations.md says what
each check means and what to do about it. On a PostgreSQL ledger the checks are
``POSTGRES_CHECK_NAMES`` (``health.postgres``; psycopg is imported then).
"""

from hermes_ledger.gateway.health.checks import (
    CHECK_NAMES,
    DEFAULT_STUCK_AFTER,
    POSTGRES_CHECK_NAMES,
    Check,
    DoctorReport,
    diagnose,
)
from hermes_ledger.gateway.health.modes import check_file_modes

__all__ = [
    "CHECK_NAMES",
    "DEFAULT_STUCK_AFTER",
    "POSTGRES_CHECK_NAMES",
    "Check",
    "DoctorReport",
    "check_file_modes",
    "diagnose",
]
