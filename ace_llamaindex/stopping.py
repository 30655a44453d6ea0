"""SIGTERM (a container stop, a CI cancel) ends the ``ace`` command as Ctrl-C does, and does so every time.

The handler raises ``SystemExit(143)``, so atomic writes roll back, ``finally`` blocks run and temporary indexes are
removed at exit. An exception raised from a signal handler can be lost, though: where the handler runs inside code that
drops what it raised (an extension calling back into Python that discards the error, a finaliser: "Exception
ignored", a library's ``except BaseException``), the command carries on to its end and exits 0. Seen here: SIGTERM
sent while ``ace eval --engine edge`` was indexing (0-0.26 s after its shard folder appeared) ended 1 run of 21
with exit status 0 and nothing on stderr; CI's run of tests/test_faults.py's SIGTERM test failed so once.

So the signal is delivered again every :data:`REDELIVER_SECONDS` until the command has left; a delivery that lands
while an exception is already being handled (the first ``SystemExit`` unwinding: a ``finally``, an ``__exit__``) is
ignored, so cleanup is never cut short. Written by hand: neither click nor the standard library re-raises a lost exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

REDELIVER_SECONDS = 1.0  # how soon a lost stop is raised again


class _Stop:
    """The state of one ``stopped_by_sigterm`` block."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal received, once received
        self.left = threading.Event()   # the command has returned (or is leaving): no more deliveries

    def handle(self, signum: int, frame) -> None:
        if self.left.is_set():
            return
        if self.signum is None:
            self.signum = signum
            threading.Thread(target=self._redeliver, name="ace-sigterm", daemon=True).start()
        elif sys.exc_info()[0] is not None:  # unwinding already (or handling something): let it finish
            return
        raise SystemExit(128 + signum)

    def _redeliver(self) -> None:
        while not self.left.wait(REDELIVER_SECONDS):
            os.kill(os.getpid(), self.signum)


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """Inside the block (the main thread's whole command), SIGTERM raises ``SystemExit(143)``, again every
    :data:`REDELIVER_SECONDS` if something swallowed it, until the block is left."""
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.handle)
    try:
        yield
    finally:
        stop.left.set()  # the handler stays: a delivery already on its way finds the block left and returns
