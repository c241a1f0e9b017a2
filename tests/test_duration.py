"""Go-style duration parsing and formatting (time.ParseDuration / Duration.String)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serfd.base.duration import format_duration, parse_duration

# Float seconds keep nanosecond precision up to ~2**50 ns (13 days): ns -> s -> ns is exact.
MAX_NS = 2**50


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("500ms", 0.5),
        ("5s", 5.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("2.5s", 2.5),
        ("300us", 0.0003),
        ("300\u00b5s", 0.0003),  # micro sign
        ("300\u03bcs", 0.0003),  # greek mu
        ("10ns", 1e-8),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1h2m3s4ms", 3723.004),
        ("+5s", 5.0),
        ("24h", 86400.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("5", "missing unit"),
        ("0.0", "missing unit"),
        ("-5s", "negative durations are not allowed"),
        ("-0", "negative"),
        ("5x", 'unknown unit "x"'),
        ("5 s", "unknown unit"),
        ("1e3s", 'unknown unit "e"'),
        ("s", "expected a number"),
        (".s", "expected a number"),
        ("1.2.3s", "missing unit"),
        ("3000000h", "out of range"),
    ],
)
def test_parse_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(text)
    assert reason in str(info.value)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        parse_duration(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (90, "1m30s"),
        (0.5, "500ms"),
        (5, "5s"),
        (2.5, "2.5s"),
        (3600, "1h0m0s"),
        (86400, "24h0m0s"),
        (3723.004, "1h2m3.004s"),
        (0.0003, "300\u00b5s"),
        (1.5e-6, "1.5\u00b5s"),
        (1e-8, "10ns"),
        (0.0015, "1.5ms"),
    ],
)
def test_format_like_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=MAX_NS))
def test_format_parse_round_trip(ns: int) -> None:
    seconds = ns / 1e9
    text = format_duration(seconds)
    assert round(parse_duration(text) * 1e9) == ns
    assert format_duration(parse_duration(text)) == text


_UNITS = st.sampled_from(["ns", "us", "\u00b5s", "ms", "s", "m", "h"])


@given(st.lists(st.tuples(st.integers(0, 10_000), _UNITS), min_size=1, max_size=4))
def test_parse_sums_components(parts: list[tuple[int, str]]) -> None:
    scale = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "ms": 10**6, "s": 10**9}
    scale |= {"m": 60 * 10**9, "h": 3600 * 10**9}
    text = "".join(f"{n}{unit}" for n, unit in parts)
    ns = sum(n * scale[unit] for n, unit in parts)
    # computed exactly in integer nanoseconds, then one rounding to float seconds
    assert parse_duration(text) == ns / 1e9
    # the canonical form is a fixed point
    canonical = format_duration(parse_duration(text))
    assert format_duration(parse_duration(canonical)) == canonical
