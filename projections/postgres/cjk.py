"""The CJK characters, defined once: ``CJK_RANGES``, as a Python regex (``CJK``) and
as a PostgreSQL regex literal (``CJK_SQL``).

Chinese, Japanese and Korean text runs words together without spaces, so a word
parser reads a run of it as one word; the PostgreSQL search matches a term holding
one of these characters as a substring instead (``projections.postgres.search``),
served by a trigram index over the messages that hold one (``CJK_SQL`` is that
index's predicate, and the search repeats it word for word so the planner may use
the index).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CJK", "CJK_RANGES", "CJK_SQL"]

CJK_RANGES: Final = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3007),  # ideographic iteration mark, closing mark, number zero
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x31FF),  # Bopomofo, Hangul compatibility jamo, Kanbun, strokes, kana ext.
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFFDC),  # halfwidth Katakana and Hangul
    (0x1B000, 0x1B16F),  # Kana supplement, extended A
    (0x20000, 0x2FA1F),  # CJK extensions B to F, compatibility supplement
    (0x30000, 0x323AF),  # CJK extensions G and H
)
"""Inclusive code point ranges: hangul, CJK radicals, the ideographic marks 々〆〇,
kana, bopomofo, the CJK unified ideographs (extensions A to H) and compatibility
ideographs."""

_CLASS = "[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in CJK_RANGES) + "]"
CJK: Final = re.compile(_CLASS)
"""A CJK character (Python)."""
CJK_SQL: Final = "'" + _CLASS + "'"
"""The same character class as a PostgreSQL string literal (for ``~``), its
characters as themselves (a UTF-8 database reads them as code points)."""
