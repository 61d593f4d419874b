"""The Loader's read-ahead: fixed, or sized by Little's law from the consumer's rate and the arrival time."""

from __future__ import annotations

import pytest

from hivedata.loader.readahead import AUTO_START, ReadAhead


def _consume(ra: ReadAhead, per_s: float, n: int = 10) -> None:
    for i in range(n):
        ra.consumed(now=i / per_s)


def test_fixed_depth_never_changes():
    ra = ReadAhead(3)
    _consume(ra, 100.0)
    assert ra.waited(arrival_s=5.0) == 3 and not ra.auto


def test_auto_grows_by_littles_law_when_latency_dominates():
    ra = ReadAhead("auto", max_depth=16)
    assert ra.depth == AUTO_START
    _consume(ra, per_s=20.0)  # the consumer takes 20 batches/s
    assert ra.rate() == pytest.approx(20.0)
    assert ra.waited(arrival_s=0.3) == 7  # 20/s x 0.3 s = 6 in flight, plus one


def test_auto_stays_small_when_batches_arrive_quickly():
    ra = ReadAhead("auto", max_depth=16)
    _consume(ra, per_s=20.0)
    assert ra.waited(arrival_s=0.02) == AUTO_START  # a CPU-bound loader gains nothing from more slots


def test_auto_is_bounded_and_never_shrinks():
    ra = ReadAhead("auto", max_depth=5)
    _consume(ra, per_s=100.0)
    assert ra.waited(arrival_s=2.0) == 5
    assert ra.waited(arrival_s=0.0) == 5


@pytest.mark.parametrize("bad", [-1, "fast", 1.5, True])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match="prefetch"):
        ReadAhead(bad)
