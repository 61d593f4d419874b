"""A dataset held in RAM: every sample's encoded bytes in one arena (Loader(in_memory=True), unit tests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hivedata.common import back_to_back
from hivedata.sources.base import CacheKey, SampleSource
from hivedata.sources.read_plan import DEFAULT_MAX_GAP, ReadPlan, Span


class MemorySource:
    """Samples whose bytes are arena[offsets[i]:offsets[i] + sizes[i]]: decoded in place, never fetched."""

    bucket = ""
    endpoint = ""
    coalesces = False

    def __init__(self, arena: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, labels: np.ndarray,
                 classes: Sequence[str], *, names: Sequence[str] | None = None, url: str = "memory://",
                 groups: np.ndarray | None = None, crcs: np.ndarray | None = None) -> None:
        if not len(offsets) == len(sizes) == len(labels):
            raise ValueError(f"{len(offsets)} offsets, {len(sizes)} sizes and {len(labels)} labels differ")
        ends = np.asarray(offsets, dtype=np.int64) + np.asarray(sizes, dtype=np.int64)
        if len(ends) and (ends.max() > arena.nbytes or np.min(offsets) < 0):
            raise ValueError("a sample lies outside the arena")
        self.arena = arena
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.classes = list(classes)
        self.url = url
        self._names = list(names) if names is not None else None
        self._groups = groups
        if crcs is not None and len(crcs) != len(sizes):
            raise ValueError(f"{len(crcs)} crcs for {len(sizes)} samples")
        self.crcs = None if crcs is None else np.asarray(crcs, dtype=np.int64)  # as ReadPlan.crcs, per sample

    @classmethod
    def from_bytes(cls, samples: Sequence[bytes], labels: Sequence[int], classes: Sequence[str], *,
                   names: Sequence[str] | None = None) -> MemorySource:
        """Samples given as bytes (tests, small datasets)."""
        sizes = np.array([len(s) for s in samples], dtype=np.int64)
        offsets = back_to_back(sizes)
        arena = np.frombuffer(b"".join(samples), dtype=np.uint8).copy()
        return cls(arena, offsets, sizes, np.asarray(labels), classes, names=names)

    @classmethod
    def load(cls, source: SampleSource, *, endpoint: str, credentials: Any, max_in_flight: int = 64) -> MemorySource:
        """Reads every sample of `source` once (one plan over all of it, coalesced where the source allows)."""
        from hivedata.gcs.fetch import Fetcher
        from hivedata.sources.reading import read_plan_into

        plan = source.plan(np.arange(len(source), dtype=np.int64))
        arena = np.empty(plan.arena_size, dtype=np.uint8)
        fetcher = Fetcher(plan.bucket, endpoint=endpoint, credentials=credentials,
                          max_in_flight=max_in_flight) if plan.bucket else None  # no bucket: local files
        try:
            read_plan_into(source, plan, arena, fetcher)
        finally:
            if fetcher is not None:
                fetcher.close()
        return cls(arena, plan.offsets, plan.sizes, source.labels, source.classes,
                   names=[source.describe(i) for i in range(len(source))], url=source.url, groups=source.groups(),
                   crcs=plan.crcs)

    def __len__(self) -> int:
        return len(self.sizes)

    def groups(self) -> np.ndarray | None:
        """The groups of the source it was loaded from (shards), if any."""
        return self._groups

    def plan(self, indices: np.ndarray, present: np.ndarray | None = None, *,
             max_gap: int = DEFAULT_MAX_GAP) -> ReadPlan:
        """Every sample already present in the source's own arena (checked against its crc32c where known)."""
        offsets, sizes = self.offsets[indices], self.sizes[indices]
        spans = [Span(self.describe(int(i)), 0, -1, int(z), int(o), (j,), True)
                 for j, (i, o, z) in enumerate(zip(indices.tolist(), offsets.tolist(), sizes.tolist(), strict=True))]
        return ReadPlan("", offsets, sizes, self.arena.nbytes, spans, arena=self.arena,
                        crcs=None if self.crcs is None else self.crcs[indices],
                        describe=lambda j: self.describe(int(indices[j])))

    def prefill(self, plan: ReadPlan, arena: np.ndarray) -> ReadPlan:
        """Nothing to read: the plan points into this source's arena."""
        return plan

    def cache_key(self, i: int) -> CacheKey | None:
        """Never cached: it is in RAM already."""
        return None

    def describe(self, i: int) -> str:
        """The name it was given (for a loaded source: the original's), else memory://<i>."""
        return self._names[i] if self._names is not None else f"{self.url}{i}"
