"""Preemption and Ctrl-C: a signal becomes a flag that the train loop polls.

    with PreemptionGuard() as guard:
        for step in ...:
            ...
            if guard.requested():      # SIGTERM or the first Ctrl-C: checkpoint and return
                break

SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) both set the flag; the loop then saves
synchronously and returns cleanly, and the command exits with ``EXIT_PREEMPTED`` so a scheduler can
tell "stopped, resumable" from success. A second Ctrl-C while the flag is set exits at once
(``KeyboardInterrupt``; the last checkpoint written is intact, the current step is lost). Across
processes the flag is OR-reduced, so every host saves the same step.
"""
from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry" - rerun to resume.
EXIT_PREEMPTED = 75


class PreemptionGuard:
    """Context manager: SIGTERM / the first SIGINT set a flag instead of killing the process (main
    thread only); a second SIGINT raises KeyboardInterrupt."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self._flag = False
        self._previous = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self._flag:
            raise KeyboardInterrupt("second Ctrl-C: stopping at once")
        name = signal.Signals(signum).name
        how = " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        logging.warning("received %s: will checkpoint and exit at the next step%s", name, how)
        self._flag = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
        return False

    def trigger(self):
        """Request a stop as if a signal had arrived (tests, and callers with other triggers)."""
        self._flag = True

    def requested(self) -> bool:
        """True if any process received the signal (a collective when running multi-process)."""
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
        return bool(np.any(flags))
