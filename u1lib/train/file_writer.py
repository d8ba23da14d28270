"""The run's checkpoints and adapters go to disk on one background thread, so the GPU trains on
while hundreds of megabytes are serialised and synced (on an H200 a 2048² job spent more time
writing files than taking steps).

The caller copies the tensors to the CPU first (the next step changes the live ones in place) and
hands over a function that writes the copy. Writes run one at a time in the order given, each still
atomic (temporary name, fsync, rename), so a reader sees a file complete or not at all. At most one
write waits behind the running one, which bounds the host memory the copies hold. A failed write is
raised at every later :meth:`submit` or :meth:`drain`, and no write after it runs: a later file (a
prune after a checkpoint, say) never lands on top of a missing one.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)


class BackgroundWriter:
    def __init__(self, waiting: int = 1) -> None:
        """``waiting``: how many writes may queue behind the running one before :meth:`submit` blocks."""
        self._queue: queue.Queue = queue.Queue(maxsize=waiting)
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, what: str, write: Callable[[], object]) -> None:
        """Run ``write()`` after the writes before it; ``what`` names the file in an error."""
        self._raise_failure()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="u1lib-file-writer", daemon=True)
            self._thread.start()
        self._queue.put((what, write))

    def drain(self) -> None:
        """Wait until every submitted write has finished; raise the first one that failed."""
        self._queue.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _work(self) -> None:
        while True:
            what, write = self._queue.get()
            try:
                if self._failed is None:
                    write()
                else:
                    log.warning("not writing %s: an earlier write failed", what)
            except BaseException as error:  # handed to the training thread, which decides
                log.error("writing %s failed: %s", what, error)
                self._failed = error
            finally:
                self._queue.task_done()
