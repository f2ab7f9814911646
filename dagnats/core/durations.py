"""Duration values: "500ms", "30s", "5m", "1h30m", "2d" or a number of seconds."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Return seconds for a duration value; raise ValueError with a user-facing reason."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "30s" or a number of seconds, got {value!r}')
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"duration must be a finite number of seconds, got {value!r}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f'expected a duration like "30s" or a number of seconds, got {value!r}')
    text = value.strip()
    pos, total = 0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            raise ValueError(
                f"invalid duration {value!r}: use a number of seconds or units ms, s, m, h, d "
                '(e.g. "500ms", "30s", "1h30m")'
            )
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError("empty duration")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds compactly for messages: 0.5 -> "500ms", 5400 -> "1h30m"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
