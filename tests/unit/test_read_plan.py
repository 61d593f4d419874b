"""Read plans (which GET fills which bytes) and the native pipeline's checks of the spans it is given."""

from __future__ import annotations

import numpy as np
import pytest

from hivedata import _native
from hivedata.sources.read_plan import ReadPlan, Span, plan_ranges, plan_whole_objects


def covered(plan, starts, sizes):
    """For every sample: the span that reads it, checked to put its bytes at its arena offset."""
    where = {}
    for s in plan.spans:
        start, length, off, present = s.start, s.length, s.offset, s.present
        for i in s.members:
            assert i not in where, "a sample read twice"
            where[i] = (start, length, off, present)
            assert start <= starts[i] and starts[i] + sizes[i] <= start + length
            assert plan.offsets[i] == off + starts[i] - start
            assert plan.offsets[i] + sizes[i] <= plan.arena_size
    assert sorted(where) == list(range(len(sizes)))
    return where


def test_neighbours_in_one_shard_share_a_get():
    # shard 0: three members 1 KB apart (tar headers between them); shard 1: one member
    objects = np.array([0, 1, 0, 0])
    starts = np.array([5120, 512, 512, 2560])
    sizes = np.array([1000, 300, 1000, 1000])
    plan = plan_ranges(objects, starts, sizes, max_gap=2048)
    covered(plan, starts, sizes)
    assert plan.gets == 2
    assert sorted(len(s.members) for s in plan.spans) == [1, 3]
    assert plan.arena_size == (5120 + 1000 - 512) + 300


def test_gap_and_span_limits_split_reads():
    objects = np.zeros(3, dtype=np.int32)
    starts = np.array([0, 10_000, 200_000])
    sizes = np.array([9_000, 9_000, 9_000])
    assert plan_ranges(objects, starts, sizes, max_gap=2_000).gets == 2  # 181 KB gap: not worth reading
    assert plan_ranges(objects, starts, sizes, max_gap=500).gets == 3
    assert plan_ranges(objects, starts, sizes, max_gap=10**6, max_span=100_000).gets == 2
    assert plan_ranges(objects, starts, sizes, max_gap=10**6).gets == 1


def test_present_samples_split_a_run_and_need_no_get():
    objects = np.zeros(4, dtype=np.int32)
    starts = np.array([0, 1024, 2048, 3072])
    sizes = np.full(4, 1000)
    present = np.array([False, True, False, False])
    plan = plan_ranges(objects, starts, sizes, max_gap=1024, present=present)
    where = covered(plan, starts, sizes)
    assert where[1][3] and not where[0][3] and not where[2][3]
    assert plan.gets == 2  # [0] and [2, 3]; [1] is already there
    full = plan_ranges(objects, starts, sizes, max_gap=1024)
    assert np.array_equal(plan.offsets, full.offsets)  # the layout does not depend on what is cached


def test_whole_objects_back_to_back():
    plan = plan_whole_objects(np.array([10, 20, 30]), np.array([False, True, False]))
    assert plan.offsets.tolist() == [0, 10, 30] and plan.arena_size == 60 and plan.gets == 2
    assert [s.start for s in plan.spans] == [-1, -1, -1]


def _plan(spans, offsets=(0, 60), sizes=(40, 40), arena_size=200):
    """A ReadPlan of two samples with hand-made spans (start, length, offset, present, members) of shard.tar."""
    typed = [Span("shard.tar", 0, s[0], s[1], s[2], tuple(s[4]), s[3]) for s in spans]
    return ReadPlan("b", np.array(offsets[:len(sizes)]), np.array(sizes), arena_size, typed)


@pytest.mark.parametrize("spans, message", [
    ([(0, 100, 0, False, [0])], "in no span"),
    ([(0, 100, 0, False, [0, 1]), (0, 50, 0, False, [1])], "once"),
    ([(0, 50, 0, False, [0, 1])], "outside its span"),
    ([(0, 10_000, 0, False, [0, 1])], "arena too small"),
    ([(-1, 40, 0, False, [0, 1])], "one item"),
])
def test_pipeline_refuses_inconsistent_spans(spans, message):
    p = _native.Pipeline(endpoint="http://127.0.0.1:9", decode=False)
    arena = np.zeros(200, dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        p.submit(1, _plan(spans), [0, 0], arena, None)
    assert p.outstanding == 0
    p.close()


def test_an_empty_member_is_a_decode_failure_not_a_bad_range():
    p = _native.Pipeline(endpoint="http://127.0.0.1:9", augment=_native.AugmentParams(out_h=8, out_w=8),
                         threads=1)  # nothing is fetched
    arena = np.zeros(64, dtype=np.uint8)
    out = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    p.submit(1, _plan([(512, 0, 0, False, [0])], offsets=(0,), sizes=(0,), arena_size=64), [0], arena, out)
    r = p.poll(timeout=10)
    nbytes, failed = r.nbytes, r.failed
    assert nbytes == [0] and len(failed) == 1
    assert "gs://b/shard.tar" in str(failed[0][1]) and "range" not in str(failed[0][1]).lower()
    assert p.stats()["gets"] == 0
    p.close()


def test_pipeline_refuses_a_span_wrapping_around_or_a_plan_of_another_length():
    p = _native.Pipeline(endpoint="http://127.0.0.1:9", decode=False)
    arena = np.zeros(200, dtype=np.uint8)
    with pytest.raises(ValueError, match="arena too small"):
        p.submit(1, _plan([(0, 2**64 - 10, 20, False, [0, 1])]), [0, 0], arena, None)
    with pytest.raises(ValueError, match="seeds"):
        p.submit(1, _plan([(0, 100, 0, False, [0, 1])]), [0], arena, None)
    assert p.outstanding == 0
    p.close()
