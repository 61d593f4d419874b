"""Progress of a long copy in images/s and MB/s: a live line on a terminal, a log line every so often otherwise.

Threads call add(); the meter writes at most one update per `every` seconds (a redrawn line on a TTY, where
`every` is short; a whole line through `log` elsewhere, e.g. a batch job's log file), and finish() prints the
totals. `clock` is injectable so the arithmetic can be tested without waiting.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

MB = 1e6


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ThroughputMeter:
    """Counts images and bytes done out of a known total and reports rates (since start) and an ETA."""

    def __init__(self, total_images: int, total_bytes: int, *, what: str = "pack", log: Callable[[str], None] = print,
                 stream: TextIO | None = None, every: float | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total_images, self.total_bytes, self.what = total_images, total_bytes, what
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if every is not None else (0.5 if self.tty else 30.0)
        self.enabled, self.log, self.clock = enabled, log, clock
        self.images = self.bytes = 0
        self.skipped_images = self.skipped_bytes = 0  # already there (resumed): not part of the rates
        self._lock = threading.Lock()
        self._t0 = clock()
        self._last = self._t0

    def add(self, images: int, nbytes: int, *, skipped: bool = False) -> None:
        """Records work done (skipped: found already done) and reports if it is time to."""
        with self._lock:
            if skipped:
                self.skipped_images += images
                self.skipped_bytes += nbytes
            else:
                self.images += images
                self.bytes += nbytes
            now = self.clock()
            if not self.enabled or now - self._last < self.every:
                return
            self._last = now
            line = self.line(now)
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()
        else:
            self.log(line)

    def rates(self, now: float | None = None) -> tuple[float, float]:
        """(images/s, MB/s) of the work done so far (skipped work excluded)."""
        elapsed = max(1e-9, (self.clock() if now is None else now) - self._t0)
        return self.images / elapsed, self.bytes / MB / elapsed

    def line(self, now: float | None = None) -> str:
        """'pack: 1,234/20,000 images (6%), 135 MB of 2,200 MB, 1,234 images/s, 135.0 MB/s, ETA 0:00:14'."""
        ips, mbs = self.rates(now)
        done_i = self.images + self.skipped_images
        done_b = self.bytes + self.skipped_bytes
        left = self.total_bytes - done_b
        eta = _duration(left / (mbs * MB)) if mbs > 0 and left > 0 else "-"
        pct = 100 * done_b / self.total_bytes if self.total_bytes else 100.0
        return (f"{self.what}: {done_i:,}/{self.total_images:,} images ({pct:.0f}%), {done_b / MB:,.0f} of "
                f"{self.total_bytes / MB:,.0f} MB, {ips:,.0f} images/s, {mbs:,.1f} MB/s, ETA {eta}")

    def finish(self) -> str:
        """The closing summary line (also ends a live line)."""
        ips, mbs = self.rates()
        elapsed = self.clock() - self._t0
        line = (f"{self.what}: {self.images:,} images, {self.bytes / MB:,.1f} MB in {elapsed:.1f} s: "
                f"{ips:,.0f} images/s, {mbs:,.1f} MB/s")
        if self.skipped_images:
            line += f" ({self.skipped_images:,} images already there)"
        if self.enabled and self.tty:
            self.stream.write(f"\r{line}\x1b[K\n")
            self.stream.flush()
        return line
