"""Text from a record made safe for a terminal: its control, format and separator
characters written as JSON's \\uXXXX escapes. Shared by every command that prints a
record's strings (`docket divergences`, `docket domain status`)."""

from __future__ import annotations

import unicodedata

# Control characters (Cc: C0, DEL, C1) a terminal acts on (ESC [2J clears it); format
# characters (Cf) that reorder or hide text (U+202E RIGHT-TO-LEFT OVERRIDE shows what
# follows reversed, U+200B is invisible); line and paragraph separators
# (Zl, Zp), which break a cell's line where the record has none.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


class _Escapes(dict):
    """The str.translate table of :func:`printable`, filled as escaped characters are
    met: the categories span the whole of Unicode (Cf reaches U+E007F), too many to list
    at import. Only escapes are kept (a few hundred at most); any other character is a
    KeyError, which str.translate leaves as it is."""

    def __missing__(self, code: int) -> str:
        if unicodedata.category(chr(code)) not in _ESCAPED_CATEGORIES:
            raise KeyError(code)
        if code <= 0xFFFF:
            shown = f"\\u{code:04x}"
        else:  # as JSON writes it: a surrogate pair
            high, low = divmod(code - 0x10000, 0x400)
            shown = f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
        self[code] = shown
        return shown


_ESCAPES = _Escapes()


def printable(text: str) -> str:
    """``text`` with its control and format characters (Unicode categories Cc, Cf) and
    line and paragraph separators (Zl, Zp) written as \\uXXXX, as JSON writes them
    (one beyond U+FFFF as its surrogate pair, U+E0001 as \\udb40\\udc01), e.g.
    "b\\x1b[2J" -> "b\\u001b[2J". Every string of a record the table shows passes
    here: a Kafka-native producer's key or a corrupted report may hold any, and the table
    printed them raw to the operator's terminal (the ninth fresh-user trial: ESC in a
    key; a later trial: ESC and U+202E in a copy's instance)."""
    return text.translate(_ESCAPES)
