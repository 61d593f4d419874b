"""How many batches the Loader keeps in flight: fixed, or sized by Little's law from what it measures."""

from __future__ import annotations

import math
import time
from collections import deque

AUTO_START = 2  # batches ahead before anything was measured
AUTO_MAX = 16


class ReadAhead:
    """Batches to prepare ahead of the consumer.

    prefetch=int keeps that many. prefetch="auto" starts at 2 and, whenever the consumer had to wait, sizes
    the depth by Little's law: batches in flight = consumer rate (batches/s) x the time one batch takes to
    arrive (the fetch latency p99 plus its decode time), plus one; it never shrinks within a run and never
    passes `max_depth` (set from the memory the slots may take).
    """

    def __init__(self, prefetch: int | str, max_depth: int = AUTO_MAX) -> None:
        if prefetch == "auto":
            self.auto, self.depth = True, min(AUTO_START, max(1, max_depth))
        elif isinstance(prefetch, int) and not isinstance(prefetch, bool) and prefetch >= 0:
            self.auto, self.depth = False, prefetch
        else:
            raise ValueError(f"prefetch must be 'auto' or an int >= 0, got {prefetch!r}")
        self.max_depth = max(self.depth, max_depth)
        self._consumed: deque[float] = deque(maxlen=32)  # when the consumer took its last batches

    def consumed(self, now: float | None = None) -> None:
        """The consumer took a batch."""
        self._consumed.append(time.perf_counter() if now is None else now)

    def rate(self) -> float:
        """Batches per second the consumer took recently (0 before two were taken)."""
        if len(self._consumed) < 2:
            return 0.0
        span = self._consumed[-1] - self._consumed[0]
        return (len(self._consumed) - 1) / span if span > 0 else 0.0

    def waited(self, arrival_s: float) -> int:
        """The consumer waited for a batch; `arrival_s`: how long a batch takes to arrive. Returns the new depth."""
        if self.auto:
            needed = math.ceil(self.rate() * arrival_s) + 1
            self.depth = max(self.depth, min(needed, self.max_depth))
        return self.depth
