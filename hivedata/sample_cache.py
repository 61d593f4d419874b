"""The loader's side of the disk cache: per-sample keys, hits read into the batch arena, fetched bytes stored."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .cache_writer import CacheWriter
from .disk_cache import CacheKey, DiskCache, parse_cache_size
from .errors import BadImageError
from .read_plan import ReadPlan
from .shard_index import ShardIndex


class SampleCache:
    """Caches each sample's bytes under (endpoint, bucket, object, generation, byte range)."""

    def __init__(self, index: Any, endpoint: str, root: str | os.PathLike, size: int | str) -> None:
        self.index, self.endpoint = index, endpoint
        self.disk = DiskCache(root, parse_cache_size(size))
        self.writer = CacheWriter(self.disk)

    def key(self, i: int) -> CacheKey | None:
        """Sample i's key; None when its object has no generation (its bytes could change unseen)."""
        idx = self.index
        gen = int(idx.generations[i])
        if gen == 0:
            return None
        if isinstance(idx, ShardIndex):
            return CacheKey(idx.bucket, idx.name(i), gen, int(idx.starts[i]), int(idx.sizes[i]), self.endpoint)
        return CacheKey(idx.bucket, idx.name(i), gen, endpoint=self.endpoint)

    def fill(self, indices: np.ndarray, arena: np.ndarray, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Reads every cached sample of a batch into its place in the arena; True where it was there."""
        present = np.zeros(len(indices), dtype=bool)
        for j, i in enumerate(indices.tolist()):
            key = self.key(i)
            off = int(offsets[j])
            present[j] = key is not None and self.disk.get_into(key, arena[off:off + int(sizes[j])])
        return present

    def store(self, plan: ReadPlan, indices: np.ndarray, arena: np.ndarray, nbytes: list[int],
              failed: list) -> None:
        """Queues the samples a batch fetched (not its cache hits, not its failed fetches) for writing."""
        not_fetched = {j for j, e in failed if not isinstance(e, BadImageError)}  # a bad image was fetched fine
        for _start, _length, _off, present, items in plan.spans:
            if present:
                continue
            for j in items:
                key = self.key(int(indices[j]))
                if j not in not_fetched and key is not None:
                    off = int(plan.offsets[j])
                    self.writer.put(key, arena[off:off + nbytes[j]])

    def stats(self) -> dict[str, int]:
        """The disk cache's counters, plus writes dropped because too many were pending."""
        return self.disk.stats() | {"dropped": self.writer.dropped}

    def flush(self) -> None:
        """Waits for the queued writes."""
        self.writer.flush()

    def close(self) -> None:
        """Writes what is queued and stops the writer thread."""
        self.writer.close()
