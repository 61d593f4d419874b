"""How a batch's bytes are read: where each sample lands in the arena and which GETs fill it.

Samples of one shard whose byte ranges lie close together coalesce into one ranged GET (the gap bytes
between them are read and ignored); samples already in the arena (cache hits) get no GET at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_GAP = 64 * 1024  # read up to this many unneeded bytes to save a request
DEFAULT_MAX_SPAN = 64 * 1024 * 1024  # and never ask for more than this in one GET

Span = tuple[int, int, int, bool, list[int]]  # (start in object or -1, length, arena offset, present, items)


@dataclass
class ReadPlan:
    """Arena offset per sample, the arena size, and the spans the native pipeline reads."""

    offsets: np.ndarray
    arena_size: int
    spans: list[Span]

    @property
    def gets(self) -> int:
        """Requests this plan makes."""
        return sum(1 for s in self.spans if not s[3])


def plan_whole_objects(sizes: np.ndarray, present: np.ndarray | None = None) -> ReadPlan:
    """One GET per object, laid out back to back; `present` marks samples whose bytes need no GET."""
    offsets = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], out=offsets[1:])
    spans = [(-1, int(sizes[i]), int(offsets[i]), bool(present is not None and present[i]), [i])
             for i in range(len(sizes))]
    return ReadPlan(offsets, int(sizes.sum()), spans)


def plan_ranges(objects: np.ndarray, starts: np.ndarray, sizes: np.ndarray, *, max_gap: int = DEFAULT_MAX_GAP,
                max_span: int = DEFAULT_MAX_SPAN, present: np.ndarray | None = None) -> ReadPlan:
    """Byte ranges of shard members: neighbours in one object (gap <= max_gap) share a GET of <= max_span bytes."""
    n = len(sizes)
    offsets = np.zeros(n, dtype=np.int64)
    spans: list[Span] = []
    order = np.lexsort((starts, objects)).tolist()
    obj, st, sz = objects.tolist(), starts.tolist(), sizes.tolist()
    pres = present.tolist() if present is not None else [False] * n
    arena = 0
    k = 0
    while k < len(order):  # one coalesced range per pass: [g0, end) of one object
        first = order[k]
        g0, end = st[first], st[first] + sz[first]
        group = [first]
        k += 1
        while k < len(order):
            i = order[k]
            if obj[i] != obj[first] or st[i] < end or st[i] - end > max_gap or st[i] + sz[i] - g0 > max_span:
                break
            group.append(i)
            end = st[i] + sz[i]
            k += 1
        for i in group:
            offsets[i] = arena + st[i] - g0
        run: list[int] = []
        for i in group + [-1]:  # present samples get their own span; runs of missing ones share a GET
            if i >= 0 and not pres[i]:
                run.append(i)
                continue
            if run:
                a, z = st[run[0]], st[run[-1]] + sz[run[-1]]
                spans.append((a, z - a, arena + a - g0, False, run))
                run = []
            if i >= 0:
                spans.append((st[i], sz[i], arena + st[i] - g0, True, [i]))
        arena += end - g0
    return ReadPlan(offsets, arena, spans)
