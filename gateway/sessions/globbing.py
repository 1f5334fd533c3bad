"""SQLite's ``GLOB`` as a PostgreSQL regular expression: ``sessions --key`` on a
PostgreSQL ledger matches exactly the keys it matches on SQLite.

SQLite's rules (``patternCompare`` in its ``func.c``), which ``glob_regex`` follows:
``*`` is any text (empty included), ``?`` one character, ``[…]`` one character of a
set: ``^`` first inverts it, ``]`` first is a literal ``]``, ``a-z`` is a range of
code points (an inverted range such as ``z-a`` matches nothing), a ``-`` first or
last is literal, and a set without its closing ``]`` makes the whole pattern match
nothing. There is no escape character (``[*]`` is a literal ``*``), and matching is
case-sensitive, by code point.

The regex is anchored (``^…$``) and spells every character that is not a letter or a
digit as a ``\\uXXXX`` / ``\\UXXXXXXXX`` escape (PostgreSQL's advanced regular
expressions read those inside and outside brackets alike), so no character of a key
can mean anything else. ``None`` is a pattern that matches nothing.
"""

from __future__ import annotations

__all__ = ["glob_regex"]


def _char(c: str) -> str:
    """``c`` as a regex atom that means only ``c``."""
    if c.isascii() and c.isalnum():
        return c
    code = ord(c)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _set(pattern: str, i: int) -> tuple[str | None, int] | None:
    """The set starting after the ``[`` at ``pattern[i - 1]``: its regex (None when it
    can match no character) and the index after its ``]``; None when unclosed."""
    invert = False
    if i < len(pattern) and pattern[i] == "^":
        invert, i = True, i + 1
    items: list[str] = []
    if i < len(pattern) and pattern[i] == "]":
        items.append(_char("]"))
        i += 1
    prior: str | None = None
    while i < len(pattern) and pattern[i] != "]":
        c = pattern[i]
        nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
        if c == "-" and prior is not None and nxt not in ("]", ""):
            if ord(prior) <= ord(nxt):
                items.append(f"{_char(prior)}-{_char(nxt)}")
            prior = None
            i += 2
            continue
        items.append(_char(c))
        prior = c
        i += 1
    if i >= len(pattern):
        return None
    if not items:
        return ("." if invert else None), i + 1
    return f"[{'^' if invert else ''}{''.join(items)}]", i + 1


def glob_regex(pattern: str) -> str | None:
    """The PostgreSQL regex (for ``~``) matching what ``pattern`` GLOBs on SQLite, or
    None when it matches nothing (an unclosed or empty set)."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            found = _set(pattern, i + 1)
            if found is None:
                return None
            atom, i = found
            if atom is None:
                return None
            out.append(atom)
            continue
        else:
            out.append(_char(c))
        i += 1
    out.append("$")
    return "".join(out)
