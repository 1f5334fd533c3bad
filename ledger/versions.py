"""Expected-version markers for ``Ledger.append``."""

from __future__ import annotations

import enum

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "ExpectedVersion",
    "check_expected",
    "describe_expected",
    "validate_expected",
]


class _Marker(enum.Enum):
    ANY = "any"
    NO_STREAM = "no stream"
    STREAM_EXISTS = "stream exists"

    def __repr__(self) -> str:
        return self.name


ANY = _Marker.ANY
"""Append whatever version the stream is at."""
NO_STREAM = _Marker.NO_STREAM
"""Append only if the stream has no events yet."""
STREAM_EXISTS = _Marker.STREAM_EXISTS
"""Append only if the stream already has at least one event."""

ExpectedVersion = int | _Marker


def check_expected(expected: ExpectedVersion, current: int) -> bool:
    """True when a stream at ``current`` satisfies ``expected``."""
    if expected is ANY:
        return True
    if expected is NO_STREAM:
        return current == 0
    if expected is STREAM_EXISTS:
        return current > 0
    return current == expected


def describe_expected(expected: object) -> str:
    if isinstance(expected, _Marker):
        return expected.value
    if expected == 0:
        return "no stream (version 0)"
    return f"version {expected}"


def validate_expected(expected: object) -> ExpectedVersion:
    """Reject anything that is neither a marker nor a non-negative int."""
    if isinstance(expected, _Marker):
        return expected
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise TypeError(
            "expected_version must be ANY, NO_STREAM, STREAM_EXISTS or an int >= 0, "
            f"not {expected!r}"
        )
    return expected
