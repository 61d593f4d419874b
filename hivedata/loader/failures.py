"""What happens to a sample that cannot be loaded. Two kinds of failure, two rules:

- A bad image (`BadImageError`: the bytes arrived but do not decode — not a JPEG Pillow can read either,
  truncated, a decompression bomb, an unsupported layout) follows `on_error`: "skip" replaces it by a copy
  of a good sample of the same batch (an epoch keeps its length) and names it in `skipped_names`; "raise"
  lets the error propagate; a callable is called with the error (raise to stop, return to skip).
- A missing sample (`FetchError`: HTTP 401/403/404/410, a network failure or a checksum mismatch that
  retries did not cure, an object that changed size) is an outage, not bad data: it raises, naming the
  sample, unless `max_missing` budgets for it. The budget is per epoch: a fraction of the epoch's samples
  (float in (0, 1), rounded down) or a count (int); 0, the default, allows none. Within the budget a missing
  sample is replaced like a skipped one, counted apart (`missing`, `missing_names`) and logged (each of
  the first few of an epoch by name, then a summary at most once a minute); one more raises with the count,
  the budget and the last error. `on_error` never applies to missing samples (a callable is not called).
- `FetchCancelledError` means the batch was cancelled (the loader was drained or closed while an iteration
  still waited for it): it raises and is never counted.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from hivedata.errors import BadImageError, FetchCancelledError, FetchError, HivedataError, ObjectError

log = logging.getLogger(__name__)

SKIPPED_NAMES_KEPT = 100
WARN_EACH_FIRST = 10  # missing samples per epoch logged one by one
WARN_INTERVAL_S = 60.0  # after those, at most one summary line this often
OnError = str | Callable[[BaseException], Any]
MaxMissing = int | float


def check_max_missing(max_missing: MaxMissing) -> MaxMissing:
    """Returns max_missing if it is 0, a count (int >= 1) or a fraction (float in (0, 1)); else ValueError."""
    if isinstance(max_missing, bool) or not isinstance(max_missing, numbers.Real):
        raise ValueError(f"max_missing must be a count (int >= 0) or a fraction (float in (0, 1)), "
                         f"not {max_missing!r}")
    if isinstance(max_missing, numbers.Integral):
        if max_missing < 0:
            raise ValueError(f"max_missing must be >= 0, got {max_missing}")
        return int(max_missing)
    value = float(max_missing)
    if value == 0:
        return 0
    if not 0 < value < 1:
        raise ValueError(f"max_missing={max_missing!r}: a float is a fraction of an epoch's samples and must lie "
                         f"in (0, 1); pass an int for a count of samples")
    return value


def missing_budget(max_missing: MaxMissing, epoch_samples: int) -> int:
    """How many samples of an epoch of `epoch_samples` may be missing: a count as it is, a fraction rounded down."""
    if isinstance(max_missing, float):
        return int(max_missing * epoch_samples)
    return int(max_missing)


def _retold(exc: BaseException, message: str) -> BaseException:
    """An exception of exc's type (so `except PermissionError` still catches it) with `message`."""
    if isinstance(exc, ObjectError):
        try:
            return type(exc)(message, bucket=exc.bucket, object=exc.object, status=exc.status)
        except TypeError:  # a subclass with another constructor
            pass
    return HivedataError(message)


class FailurePolicy:
    """Sorts a batch's failed samples into bad images (on_error) and missing ones (the max_missing budget);
    see the module docstring. `start_epoch` sets the budget and resets the epoch's count."""

    def __init__(self, on_error: OnError, max_missing: MaxMissing = 0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if on_error not in ("skip", "raise") and not callable(on_error):
            raise ValueError(f"on_error must be 'skip', 'raise' or a callable, not {on_error!r}")
        self.on_error = on_error
        self.max_missing = check_max_missing(max_missing)
        self.skipped = 0
        self.names: deque[str] = deque(maxlen=SKIPPED_NAMES_KEPT)
        self.missing = 0  # every epoch's, like `skipped`
        self.missing_names: deque[str] = deque(maxlen=SKIPPED_NAMES_KEPT)
        self._clock = clock
        self.epoch: int | None = None
        self.epoch_samples = 0
        self.budget = missing_budget(self.max_missing, 0)
        self.epoch_missing = 0
        self._last_summary = 0.0

    def start_epoch(self, epoch: int, samples: int) -> None:
        """An epoch of `samples` samples starts: its budget is set and nothing of it is missing yet."""
        self.epoch, self.epoch_samples = epoch, samples
        self.budget = missing_budget(self.max_missing, samples)
        self.epoch_missing = 0

    def end_epoch(self) -> None:
        """The epoch completed: one line if samples were missing in it."""
        if self.epoch_missing:
            log.warning("epoch %s: %d of %d samples could not be read and were replaced by copies of others of "
                        "their batch (max_missing=%r allows %d); see Loader.stats()['missing_names']",
                        self.epoch, self.epoch_missing, self.epoch_samples, self.max_missing, self.budget)

    def stats(self) -> dict[str, Any]:
        """skipped / skipped_names (bad images), missing / missing_names (unreadable), and this epoch's budget."""
        return {"skipped": self.skipped, "skipped_names": list(self.names), "missing": self.missing,
                "missing_names": list(self.missing_names), "missing_this_epoch": self.epoch_missing,
                "missing_budget": self.budget}

    def apply(self, failed: list[tuple[int, BaseException]], images: np.ndarray, labels: np.ndarray,
              describe: Callable[[int], str]) -> None:
        """Handles a batch's failures in place; describe(j) names sample j of the batch."""
        replaced = []
        for j, exc in failed:
            if isinstance(exc, FetchCancelledError):
                raise _retold(exc, f"{describe(j)}: its batch was cancelled (the loader was drained or closed "
                                   f"while this iteration waited for it): {exc}") from exc
            if isinstance(exc, BadImageError):
                self._bad_image(describe(j), exc)
            elif isinstance(exc, FetchError):
                self._missing(describe(j), exc)
            else:  # neither a read nor a decode failure: a bug, never papered over
                raise exc
            replaced.append(j)
        if not replaced:
            return
        gone = set(replaced)
        good = [j for j in range(len(labels)) if j not in gone]
        if not good:
            raise HivedataError(f"every sample of a batch failed to load; the first: {failed[0][1]}")
        for n, j in enumerate(replaced):  # replace with good samples of the same batch, deterministically
            src = good[n % len(good)]
            images[j] = images[src]
            labels[j] = labels[src]

    def _bad_image(self, name: str, exc: BaseException) -> None:
        if self.on_error == "raise":
            raise exc
        if callable(self.on_error):
            self.on_error(exc)
        self.skipped += 1
        self.names.append(f"{name}: {exc}")

    def _missing(self, name: str, exc: BaseException) -> None:
        text = str(exc)
        detail = text if name in text else f"{name}: {text}"
        self.epoch_missing += 1
        if self.epoch_missing > self.budget:
            where = f"epoch {self.epoch}" if self.epoch is not None else "this epoch"
            if self.budget == 0:
                allows = (f"max_missing={self.max_missing!r} allows none (pass Loader(max_missing=...), a fraction "
                          f"of an epoch or a count, to train on through a few unreadable samples)")
            else:
                allows = f"max_missing={self.max_missing!r} allows {self.budget} of {self.epoch_samples}"
            counted, self.epoch_missing = self.epoch_missing, self.epoch_missing - 1  # only replaced ones stay
            raise _retold(exc, f"{detail} [{counted} sample(s) of {where} could not be read; {allows}]") from exc
        self.missing += 1
        self.missing_names.append(detail)
        if self.epoch_missing <= WARN_EACH_FIRST:
            log.warning("missing sample, replaced by another of its batch (%d of at most %d this epoch): %s",
                        self.epoch_missing, self.budget, detail)
            self._last_summary = self._clock()
            if self.epoch_missing == WARN_EACH_FIRST:
                log.warning("further missing samples of this epoch are counted in Loader.stats()['missing'] and "
                            "summarised at most every %.0f s", WARN_INTERVAL_S)
        elif self._clock() - self._last_summary >= WARN_INTERVAL_S:
            self._last_summary = self._clock()
            log.warning("%d samples of this epoch missing so far (at most %d allowed); the latest: %s",
                        self.epoch_missing, self.budget, detail)
