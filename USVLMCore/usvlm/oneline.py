"""What counts as one line of user text (a prompt, a segment name).

Names go into NRRD header lines and DICOM strings, so they must not break a line or hide control
codes. Format characters (Unicode category Cf) are ordinary parts of text, though: the zero-width
non-joiner of Persian and the Indic scripts, the joiner of emoji sequences, and the left-to-right /
right-to-left marks of mixed-direction text. They are kept; only the characters that reorder the
display of whatever follows them (bidirectional embeddings, overrides and isolates, the "Trojan
Source" characters) are refused, with control characters and line or paragraph separators.
"""

from __future__ import annotations

import unicodedata

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BREAKING = frozenset({"Cc", "Zl", "Zp", "Cs", "Co", "Cn"})


def one_line_problem(text: str) -> str | None:
    """Why `text` cannot be used as one line of text, or None when it can."""
    for c in text:
        category = unicodedata.category(c)
        if category in _BREAKING:
            what = {"Zl": "a line separator", "Zp": "a paragraph separator", "Cs": "a lone surrogate",
                    "Co": "a private-use character", "Cn": "an unassigned character"}.get(
                        category, "a control character")
            return f"contains {what} (U+{ord(c):04X})"
        if c in _BIDI_CONTROLS:
            return f"contains a bidirectional override (U+{ord(c):04X})"
    return None


def printable(text: object, limit: int | None = None) -> str:
    """`text` safe to print on a terminal: control and other non-printable characters escaped
    (ESC as \\x1b, a line break as \\n), so a hostile file or model name cannot drive the terminal
    or forge output lines; cut to `limit` characters (None: whole)."""
    out = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
                  for c in str(text))
    return out if limit is None or len(out) <= limit else out[:limit] + "..."
