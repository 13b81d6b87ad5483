"""The train loop's progress display: a bar on a terminal, a line every few seconds in a log.

    bar = Progress(total=1000, start=0)
    bar.phase("compiling the train step")       # its own line, with the time it took when done
    bar.update(step, loss=0.12)                 # "step 250/1000 [####      ] 25% 27.1 steps/s ETA 28 s"
    bar.phase("writing the sample grid (100 samples)")
    bar.close()

On a terminal (stderr is a TTY) the bar is redrawn in place at most ``redraw_secs`` apart; otherwise
(a log file, CI, a scheduler) a plain line is printed every ``log_secs``. Steps/s is measured over
the steps since the previous report, excluding compile time, and the ETA extrapolates it. Only
process 0 draws; ``enabled=False`` turns it off (tests, library use).
"""
from __future__ import annotations

import sys
import time


def _fmt_secs(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class Progress:
    def __init__(self, total: int, start: int = 0, *, stream=None, enabled: bool = True,
                 width: int = 24, redraw_secs: float = 0.2, log_secs: float = 10.0):
        self.total, self.start = int(total), int(start)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.every = redraw_secs if self.tty else log_secs
        self._t0 = self._t_last = time.monotonic()
        self._step_last = self.start
        self._rate = None
        self._drawn = False
        self._phase = None

    def begin(self, start: int):
        """Set the step training starts (or resumes) from."""
        self.start = self._step_last = int(start)
        self._t_last = time.monotonic()

    # ---- phases ---------------------------------------------------------------------------------
    def phase(self, text: str):
        """End the current phase (printing its duration) and start a new one on its own line."""
        self.end_phase()
        self._phase = (text, time.monotonic())
        self._print(f"{text} ...")

    def end_phase(self):
        if self._phase is None:
            return
        text, t = self._phase
        self._phase = None
        self._print(f"{text}: done in {_fmt_secs(time.monotonic() - t)}")
        self._t_last = time.monotonic()   # compile/sampling time is not training time

    # ---- the bar --------------------------------------------------------------------------------
    def line(self, step: int, **extra) -> str:
        done = max(0, min(step, self.total))
        frac = done / max(self.total, 1)
        fill = int(round(frac * self.width))
        text = f"step {done}/{self.total} [{'#' * fill}{' ' * (self.width - fill)}] {frac:4.0%}"
        if self._rate:
            eta = (self.total - done) / self._rate
            text += f" {self._rate:.1f} steps/s ETA {_fmt_secs(eta)}"
        for k, v in extra.items():
            text += f" {k} {v:.4g}" if isinstance(v, float) else f" {k} {v}"
        return text

    def update(self, step: int, *, force: bool = False, **extra):
        if not self.enabled:
            return
        self.end_phase()
        now = time.monotonic()
        if not force and now - self._t_last < self.every and step < self.total:
            return
        if step > self._step_last and now > self._t_last:
            self._rate = (step - self._step_last) / (now - self._t_last)
        self._t_last, self._step_last = now, step
        text = self.line(step, **extra)
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self._drawn = True
            if step >= self.total:
                self.stream.write("\n")
                self._drawn = False
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        self.end_phase()
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _print(self, text: str):
        if not self.enabled:
            return
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()
