"""What happens to a sample that cannot be loaded: raise, call back, or skip it (replaced by a good one)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from hivedata.errors import HivedataError

SKIPPED_NAMES_KEPT = 100
OnError = str | Callable[[BaseException], Any]


class FailurePolicy:
    """on_error="skip": a bad sample becomes a copy of a good one of the same batch (an epoch keeps its
    length) and is named in `names`; "raise": the error propagates; a callable decides (raise to stop)."""

    def __init__(self, on_error: OnError) -> None:
        if on_error not in ("skip", "raise") and not callable(on_error):
            raise ValueError(f"on_error must be 'skip', 'raise' or a callable, not {on_error!r}")
        self.on_error = on_error
        self.skipped = 0
        self.names: deque[str] = deque(maxlen=SKIPPED_NAMES_KEPT)

    def apply(self, failed: list[tuple[int, BaseException]], images: np.ndarray, labels: np.ndarray,
              describe: Callable[[int], str]) -> None:
        """Handles a batch's failures in place; describe(j) names sample j of the batch."""
        bad = []
        for j, exc in failed:
            if self.on_error == "raise":
                raise exc
            if callable(self.on_error):
                self.on_error(exc)
            bad.append(j)
            self.skipped += 1
            self.names.append(f"{describe(j)}: {exc}")
        if not bad:
            return
        good = [j for j in range(len(labels)) if j not in set(bad)]
        if not good:
            raise HivedataError(f"every sample of a batch failed to load; the first: {failed[0][1]}")
        for n, j in enumerate(bad):  # replace with good samples of the same batch, deterministically
            src = good[n % len(good)]
            images[j] = images[src]
            labels[j] = labels[src]
