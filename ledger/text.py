"""Which characters text may hold: the rules, each written once.

There are four, from the narrowest refusal to the widest:

* ``has_lone_surrogates``: unpaired surrogates (U+D800-U+DFFF). UTF-8 cannot
  encode them, so no text the ledger stores may hold one: event bodies and
  ``meta`` refuse them (``ledger.events``), like every rule below.
* ``has_unstorable_chars``: NUL and lone surrogates. Display text (chat and user
  names, topics) may span lines, but these cannot be stored or shown faithfully.
* ``has_id_breaking_chars``: what the ledger refuses in stream names, event ids
  and session ids (anything else is stored as given): the C0 controls
  (U+0000-U+001F), DEL (U+007F), the other line breaks ``str.splitlines`` splits
  on (NEL U+0085, LINE SEPARATOR U+2028, PARAGRAPH SEPARATOR U+2029) and lone
  surrogates. An id must print on one line and encode as UTF-8. Code that must
  predict what the ledger accepts (the Hermes import choosing which ids it can
  keep, hook names) uses it too; ``has_ascii_controls`` is its former name.
* ``has_control_chars``: all of that and the C1 controls (U+0080-U+009F): every
  Unicode control (Cc), lone surrogate (Cs) and line or paragraph separator
  (Zl, Zp). This is what the gateway refuses in the identifiers it builds session
  keys and transcript names from (a source's ids, session ids, keys). It is
  stricter than the ledger's rule, which is why the two are distinct.

Each is one regex scan (a character class), not a per-character category lookup.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "has_ascii_controls",
    "has_control_chars",
    "has_id_breaking_chars",
    "has_lone_surrogates",
    "has_unstorable_chars",
]

_LONE_SURROGATES: Final = re.compile("[\ud800-\udfff]")
_UNSTORABLE_CHARS: Final = re.compile("[\x00\ud800-\udfff]")
_ID_BREAKING: Final = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")
_CONTROL_CHARS: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def has_lone_surrogates(text: str) -> bool:
    """True if ``text`` holds an unpaired surrogate: what no stored text may hold."""
    return not text.isascii() and _LONE_SURROGATES.search(text) is not None


def has_unstorable_chars(text: str) -> bool:
    """True if ``text`` holds NUL or a lone surrogate: what display text may not hold."""
    return _UNSTORABLE_CHARS.search(text) is not None


def has_id_breaking_chars(text: str) -> bool:
    """True if ``text`` holds a C0 control, DEL, a line break (U+0085, U+2028,
    U+2029) or a lone surrogate: what the ledger refuses in ids."""
    if text.isascii() and text.isprintable():
        return False  # the common case, without the regex
    return _ID_BREAKING.search(text) is not None


has_ascii_controls = has_id_breaking_chars
"""The former name of ``has_id_breaking_chars`` (the same rule)."""


def has_control_chars(text: str) -> bool:
    """True if ``text`` holds a Unicode control (Cc), a lone surrogate (Cs) or a line
    or paragraph separator (Zl, Zp): what the gateway refuses in the ids it builds
    keys and transcript names from."""
    return _CONTROL_CHARS.search(text) is not None
