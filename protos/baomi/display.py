"""The one rule for showing a string an attacker may have chosen (a USB product name or
serial, a file name, a command line, any event field) in HTML, PDF, CSV or a terminal.

Control characters (C0, DEL, C1), line and paragraph separators, and format characters
(bidi overrides and isolates U+202A-202E, U+2066-2069, marks U+200E/F and U+061C,
zero-width U+200B-200D, U+FEFF, ...) are shown as visible escapes: ``\\n``, ``\\x1b``,
``\\u202e``. So ``Backup\\u202egnp.exe`` cannot read as ``Backup…exe.png``, an ESC
sequence cannot drive a terminal and a newline cannot forge a second line. Shared by the
agent and the collector, like :mod:`baomi.chain`.
"""

from __future__ import annotations

import json
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Cc controls, Cf format (bidi, zero-width, BOM), Cs lone surrogates, Zl/Zp separators
# and Cn unassigned code points: none of them is text a person can read.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Cn"})
_SURROGATE_BYTES = range(0xDC80, 0xDD00)  # bytes that were not UTF-8 (surrogateescape)


def hidden(char: str) -> bool:
    """True for a character :func:`escape` shows as an escape."""
    return unicodedata.category(char) in _HIDDEN_CATEGORIES


def _escaped(char: str) -> str:
    point = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if point in _SURROGATE_BYTES:
        return f"\\x{point - 0xDC00:02x}"
    if point <= 0xFF:
        return f"\\x{point:02x}"
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def escape(text: str, *, lines: bool = False) -> str:
    """``text`` with every hidden character as a visible escape.

    A backslash is doubled, so an escape seen is never a literal backslash typed by the
    attacker. ``lines=True`` is for multi-line documents shown as such (an event's JSON,
    a policy file): newlines and tabs stay, and backslashes are left alone (JSON already
    doubles them; a policy file's own escapes must survive the editor).
    """
    if text.isascii() and text.isprintable() and (lines or "\\" not in text):
        return text  # the common case, without a loop
    out = []
    for char in text:
        if char == "\\" and not lines:
            out.append("\\\\")
        elif lines and char in "\n\t":
            out.append(char)
        elif hidden(char):
            out.append(_escaped(char))
        else:
            out.append(char)
    return "".join(out)


def escape_json(text: str) -> str:
    r"""JSON text (as ``json.dumps(..., ensure_ascii=False)`` writes it) with every hidden
    character inside its strings as a ``\uXXXX`` escape: still valid JSON that decodes
    to the same values, and safe to print to a terminal."""
    return "".join(json.dumps(c)[1:-1] if hidden(c) else c for c in text)


class Lines(str):
    """A multi-line document for a template: shown with ``escape(..., lines=True)``."""

    __slots__ = ()


def finalize(value: object) -> object:
    """Jinja ``finalize``: every ``{{ … }}`` that prints a string goes through
    :func:`escape`, so a template cannot forget it. Markup (already HTML, such as the
    console's SVG charts) keeps its layout and stays markup; a :class:`Lines` keeps its
    lines."""
    if not isinstance(value, str):
        return value
    if hasattr(value, "__html__"):
        return type(value)(escape(value, lines=True))
    return escape(value, lines=isinstance(value, Lines))
