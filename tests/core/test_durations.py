"""parse_duration / format_duration: table-driven."""

from __future__ import annotations

import pytest

from dagnats.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1d2h3m4s5ms", 93784.005),
        ("1.5s", 1.5),
        (" 30s ", 30.0),
        ("0s", 0.0),
        (5, 5.0),
        (0, 0.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration_valid(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        ("5x", "invalid duration '5x'"),
        ("30", "invalid duration '30'"),  # a string needs a unit
        ("5 s", "invalid duration"),
        ("-5s", "invalid duration"),
        ("s", "invalid duration"),
        ("", "empty duration"),
        ("   ", "empty duration"),
        (True, "expected a duration"),
        (False, "expected a duration"),
        (None, "expected a duration"),
        ([5], "expected a duration"),
    ],
)
def test_parse_duration_invalid(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.5, "500ms"),
        (0.001, "1ms"),
        (1, "1s"),
        (30, "30s"),
        (60, "1m"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (86400, "1d"),
        (90061, "1d1h1m1s"),
        (1.5, "1.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["500ms", "30s", "5m", "1h30m", "2d", "1d1h1m1s"])
def test_format_parse_round_trip(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), "nan", "inf"], ids=["float-nan", "float-inf", "str-nan", "str-inf"]
)
def test_non_finite_durations_are_rejected(value: object) -> None:
    """Regression: NaN and infinity used to be accepted. YAML can spell them (`.nan`, `.inf`) and
    JSON encodes them as null, so a run.started event carrying one no longer decoded."""
    with pytest.raises(ValueError):
        parse_duration(value)
