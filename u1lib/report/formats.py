"""How a number reads in the report, formatted once so the page and the tests agree: thousands
separators, never e-notation, loss decimals that tell the variants apart, signed gaps, sizes, durations."""

from __future__ import annotations

import json
import math

from u1lib.report.collect import is_number

MISSING = "—"


def fmt_number(value, digits: int = 4) -> str:
    """Ints with thousands separators; floats to ``digits`` significant digits, never in e-notation
    when large (a throughput of 1234.5 images/s reads "1,234", not "1.23e+03")."""
    if value is None:
        return MISSING
    if not is_number(value):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and abs(value) >= 10**digits):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def loss_decimals(values: list[float | None], least: int = 3, most: int = 8) -> int:
    """Decimal places that tell the given losses apart, plus one so their gaps read to two digits
    (an 8B run's variants differ in the 5th); one count per column so the digits line up."""
    distinct = {v for v in values if is_number(v) and math.isfinite(v)}
    for decimals in range(least - 1, most):
        if len({f"{v:.{decimals}f}" for v in distinct}) == len(distinct):
            return decimals + 1
    return most


def fmt_loss(value, decimals: int) -> str:
    return MISSING if value is None else f"{value:.{decimals}f}"


def fmt_delta(value, decimals: int) -> str:
    """A signed difference with at least two significant digits, never in e-notation."""
    if value is None:
        return MISSING
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)) + 1e-9)  # 1e-4 computed as 9.9999e-05 is still 1e-4
    return f"{value:+.{min(10, max(decimals, 1 - exponent))}f}"


def fmt_percent(value) -> str:
    if value is None:
        return MISSING
    if value == 0:
        return "0%"
    exponent = math.floor(math.log10(abs(value)) + 1e-9)
    return f"{value:+.{min(8, max(1, 2 - exponent))}f}%"


def fmt_bytes(value) -> str:
    if not is_number(value):
        return fmt_number(value)
    size, unit = float(value), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def fmt_duration(seconds) -> str:
    if not is_number(seconds):
        return MISSING
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def fmt_value(value) -> str:
    """A config or knob value as a short literal: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
