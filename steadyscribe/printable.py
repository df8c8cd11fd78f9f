"""Names as a terminal or a log may show them: control characters escaped.

File names and URLs come from users and from whoever named the files. A newline in one would
start a new line in the run summary or a log (a crafted name could print a fake
`files: 99 ok`), an escape sequence would drive the terminal, and bidirectional overrides would
show the text in another order. `printable` writes each such character as a Python escape
(`\\n`, `\\x1b`, `\\u202e`); the tables keep the real names.
"""

from __future__ import annotations

import unicodedata

# Unicode categories shown escaped: controls (C0, DEL, C1), line and paragraph separators, and
# format characters (among them the bidirectional overrides and zero-width characters).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cf"})


def printable(text: str) -> str:
    """`text` with every control, separator and format character escaped (`\\n`, `\\x1b`, `\\u2028`)."""
    if text.isprintable():  # the common case: nothing to escape
        return text
    return "".join(_escaped(char) if unicodedata.category(char) in _ESCAPED_CATEGORIES else char for char in text)


def _escaped(char: str) -> str:
    return repr(char)[1:-1]
