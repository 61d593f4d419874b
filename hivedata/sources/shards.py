"""Where every sample lives inside tar shards: (shard, byte offset, length, label, key), compact.

The loader reads a sample as one ranged GET of exactly its bytes. The index is one ``.npz`` object
beside the shards (``<name>.index.npz``); for shards we did not write (any WebDataset tar set) it is
built once by reading the shards in large windows (webdataset.py), then cached locally and in the bucket
(shared_index.py). Indexes written by ``python -m hivedata pack`` record each member's crc32c (``crcs``),
which reads check, and so do indexes of WebDataset shards read whole and matched against GCS's crc32c;
indexes without them (older packs, shards walked member by member) load too, and their samples are read
unverified.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hivedata.common import string_blob
from hivedata.errors import DataFormatError, IndexStaleError
from hivedata.sources.base import BucketSource, CacheKey
from hivedata.sources.read_plan import DEFAULT_MAX_GAP, NO_CRC, ReadPlan, plan_ranges

log = logging.getLogger(__name__)
SHARD_INDEX_FORMAT = 1


@dataclass
class ShardIndex(BucketSource):
    """Samples inside tar shards under gs://bucket/prefix: each one a byte range, neighbours read together."""

    bucket: str
    prefix: str
    classes: list[str]
    shard_names: list[str]  # object names (full, under prefix)
    shard_sizes: np.ndarray  # int64
    shard_generations: np.ndarray  # int64 (0: any)
    shard: np.ndarray  # int32 per sample
    starts: np.ndarray  # int64: first byte of the sample's image inside its shard
    sizes: np.ndarray  # int64
    labels: np.ndarray  # int32
    keys_blob: np.ndarray  # uint8
    key_offsets: np.ndarray  # int64, len + 1
    endpoint: str = ""
    crcs: np.ndarray | None = None  # int64 per sample: its bytes' crc32c (NO_CRC: unknown); None: none known

    @property
    def generations(self) -> np.ndarray:
        """Per sample: the generation of its shard (reads pin it, so a rewritten shard is noticed)."""
        return self.shard_generations[self.shard]

    coalesces = True

    def groups(self) -> np.ndarray | None:
        """The first sample of each run of one shard: a block of samples never spans two shards."""
        if not len(self.shard):
            return None
        return np.insert(np.flatnonzero(np.diff(self.shard)) + 1, 0, 0)

    def plan(self, indices: np.ndarray, present: np.ndarray | None = None, *,
             max_gap: int = DEFAULT_MAX_GAP) -> ReadPlan:
        """Ranged GETs of the members; members of one shard at most max_gap bytes apart share one."""
        indices = np.asarray(indices, dtype=np.int64)
        return plan_ranges(self.shard[indices], self.starts[indices], self.sizes[indices], max_gap=max_gap,
                           present=present, bucket=self.bucket, names=self.shard_names,
                           generations=self.shard_generations.tolist(),
                           crcs=None if self.crcs is None else self.crcs[indices],
                           describe=lambda j: self.describe(int(indices[j])))

    def cache_key(self, i: int) -> CacheKey | None:
        """(endpoint, bucket, shard, generation, byte range); None for a shard without a generation."""
        gen = int(self.shard_generations[self.shard[i]])
        if gen == 0:
            return None
        return CacheKey(self.bucket, self.name(i), gen, int(self.starts[i]), int(self.sizes[i]), self.endpoint)

    def describe(self, i: int) -> str:
        """gs://bucket/shard.tar#key"""
        return f"gs://{self.bucket}/{self.name(i)}#{self.key(i)}"

    def name(self, i: int) -> str:
        """The object that holds sample i (its shard)."""
        return self.shard_names[int(self.shard[i])]

    def names(self) -> list[str]:
        """Per sample, the shard object holding it."""
        return [self.shard_names[s] for s in self.shard.tolist()]

    def key(self, i: int) -> str:
        """Sample i's WebDataset key."""
        a, b = int(self.key_offsets[i]), int(self.key_offsets[i + 1])
        return self.keys_blob[a:b].tobytes().decode()

    def to_bytes(self) -> bytes:
        """The index as .npz bytes (what save() writes and the pack command uploads)."""
        buf = io.BytesIO()
        np.savez(buf, meta=np.array([SHARD_INDEX_FORMAT], dtype=np.int64), bucket=np.array(self.bucket),
                 prefix=np.array(self.prefix), endpoint=np.array(self.endpoint),
                 classes=np.array(self.classes, dtype=str), shard_names=np.array(self.shard_names, dtype=str),
                 shard_sizes=self.shard_sizes, shard_generations=self.shard_generations, shard=self.shard,
                 starts=self.starts, sizes=self.sizes, labels=self.labels, keys_blob=self.keys_blob,
                 key_offsets=self.key_offsets, **({} if self.crcs is None else {"crcs": self.crcs}))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "shard index") -> ShardIndex:
        """Parses to_bytes() output; `what` names the object in errors."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if int(z["meta"][0]) != SHARD_INDEX_FORMAT:
                    raise IndexStaleError(f"{what} has format {int(z['meta'][0])}, expected {SHARD_INDEX_FORMAT}")
                index = cls(bucket=str(z["bucket"]), prefix=str(z["prefix"]), endpoint=str(z["endpoint"]),
                            classes=[str(c) for c in z["classes"]], shard_names=[str(s) for s in z["shard_names"]],
                            shard_sizes=z["shard_sizes"], shard_generations=z["shard_generations"], shard=z["shard"],
                            starts=z["starts"], sizes=z["sizes"], labels=z["labels"], keys_blob=z["keys_blob"],
                            key_offsets=z["key_offsets"], crcs=z["crcs"] if "crcs" in z.files else None)
                index.crcs = checked_crcs(index.crcs, len(index.sizes), what)
        # whatever numpy and zipfile raise on hostile bytes (wrong ranks, empty arrays, unsupported zip
        # features) means the same thing: not an index we wrote
        except (ValueError, KeyError, IndexError, TypeError, ArithmeticError, OSError, EOFError, NotImplementedError,
                RuntimeError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:  # RuntimeError: an encrypted member
            raise DataFormatError(f"{what} is not a hivedata shard index: {e}", url=what) from e
        return index

    def save(self, path: str | Path) -> None:
        """Writes the index atomically to a local file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ShardIndex:
        """Reads a local index file."""
        return cls.from_bytes(Path(path).read_bytes(), what=str(path))

    @classmethod
    def build(cls, bucket: str, prefix: str, classes: Sequence[str], shard_names: Sequence[str],
              shard_sizes: Sequence[int], shard_generations: Sequence[int], samples: Sequence[tuple],
              endpoint: str = "", crcs: Sequence[int] | None = None) -> ShardIndex:
        """From shard metadata and (shard number, start, size, label, key) per sample; crcs: their crc32c."""
        keys_blob, key_offsets = string_blob([s[4] for s in samples])
        col = list(zip(*samples, strict=True)) if samples else [[], [], [], [], []]
        return cls(bucket=bucket, prefix=prefix, classes=list(classes), shard_names=list(shard_names),
                   shard_sizes=np.array(shard_sizes, dtype=np.int64),
                   shard_generations=np.array(shard_generations, dtype=np.int64),
                   shard=np.array(col[0], dtype=np.int32), starts=np.array(col[1], dtype=np.int64),
                   sizes=np.array(col[2], dtype=np.int64), labels=np.array(col[3], dtype=np.int32),
                   keys_blob=keys_blob, key_offsets=key_offsets, endpoint=endpoint,
                   crcs=checked_crcs(None if crcs is None else np.asarray(crcs, dtype=np.int64), len(samples),
                                      "shard index"))


def checked_crcs(crcs: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    """`crcs` as int64, one per sample, each a crc32c or NO_CRC; DataFormatError naming `what` otherwise."""
    if crcs is None:
        return None
    if crcs.shape != (n,) or crcs.dtype.kind not in "iu":
        raise DataFormatError(f"{what}: crcs must be {n} integers (one per sample), got {crcs.dtype} {crcs.shape}",
                              url=what)
    crcs = crcs.astype(np.int64)
    if len(crcs) and (crcs.min() < NO_CRC or crcs.max() > 0xFFFFFFFF):
        raise DataFormatError(f"{what}: a crc is neither {NO_CRC} (unknown) nor a 32-bit crc32c", url=what)
    return crcs


def load_shard_index(url: str, *, endpoint: str | None = None, credentials: Any = "auto") -> ShardIndex:
    """Reads a shard index object (gs://bucket/<stem>.index.npz) or a local index file."""
    if not url.startswith("gs://"):
        return ShardIndex.load(url)
    from hivedata.gcs.auth import token_source
    from hivedata.gcs.json_client import GcsJsonClient
    from hivedata.gcs.paths import parse_gcs_url, storage_endpoint

    where = parse_gcs_url(url)
    bucket, name = where.bucket, where.prefix
    ep = storage_endpoint(endpoint)
    index = ShardIndex.from_bytes(GcsJsonClient(ep, token_source(credentials, ep)).download(bucket, name), what=url)
    index.endpoint = ep
    return index
