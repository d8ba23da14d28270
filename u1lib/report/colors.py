"""One colour and marker per variant, derived from its name so that a variant keeps them across reports.

A colour indexed by list position changes whenever a variant is added before it. Here each name
hashes (SHA-256, not Python's salted ``hash``) to a preferred slot of a 12-colour qualitative palette,
and names claim slots in the order of their hashes, a collision moving to the next free slot. So up
to 12 variants always get distinct colours, and the colours do not depend on the order of the names.
Adding a variant keeps every other colour unless the newcomer outranks, in hash order, a variant on
the slot it wants; that variant then moves. Strict stability and distinctness cannot both hold with
12 colours (a colour fixed by the name alone would repeat among 12 names), so distinctness wins:
adding a 6th random name recolours none in about 3 cases of 4, a 12th about 2 of the 11.
Past 12 variants the slots are reused with a dashed line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Tableau 10 with its grey (kept for the base model) swapped for indigo, plus black and a light green:
# distinct on white, and each slot has its own marker for readers who cannot tell some hues apart
PALETTE = (
    ("#1f77b4", "o"),
    ("#ff7f0e", "s"),
    ("#2ca02c", "^"),
    ("#d62728", "D"),
    ("#9467bd", "v"),
    ("#8c564b", "P"),
    ("#e377c2", "X"),
    ("#393b79", "<"),
    ("#bcbd22", ">"),
    ("#17becf", "p"),
    ("#000000", "*"),
    ("#98df8a", "h"),
)
BASE_COLOR = "#7f7f7f"  # the untrained model: a reference, not a contender


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str = "-"


def _digest(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def variant_styles(names: list[str]) -> dict[str, Style]:
    """Style per name; depends on the set of names, never on their order."""
    styles: dict[str, Style] = {}
    free: list[int] = []
    round_ = 0
    for name in sorted(set(names), key=lambda n: (_digest(n), n)):
        if not free:
            free, round_ = list(range(len(PALETTE))), round_ + 1
        preferred = _digest(name) % len(PALETTE)
        slot = min(free, key=lambda s: (s - preferred) % len(PALETTE))
        free.remove(slot)
        color, marker = PALETTE[slot]
        styles[name] = Style(color, marker, "-" if round_ == 1 else "--")
    return styles
