"""Ctrl-C (SIGINT) and SIGTERM (Snakemake, SLURM) end a training at the next step boundary.

The first signal asks the loop to finish the step it is in, save a checkpoint and stop, so the same
command resumes without losing a step; a second signal stops at once (the last checkpoint stays).
Multi-rank runs keep the default behaviour: ranks cannot agree on a boundary without a collective.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger("u1lib.progress")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after the loop stopped on a signal; the message says where it stopped and how to resume."""


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "%s: stopping after this step and saving a checkpoint (send it again to stop at once)", self.signal_name
        )


@contextlib.contextmanager
def stop_on_signals(enabled: bool) -> Iterator[StopRequest]:
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
