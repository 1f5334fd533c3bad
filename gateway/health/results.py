"""What a health check says (``Check``) and what a whole diagnosis says (``DoctorReport``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["STATUSES", "Check", "DoctorReport", "Status"]

Status = Literal["ok", "warn", "fail"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail")
"""From best to worst."""


@dataclass(frozen=True)
class Check:
    """One check's result: ``status`` ``ok``, ``warn`` (needs attention; the service
    keeps working) or ``fail`` (broken, refused or tampered with); ``detail`` says
    what was found, ``hint`` what to do (None when ok)."""

    name: str
    status: Status
    detail: str
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "hint": self.hint}


@dataclass(frozen=True)
class DoctorReport:
    """Every check, in order; ``status`` is the worst of them. ``unopened`` is the
    ``ledger`` check's failure when the ledger could not be opened at all (the
    checks that need it were left out); ``not_applicable`` what was not checked
    because it has no meaning on this backend."""

    checks: tuple[Check, ...]
    unopened: Check | None = None
    not_applicable: tuple[str, ...] = ()
    """The checks of the other backend that mean nothing on this one (on PostgreSQL:
    SQLite's page check, the ledger file's modes), said so rather than left out."""

    @property
    def status(self) -> Status:
        return max((c.status for c in self.checks), key=STATUSES.index, default="ok")

    @property
    def ok(self) -> bool:
        """True when every check is ok (``doctor`` exits 0), else it exits 1."""
        return self.status == "ok"

    def counts(self) -> dict[Status, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def summary(self) -> str:
        """``7 ok, 1 warning, 0 failures: needs attention`` (or ``all ok``)."""
        n = self.counts()
        text = (
            f"{n['ok']} ok, {n['warn']} warning{'' if n['warn'] == 1 else 's'},"
            f" {n['fail']} failure{'' if n['fail'] == 1 else 's'}"
        )
        return text + (": all ok" if self.ok else ": needs attention")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "ok": self.ok,
            "counts": self.counts(),
            "checks": [c.to_dict() for c in self.checks],
            "not_applicable": list(self.not_applicable),
        }
