"""Which characters text may hold: the rules, each written once.

There are three, from the narrowest refusal to the widest:

* ``has_ascii_controls``: C0 controls (U+0000-U+001F) and DEL (U+007F). This is
  what the ledger refuses in stream names, event ids and session ids (anything
  else is stored as given), so code that must predict what the ledger accepts
  (the Hermes import choosing which ids it can keep, hook names) uses it too.
* ``has_control_chars``: Unicode categories Cc (C0, DEL and the C1 controls
  U+0080-U+009F) and Cs (lone surrogates). This is what the gateway refuses in
  the identifiers it builds session keys and transcript names from (a source's
  ids, session ids, keys): they must print on one line and encode as UTF-8. It
  is stricter than the ledger's rule, which is why the two are distinct.
* ``has_unstorable_chars``: NUL and lone surrogates. Display text (chat and user
  names, topics) may span lines, but these cannot be stored or shown faithfully.

Each is one regex scan (a character class), not a per-character category lookup.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["has_ascii_controls", "has_control_chars", "has_unstorable_chars"]

_ASCII_CONTROLS: Final = re.compile("[\x00-\x1f\x7f]")
_CONTROL_CHARS: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_UNSTORABLE_CHARS: Final = re.compile("[\x00\ud800-\udfff]")


def has_ascii_controls(text: str) -> bool:
    """True if ``text`` holds a C0 control or DEL: what the ledger refuses in ids."""
    if text.isascii() and text.isprintable():
        return False  # the common case, without the regex
    return _ASCII_CONTROLS.search(text) is not None


def has_control_chars(text: str) -> bool:
    """True if ``text`` holds a Unicode control (Cc) or a lone surrogate (Cs): what
    the gateway refuses in the ids it builds keys and transcript names from."""
    return _CONTROL_CHARS.search(text) is not None


def has_unstorable_chars(text: str) -> bool:
    """True if ``text`` holds NUL or a lone surrogate: what display text may not hold."""
    return _UNSTORABLE_CHARS.search(text) is not None
