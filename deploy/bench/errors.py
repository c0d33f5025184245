"""The bench's one failure type, so every module reports a broken measurement the same way.

bench.py turns a ToolError into exit status 1; a missed target is a result, not an error.
"""

from __future__ import annotations


class ToolError(Exception):
    """The measurement itself failed (not a missed target)."""
