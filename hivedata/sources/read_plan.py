"""How a batch's bytes are read: where each sample lands in the arena and which GETs fill it.

A ReadPlan is what a SampleSource hands the native pipeline: per sample its arena offset and size, and
the spans (one GET each, or bytes already present) that put them there. Samples of one shard whose byte
ranges lie close together coalesce into one ranged GET (the gap bytes between them are read and
ignored); samples already in the arena (cache hits, an in-memory dataset) get no GET at all.
A plan may carry each sample's expected crc32c (packed shards record it): the bytes are checked before
they are decoded or cached, since GCS sends no checksum for a byte range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from hivedata.common import back_to_back

DEFAULT_MAX_GAP = 64 * 1024  # read up to this many unneeded bytes to save a request
DEFAULT_MAX_SPAN = 64 * 1024 * 1024  # and never ask for more than this in one GET
NO_CRC = -1  # in ReadPlan.crcs: this sample's crc32c is not known (its bytes are used unverified)


@dataclass(frozen=True, slots=True)
class Span:
    """One GET (or bytes already present) filling the bytes of `members` (positions in the batch)."""

    object: str  # the object read (a whole image, or a shard)
    generation: int  # the object's generation; 0: any
    start: int  # first byte in the object; -1: the whole object (then exactly one member)
    length: int  # bytes read
    offset: int  # where they land in the arena; member i lies at offset + (its start - start)
    members: tuple[int, ...]
    present: bool = False  # already in the arena: decode only


@dataclass
class ReadPlan:
    """Arena offset and size per sample, the arena size, and the spans the native pipeline reads.

    `arena` is set when the bytes already live in the source's own memory (every span present); else the
    loader provides an arena of `arena_size` bytes. `crcs` (int64 per sample, NO_CRC where unknown; None:
    none known) are the crc32c each sample's bytes must have; `describe(j)` names sample j in errors.
    """

    bucket: str
    offsets: np.ndarray
    sizes: np.ndarray
    arena_size: int
    spans: list[Span]
    arena: np.ndarray | None = None
    crcs: np.ndarray | None = None
    describe: Callable[[int], str] | None = None

    def name(self, j: int) -> str:
        """Sample j of the plan for people (describe(j), else the object its span reads)."""
        if self.describe is not None:
            return self.describe(j)
        span = next(s for s in self.spans if j in s.members)
        return f"gs://{self.bucket}/{span.object}" if self.bucket else span.object

    @property
    def gets(self) -> int:
        """Requests this plan makes."""
        return sum(1 for s in self.spans if not s.present)

    def all_present(self) -> ReadPlan:
        """The same layout with every span marked present (its bytes were put in the arena by the caller)."""
        return replace(self, spans=[replace(s, present=True) for s in self.spans])


def _name(names: Sequence[str] | None, k: int) -> str:
    return names[k] if names is not None else str(k)


def plan_whole_objects(sizes: np.ndarray, present: np.ndarray | None = None, *, bucket: str = "",
                       names: Sequence[str] | None = None, generations: Sequence[int] | None = None) -> ReadPlan:
    """One GET per object (names[i], generations[i]), laid out back to back; `present`: needs no GET."""
    sizes = np.asarray(sizes, dtype=np.int64)
    offsets = back_to_back(sizes)
    sz, off = sizes.tolist(), offsets.tolist()
    pres = present.tolist() if present is not None else [False] * len(sz)
    gens = list(generations) if generations is not None else [0] * len(sz)
    spans = [Span(_name(names, i), int(gens[i]), -1, sz[i], off[i], (i,), bool(pres[i])) for i in range(len(sz))]
    return ReadPlan(bucket, offsets, sizes, int(sizes.sum()), spans)


def plan_ranges(objects: np.ndarray, starts: np.ndarray, sizes: np.ndarray, *, max_gap: int = DEFAULT_MAX_GAP,
                max_span: int = DEFAULT_MAX_SPAN, present: np.ndarray | None = None, bucket: str = "",
                names: Sequence[str] | None = None, generations: Sequence[int] | None = None,
                crcs: np.ndarray | None = None, describe: Callable[[int], str] | None = None) -> ReadPlan:
    """Byte ranges of shard members: neighbours in one object (gap <= max_gap) share a GET of <= max_span bytes.

    objects[i] numbers the object (shard) of sample i; names[n] and generations[n] name object n; crcs[i]
    and describe(i), when given, are sample i's expected crc32c and its name (see ReadPlan).
    """
    n = len(sizes)
    offsets = np.zeros(n, dtype=np.int64)
    spans: list[Span] = []
    order = np.lexsort((starts, objects)).tolist()
    obj, st, sz = np.asarray(objects).tolist(), np.asarray(starts).tolist(), np.asarray(sizes).tolist()
    pres = present.tolist() if present is not None else [False] * n

    def span(o: int, a: int, z: int, at: int, members: list[int], here: bool) -> Span:
        gen = int(generations[o]) if generations is not None else 0
        return Span(_name(names, o), gen, a, z - a, at, tuple(members), here)

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
                spans.append(span(obj[first], a, z, arena + a - g0, run, False))
                run = []
            if i >= 0:
                spans.append(span(obj[first], st[i], st[i] + sz[i], arena + st[i] - g0, [i], True))
        arena += end - g0
    return ReadPlan(bucket, offsets, np.asarray(sizes, dtype=np.int64), arena, spans,
                    crcs=None if crcs is None else np.asarray(crcs, dtype=np.int64), describe=describe)
