"""How deep a decoded JSON document nests, checked without recursion.

Decoders, translators and encoders walk JSON recursively; a body nested 100,000 deep
takes them to the interpreter's recursion limit. Every body Gate decodes whole (the
API's translated and counted requests, the control plane's calls) is held to a depth
far above what real requests use and far below that limit.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["MAX_JSON_DEPTH", "nests_deeper_than"]

# Real requests nest a few levels, a tool's JSON schema a dozen or two.
MAX_JSON_DEPTH: Final = 128


def nests_deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Level by level, looking only at arrays and objects."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        below: list[Any] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            below += [item for item in items if isinstance(item, dict | list)]
        if not below:
            return False
        level = below
    return True
