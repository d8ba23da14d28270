"""Where a training job's wall time goes, phase by phase: the overhead a run pays beyond its steps
(loading, compilation in the first step, validation, previews, files) is what a user waits for and
what the next speed-up should attack, so metrics.json keeps it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class JobClock:
    """Seconds per named phase since the clock was made; :meth:`summary` adds ``other`` (time in no phase).

    Phases nest and count exclusively: an adapter written inside ``save`` counts as ``adapters``, and
    ``save`` keeps only the rest, so the phases and ``other`` always add up to the total.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # per open phase: seconds spent in the phases nested in it

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            own = elapsed - self._inner.pop()
            if self._inner:
                self._inner[-1] += elapsed
            self.seconds[name] = self.seconds.get(name, 0.0) + own

    def summary(self) -> dict[str, float]:
        """``{"total": s, <phase>: s, ..., "other": s}``, rounded to 10 ms."""
        total = time.perf_counter() - self.started
        other = total - sum(self.seconds.values())
        return {"total": round(total, 2), **{k: round(v, 2) for k, v in self.seconds.items()}, "other": round(other, 2)}
