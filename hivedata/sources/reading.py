"""Reading samples of any SampleSource outside the loader's pipeline: whole datasets into RAM, packing."""

from __future__ import annotations

from typing import Any

import numpy as np

from hivedata.sources.base import SampleSource
from hivedata.sources.read_plan import ReadPlan


def read_plan_into(source: SampleSource, plan: ReadPlan, arena: np.ndarray, fetcher: Any = None) -> None:
    """Fills `arena` as `plan` lays it out: local reads by the source, the remaining spans with `fetcher`."""
    from hivedata.gcs.fetch import ReadRequest

    plan = source.prefill(plan, arena)
    todo = [s for s in plan.spans if not s.present]
    if not todo:
        return
    if fetcher is None:
        raise ValueError(f"{source.url}: reading it needs a Fetcher for bucket {plan.bucket!r}")
    requests = [ReadRequest(s.object, max(s.start, 0), None if s.start < 0 else s.length, s.generation or None)
                for s in todo]
    for _ in fetcher.fetch(requests, buffers=[arena[s.offset:s.offset + s.length] for s in todo],
                           order="completion"):
        pass


def read_samples(source: SampleSource, indices: list[int], fetcher: Any = None) -> list[bytes]:
    """The encoded bytes of samples `indices` (a fetch error raises, naming the object)."""
    plan = source.plan(np.asarray(indices, dtype=np.int64))
    arena = np.empty(plan.arena_size, dtype=np.uint8)
    read_plan_into(source, plan, arena, fetcher)
    return [arena[o:o + z].tobytes() for o, z in zip(plan.offsets.tolist(), plan.sizes.tolist(), strict=True)]
