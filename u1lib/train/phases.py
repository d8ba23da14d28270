"""Where a training job's wall time goes, phase by phase: the overhead a run pays beyond its steps
(loading, compilation in the first step, validation, previews, files) is what a user waits for and
what the next speed-up should attack, so metrics.json keeps it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class JobClock:
    """Seconds per named phase since the clock was made; :meth:`summary` adds ``other`` (time in no phase)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def summary(self) -> dict[str, float]:
        """``{"total": s, <phase>: s, ..., "other": s}``, rounded to 10 ms."""
        total = time.perf_counter() - self.started
        other = total - sum(self.seconds.values())
        return {"total": round(total, 2), **{k: round(v, 2) for k, v in self.seconds.items()}, "other": round(other, 2)}
