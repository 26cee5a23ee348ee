"""A progress line for long work: steps, loss (and the last validation loss), learning rate,
samples/s, time left.

Redrawn in place on a terminal; on a pipe or in CI, one plain line every ~10% instead of
hundreds of carriage returns.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, quiet: bool = False, stream=None):
        self.label, self.total, self.quiet = label, max(total, 1), quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.began = time.perf_counter()
        self.first = 0
        self.last_print = 0.0
        self.shown_tenth = -1
        self.val: float | None = None  # the last validation loss, shown until the next

    def start(self, done: int = 0) -> None:
        self.first = done
        self.began = time.perf_counter()

    def update(self, done: int, loss: float, lr: float, rate: float,
               val: float | None = None) -> None:
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.began
        per_step = elapsed / max(done - self.first, 1)
        left = per_step * (self.total - done)
        width = 24
        filled = int(width * done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        if val is not None:
            self.val = val
        shown = f"  val {self.val:.4f}" if self.val is not None else ""
        line = (f"{self.label} [{bar}] {done}/{self.total}  loss {loss:.4f}{shown}  "
                f"lr {lr:.2e}  {rate:,.0f} samples/s  {left:4.0f}s left")
        if self.tty:
            now = time.perf_counter()
            if now - self.last_print > 0.1 or done == self.total:
                self.stream.write("\r" + line)
                self.stream.flush()
                self.last_print = now
        else:
            tenth = 10 * done // self.total
            if tenth != self.shown_tenth:
                self.shown_tenth = tenth
                self.stream.write(line + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
