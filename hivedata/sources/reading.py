"""Reading samples of any SampleSource outside the loader's pipeline: whole datasets into RAM, packing.

Samples whose crc32c the plan knows are checked as the native pipeline checks them: a mismatch reads the
sample again (alone), up to CHECKSUM_REREADS times, then raises ChecksumError naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hivedata import _native
from hivedata.errors import ChecksumError
from hivedata.sources.base import SampleSource
from hivedata.sources.read_plan import NO_CRC, ReadPlan, Span

CHECKSUM_REREADS = 2  # as the native pipeline's default


def read_plan_into(source: SampleSource, plan: ReadPlan, arena: np.ndarray, fetcher: Any = None) -> None:
    """Fills `arena` as `plan` lays it out: local reads by the source, the remaining spans with `fetcher`."""
    plan = source.prefill(plan, arena)
    todo = [s for s in plan.spans if not s.present]
    if todo and fetcher is None:
        raise ValueError(f"{source.url}: reading it needs a Fetcher for bucket {plan.bucket!r}")
    _fetch(fetcher, todo, arena)
    bad = crc_mismatches(plan, arena, plan.spans)
    for _ in range(CHECKSUM_REREADS):
        if not bad or any(s.present for s, _, _ in bad):
            break
        again = [_alone(plan, s, j) for s, j, _ in bad]
        _fetch(fetcher, again, arena)
        bad = crc_mismatches(plan, arena, again)
    if bad:
        span, j, got = next((b for b in bad if b[0].present), bad[0])
        where = f"gs://{plan.bucket}/{span.object}" if plan.bucket else span.object
        if span.start >= 0:
            at = span.start + int(plan.offsets[j]) - span.offset
            where += f" bytes {at}..{at + int(plan.sizes[j])}"
        reads = "bytes already present" if span.present else f"read {CHECKSUM_REREADS + 1} times"
        raise ChecksumError(f"{plan.name(j)}: crc32c mismatch in {where} (expected {int(plan.crcs[j]):08x}, "
                            f"got {got:08x}; {reads})", bucket=plan.bucket or None, object=span.object)


def crc_mismatches(plan: ReadPlan, arena: np.ndarray, spans: list[Span]) -> list[tuple[Span, int, int]]:
    """(span, sample, crc found) of each sample in `spans` whose bytes in `arena` miss the plan's crc32c."""
    if plan.crcs is None:
        return []
    out = []
    for s in spans:
        for j in s.members:
            want = int(plan.crcs[j])
            if want == NO_CRC:
                continue
            o = int(plan.offsets[j])
            got = _native.crc32c(arena[o:o + int(plan.sizes[j])])
            if got != want:
                out.append((s, j, got))
    return out


def _alone(plan: ReadPlan, span: Span, j: int) -> Span:
    """The GET of sample j alone (out of the span that read it)."""
    if span.start < 0:
        return span
    o, z = int(plan.offsets[j]), int(plan.sizes[j])
    return Span(span.object, span.generation, span.start + o - span.offset, z, o, (j,))


def _fetch(fetcher: Any, spans: list[Span], arena: np.ndarray) -> None:
    from hivedata.gcs.fetch import ReadRequest

    if not spans:
        return
    requests = [ReadRequest(s.object, max(s.start, 0), None if s.start < 0 else s.length, s.generation or None)
                for s in spans]
    for _ in fetcher.fetch(requests, buffers=[arena[s.offset:s.offset + s.length] for s in spans],
                           order="completion"):
        pass


def read_samples(source: SampleSource, indices: list[int], fetcher: Any = None) -> list[bytes]:
    """The encoded bytes of samples `indices` (a fetch error raises, naming the object)."""
    plan = source.plan(np.asarray(indices, dtype=np.int64))
    arena = plan.arena if plan.arena is not None else np.empty(plan.arena_size, dtype=np.uint8)  # memory: its own
    read_plan_into(source, plan, arena, fetcher)
    return [arena[o:o + z].tobytes() for o, z in zip(plan.offsets.tolist(), plan.sizes.tolist(), strict=True)]
