"""What the loader needs from a dataset: the SampleSource protocol, and what bucket-backed sources share.

A source knows its samples (count, classes, labels, encoded sizes), which groups a block of consecutive
samples must not cross (shards), how to read any set of samples (a ReadPlan: typed spans the native
pipeline fetches, or bytes already present), a cache key per sample and a human name per sample.
The loader never asks what kind of source it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hivedata.sources.read_plan import DEFAULT_MAX_GAP, ReadPlan


@dataclass(frozen=True)
class CacheKey:
    """One cached object or byte range of it; start=-1, length=-1 mean the whole object.

    `endpoint` keeps an emulator's objects apart from real GCS ones of the same name and generation.
    """

    bucket: str
    object: str
    generation: int
    start: int = -1
    length: int = -1
    endpoint: str = ""

    def text(self) -> str:
        """Canonical string form, stored in the entry to guard against hash collisions."""
        fields = [self.bucket, self.object, int(self.generation), int(self.start), int(self.length), self.endpoint]
        return json.dumps(fields, separators=(",", ":"))


class SampleSource(Protocol):
    """A dataset the Loader reads: samples 0..len-1 with labels, read through ReadPlans."""

    url: str  # where it comes from (gs://..., file://..., memory://...)
    bucket: str  # the bucket its GETs go to ("" when it never fetches)
    endpoint: str  # the storage endpoint of that bucket
    classes: list[str]
    labels: np.ndarray  # int32 per sample
    sizes: np.ndarray  # int64 encoded bytes per sample
    coalesces: bool  # neighbours share reads (block shuffle then saves GETs)

    def __len__(self) -> int: ...

    def groups(self) -> np.ndarray | None:
        """First sample of each group (shard) that runs of consecutive samples must not cross; None: one group."""
        ...

    def plan(self, indices: np.ndarray, present: np.ndarray | None = None, *,
             max_gap: int = DEFAULT_MAX_GAP) -> ReadPlan:
        """How to read samples `indices` (in that order) into one arena; `present` marks bytes already there."""
        ...

    def prefill(self, plan: ReadPlan, arena: np.ndarray) -> ReadPlan:
        """Reads what the source can read without the pipeline (local files) into `arena`; the plan left to do."""
        ...

    def cache_key(self, i: int) -> CacheKey | None:
        """Sample i's disk cache key; None when its bytes must not be cached (no generation to pin them)."""
        ...

    def describe(self, i: int) -> str:
        """Sample i for people: gs://b/x.JPEG, gs://b/s.tar#key, a path."""
        ...


class BucketSource:
    """What sources in a bucket share: samples (`sizes`) under gs://bucket/prefix, no local reads."""

    bucket: str
    prefix: str
    sizes: np.ndarray
    endpoint: str
    coalesces = False

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def url(self) -> str:
        """gs://bucket/prefix"""
        return f"gs://{self.bucket}/{self.prefix}"

    def prefill(self, plan: ReadPlan, arena: np.ndarray) -> ReadPlan:
        """Nothing is local: every missing span is a GET."""
        return plan
