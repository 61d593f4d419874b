"""The loader's side of the disk cache: hits read into the batch arena, fetched bytes stored, keyed by the source.

Only samples whose fetch succeeded are stored (the pipeline has checked their crc32c where the source knows
it), and a hit whose bytes miss the source's crc32c (an entry written before reads were checked) is a miss:
the sample is fetched again and its entry rewritten.
"""

from __future__ import annotations

import os

import numpy as np

from hivedata import _native
from hivedata.errors import BadImageError
from hivedata.loader.cache_writer import CacheWriter
from hivedata.loader.disk_cache import DiskCache, parse_cache_size
from hivedata.sources.base import SampleSource
from hivedata.sources.read_plan import NO_CRC, ReadPlan


class SampleCache:
    """Caches each sample's bytes under the key its source gives it (endpoint, bucket, object, generation, range)."""

    def __init__(self, source: SampleSource, root: str | os.PathLike, size: int | str) -> None:
        self.source = source
        self.disk = DiskCache(root, parse_cache_size(size))
        self.writer = CacheWriter(self.disk)
        self.crc_mismatches = 0

    def fill(self, indices: np.ndarray, arena: np.ndarray, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Reads every cached sample of a batch into its place in the arena; True where it was there."""
        present = np.zeros(len(indices), dtype=bool)
        crcs = getattr(self.source, "crcs", None)  # sources that know their samples' crc32c (packed shards)
        for j, i in enumerate(indices.tolist()):
            key = self.source.cache_key(i)
            off = int(offsets[j])
            where = arena[off:off + int(sizes[j])]
            present[j] = key is not None and self.disk.get_into(key, where)
            if present[j] and crcs is not None and crcs[i] != NO_CRC and _native.crc32c(where) != crcs[i]:
                present[j] = False
                self.crc_mismatches += 1
        return present

    def store(self, plan: ReadPlan, indices: np.ndarray, arena: np.ndarray, nbytes: list[int],
              failed: list) -> None:
        """Queues the samples a batch fetched (not its cache hits, not its failed fetches) for writing."""
        not_fetched = {j for j, e in failed if not isinstance(e, BadImageError)}  # a bad image was fetched fine
        for span in plan.spans:
            if span.present:
                continue
            for j in span.members:
                key = self.source.cache_key(int(indices[j]))
                if j not in not_fetched and key is not None:
                    off = int(plan.offsets[j])
                    self.writer.put(key, arena[off:off + nbytes[j]])

    def stats(self) -> dict[str, int]:
        """The disk cache's counters, writes dropped because too many were pending, hits that missed their crc32c."""
        return self.disk.stats() | {"dropped": self.writer.dropped, "crc_mismatches": self.crc_mismatches}

    def flush(self) -> None:
        """Waits for the queued writes."""
        self.writer.flush()

    def close(self) -> None:
        """Writes what is queued and stops the writer thread."""
        self.writer.close()
