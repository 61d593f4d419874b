"""Listing many objects in parallel by splitting the name range between workers (work stealing).

Each task is a listing prefix, optionally limited to names in [start, end). A worker lists a range page by
page (pages of 1000, field mask kept); a worker with nothing to do takes an unstarted range, else splits the
widest range in progress: the owner keeps [its last listed name, split point), the idle worker takes
[split point, end). Split points are chosen character-wise between the last name listed and the range end
(hivedata.gcs.key_ranges). Ranges partition the name space, and every range is listed in order, so
concatenating them by start gives exactly the sequential listing: same names, same order, none twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hivedata.errors import FetchError
from hivedata.gcs.json_client import GcsJsonClient, ObjectMeta
from hivedata.gcs.key_ranges import prefix_end, range_weight, request_prefix, split_point


@dataclass(frozen=True)
class ListTask:
    """Names under `prefix` in [start, end): start defaults to the prefix itself, end None = no upper bound.
    `after`: a name already known (skip it if listed again; the range continues after it)."""

    prefix: str
    start: str | None = None
    end: str | None = None
    after: str | None = None


@dataclass
class ListStats:
    """What a parallel listing did."""

    objects: int = 0
    requests: int = 0
    splits: int = 0
    empty_ranges: int = 0
    seconds: float = 0.0
    workers: int = 0


@dataclass
class _Range:
    task: int
    start: str  # inclusive
    end: str | None  # exclusive; None: up to the end of the task
    cursor: str | None = None  # last name taken (names <= cursor are skipped)
    token: str | None = None  # next page token, valid while `end` has not moved since it was issued
    objects: list[ObjectMeta] = field(default_factory=list)
    owned: bool = False
    done: bool = False
    requests: int = 0

    def lower(self) -> str:
        return self.cursor if self.cursor is not None else self.start


class _Listing:
    def __init__(self, client: GcsJsonClient, bucket: str, tasks: Sequence[ListTask], workers: int,
                 page_size: int, progress: bool) -> None:
        self.client, self.bucket, self.tasks, self.page_size = client, bucket, list(tasks), page_size
        self.workers = max(1, workers)
        self.cond = threading.Condition()
        self.ranges: list[_Range] = []
        for i, t in enumerate(self.tasks):
            start = t.start if t.start is not None else t.prefix
            if not start.startswith(t.prefix):
                raise ValueError(f"listing gs://{bucket}/{t.prefix}: start {start!r} is not under the prefix")
            end = t.end
            if end is not None and end <= start:
                continue  # nothing in this range
            self.ranges.append(_Range(i, start, end, cursor=t.after))
        self.alphabet: set[str] = set()
        self.alphabet_str = ""
        self.error: BaseException | None = None
        self.stats = ListStats(workers=self.workers)
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(desc=f"listing gs://{bucket}", unit=" obj", unit_scale=True, leave=False,
                            disable=None)  # only on a terminal: objects listed and objects/s

    # -- choosing work --------------------------------------------------------------------------------------
    def _upper(self, r: _Range) -> str | None:
        return r.end if r.end is not None else prefix_end(self.tasks[r.task].prefix)

    def _take(self) -> _Range | None:
        """Under the lock: an unstarted range, else a new range split off the widest one in progress."""
        for r in self.ranges:
            if not r.owned and not r.done:
                r.owned = True
                return r
        # Only ranges that answered at least once and are not finished: a fresh range may well be empty.
        busy = sorted((r for r in self.ranges if r.owned and not r.done and r.requests),
                      key=lambda r: range_weight(r.lower(), self._upper(r)), reverse=True)
        for r in busy:
            hi = self._upper(r)
            m = split_point(r.lower(), hi, self.alphabet_str)
            if m is None:
                continue
            new = _Range(r.task, m, r.end, owned=True)
            r.end = m
            r.token = None  # the owner's next request carries the new end
            self.ranges.append(new)
            self.stats.splits += 1
            return new
        return None

    def _active(self) -> bool:
        return any(not r.done for r in self.ranges)

    # -- one range ------------------------------------------------------------------------------------------
    def _what(self, r: _Range) -> str:
        t = self.tasks[r.task]
        end = f" to {r.end!r}" if r.end is not None else ""
        return f"listing gs://{self.bucket}/{t.prefix} (names from {r.lower()!r}{end})"

    def _list(self, r: _Range) -> None:
        prefix = self.tasks[r.task].prefix
        while True:
            with self.cond:
                if self.error is not None:
                    return
                lower, end, token = r.lower(), r.end, r.token
            page, next_token = self.client.list_page(
                self.bucket, request_prefix(prefix, lower, end), page_size=self.page_size,
                start_offset=lower if lower != prefix else None, end_offset=end, page_token=token,
                what=self._what(r))
            with self.cond:
                r.requests += 1
                self.stats.requests += 1
                taken, finished = self._accept(r, page.objects, prefix)
                if token is not None and next_token == token:
                    raise FetchError(f"the same page token came back twice {self._what(r)}", bucket=self.bucket)
                # split while the request was out: continue from the cursor with the new end, not the token
                r.token = next_token if r.end == end else None
                if finished or next_token is None:  # reached the (new) end, or the server has no more
                    r.done = True
                    if not r.objects:
                        self.stats.empty_ranges += 1
                if taken and self.bar is not None:
                    self.bar.update(taken)
                if taken:
                    self.alphabet.update("".join(o.name for o in r.objects[-taken:]))
                    if len(self.alphabet) != len(self.alphabet_str):
                        self.alphabet_str = "".join(sorted(self.alphabet))
                self.cond.notify_all()
                if r.done:
                    return

    def _accept(self, r: _Range, objects: list[ObjectMeta], prefix: str) -> tuple[int, bool]:
        """Under the lock: appends the page's names that belong to r (in order); (how many, range finished)."""
        taken = 0
        lower_inclusive = r.cursor is None
        for o in objects:
            name = o.name
            if not name.startswith(prefix):
                raise FetchError(f"{name!r} is not under the prefix {self._what(r)}", bucket=self.bucket)
            if r.end is not None and name >= r.end:
                return taken, True  # the rest belongs to a range split off meanwhile
            if lower_inclusive:
                if name < r.start:
                    raise FetchError(f"{name!r} comes before the range start {self._what(r)}", bucket=self.bucket)
            elif name <= r.cursor:
                if r.objects and name < r.cursor:
                    raise FetchError(f"names out of order ({name!r} after {r.cursor!r}) {self._what(r)}",
                                     bucket=self.bucket)
                continue  # the name the range continues after, listed again by startOffset
            r.objects.append(o)
            r.cursor = name
            lower_inclusive = False
            taken += 1
        return taken, False

    # -- workers --------------------------------------------------------------------------------------------
    def _worker(self) -> None:
        try:
            while True:
                with self.cond:
                    while True:
                        if self.error is not None or not self._active():
                            return
                        r = self._take()
                        if r is not None:
                            break
                        self.cond.wait(0.5)  # every busy range is too narrow to split: wait for a change
                self._list(r)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            with self.cond:
                if self.error is None:
                    self.error = e
                self.cond.notify_all()

    def run(self) -> list[list[ObjectMeta]]:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=self._worker, name=f"list-{i}", daemon=True)
                   for i in range(self.workers)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            if self.bar is not None:
                self.bar.close()
        if self.error is not None:
            raise self.error
        self.stats.seconds = time.perf_counter() - t0
        out: list[list[ObjectMeta]] = [[] for _ in self.tasks]
        for r in sorted(self.ranges, key=lambda r: (r.task, r.start)):
            out[r.task].extend(r.objects)
        self.stats.objects = sum(len(o) for o in out)
        return out


def list_ranges(client: GcsJsonClient, bucket: str, tasks: Sequence[ListTask], *, workers: int = 16,
                page_size: int = 1000, progress: bool = False,
                stats: ListStats | None = None) -> list[list[ObjectMeta]]:
    """Objects of each task, in name order, listed by `workers` threads that split ranges between them."""
    listing = _Listing(client, bucket, tasks, workers, page_size, progress)
    out = listing.run()
    if stats is not None:
        stats.__dict__.update(listing.stats.__dict__)
    return out


def list_prefix(client: GcsJsonClient, bucket: str, prefix: str, *, workers: int = 16, page_size: int = 1000,
                progress: bool = False, stats: ListStats | None = None) -> list[ObjectMeta]:
    """Every object under gs://bucket/prefix in name order (as a sequential listing), listed in parallel."""
    return list_ranges(client, bucket, [ListTask(prefix)], workers=workers, page_size=page_size,
                       progress=progress, stats=stats)[0]
