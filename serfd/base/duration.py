"""Go-style durations ("500ms", "1m30s", "24h") as used in Serf's config files.

`parse_duration` follows Go's `time.ParseDuration` (a sequence of decimal numbers, each
with an optional fraction and a mandatory unit; "0" alone is allowed) except that
negative durations are refused. Internally the value is computed as an exact integer
number of nanoseconds, like Go, and returned as float seconds. `format_duration`
is Go's `time.Duration.String()` ("1m30s", "500ms", "24h0m0s", "0s").
"""

from __future__ import annotations

import json
import re

__all__ = ["format_duration", "format_duration_ns", "parse_duration"]


def _q(text: str) -> str:
    """Double-quoted like a TOML basic string, for messages."""
    return json.dumps(text, ensure_ascii=False)


_NS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # µ MICRO SIGN, what Go prints
    "\u03bcs": 1_000,  # μ GREEK SMALL LETTER MU, also accepted by Go
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}

# Go's time.Duration is an int64 of nanoseconds.
_MAX_NS = 2**63 - 1

# One "<number><unit>" component: digits with an optional fraction (".5", "1.", "1.5").
_COMPONENT = re.compile(r"(\d+\.?\d*|\.\d+)([^\d.]*)")


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("1m30s") into seconds; ValueError says why not."""
    if not isinstance(text, str):
        raise TypeError(f"expected a duration string, got {type(text).__name__}")
    s = text
    if s.startswith("-"):
        raise ValueError(f"invalid duration {_q(text)}: negative durations are not allowed")
    s = s.removeprefix("+")
    if s == "0":
        return 0.0
    if s == "":
        raise ValueError(f"invalid duration {_q(text)}: empty")
    from fractions import Fraction  # fractions pulls in decimal: load it when it is used

    total = Fraction(0)
    pos = 0
    while pos < len(s):
        m = _COMPONENT.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {_q(text)}: expected a number at {_q(s[pos:])}")
        number, unit = m.group(1), m.group(2)
        if unit == "":
            if s.replace(".", "", 1).isdigit():
                raise ValueError(
                    f'invalid duration {_q(text)}: missing unit (e.g. "{s}s"; '
                    "units are ns, us, ms, s, m, h)"
                )
            raise ValueError(f"invalid duration {_q(text)}: missing unit after {_q(number)}")
        if unit not in _NS_PER_UNIT:
            raise ValueError(
                f"invalid duration {_q(text)}: unknown unit {_q(unit)} (use ns, us, ms, s, m, h)"
            )
        total += Fraction(number) * _NS_PER_UNIT[unit]
        pos = m.end()
    ns = int(total)  # Go truncates sub-nanosecond fractions
    if ns > _MAX_NS:
        raise ValueError(f"invalid duration {_q(text)}: out of range (max about 292 years)")
    return ns / 1e9


def _fraction_str(value: int, digits: int) -> str:
    """`value` scaled down by 10**digits, with trailing zeros (and a bare '.') dropped."""
    whole, frac = divmod(value, 10**digits)
    if frac == 0:
        return str(whole)
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def format_duration(seconds: float) -> str:
    """Format seconds the way Go's time.Duration.String() does ("1m30s", "500ms")."""
    if seconds < 0:
        raise ValueError(f"negative duration {seconds!r}")
    return format_duration_ns(round(seconds * 1e9))


def format_duration_ns(ns: int) -> str:
    """Go's ``Duration.String()`` of ``ns`` nanoseconds, negative included ("-35s")."""
    if ns == 0:
        return "0s"
    if ns < 0:
        return "-" + format_duration_ns(-ns)
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _fraction_str(ns, 3) + "\u00b5s"
    if ns < 1_000_000_000:
        return _fraction_str(ns, 6) + "ms"
    hours, rest = divmod(ns, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    secs = _fraction_str(rest, 9) + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs
