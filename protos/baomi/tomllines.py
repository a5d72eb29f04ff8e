"""Where a key or table of a TOML file is, for error messages: tomllib parses, but
gives no line numbers. Shared by every reader of Baomi's TOML files."""

from __future__ import annotations

import re
import tomllib


class TomlLines:
    """Finds the line of a table or key, for error messages (tomllib gives none)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def table(self, *path: str) -> int:
        """The line of the header ``[a.b]`` (or ``[[a.b]]``, quoted keys too) of ``path``
        itself: ``[rooms.r30]`` is not found at ``[rooms.r301]``."""
        for i, line in enumerate(self.lines):
            if _header_path(line) == path:
                return i + 1
        return 1

    def key(self, header: int, key: str) -> int:
        """The line of ``key =`` in the table whose header is on line ``header`` or its
        sub-tables; the header's line when the key is not there."""
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        table = _header_path(self.lines[header - 1]) if 0 < header <= len(self.lines) else None
        for i in range(header, len(self.lines)):
            inner = _header_path(self.lines[i])
            if inner is not None and table is not None and inner[: len(table)] != table:
                break  # the next table: the key is not in this one
            if pattern.match(self.lines[i]):
                return i + 1
        return header


_HEADER_RE = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY_PART_RE = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*(?:\.|$)')


def _header_path(line: str) -> tuple[str, ...] | None:
    """The dotted key path of a table header line, or None when it is not one."""
    match = _HEADER_RE.match(line)
    if match is None:
        return None
    text, parts, pos = match.group(1), [], 0
    while pos < len(text):
        part = _KEY_PART_RE.match(text, pos)
        if part is None or part.end() == pos:
            return None
        token = part.group(1)
        parts.append(token[1:-1] if token[0] in "\"'" else token)
        pos = part.end()
    return tuple(parts)


def error_line(e: tomllib.TOMLDecodeError) -> int:
    """The line a TOML syntax error names (0 when it names none)."""
    match = re.search(r"at line (\d+)", str(e))
    return int(match.group(1)) if match else 0
