"""EpochSampler: exactly-once epochs, determinism, sharding, resume."""

from __future__ import annotations

import numpy as np
import pytest

from hivedata.sampler import EpochSampler


def test_every_index_once_without_drop_last():
    s = EpochSampler(103, batch_size=10, shuffle=True, seed=1, drop_last=False)
    batches = list(s.batches(0))
    assert len(batches) == len(s) == 11 and len(batches[-1]) == 3
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))


def test_drop_last_and_order():
    s = EpochSampler(103, batch_size=10, shuffle=False, seed=1, drop_last=True)
    batches = list(s.batches(0))
    assert len(batches) == len(s) == 10
    assert np.concatenate(batches).tolist() == list(range(100))


def test_seed_and_epoch_change_the_order_deterministically():
    a = EpochSampler(50, batch_size=5, shuffle=True, seed=1, drop_last=True)
    b = EpochSampler(50, batch_size=5, shuffle=True, seed=1, drop_last=True)
    c = EpochSampler(50, batch_size=5, shuffle=True, seed=2, drop_last=True)
    assert np.array_equal(a.order(3), b.order(3))
    assert not np.array_equal(a.order(3), a.order(4))
    assert not np.array_equal(a.order(3), c.order(3))


def test_start_skips_batches():
    s = EpochSampler(40, batch_size=4, shuffle=True, seed=0, drop_last=True)
    full = list(s.batches(2))
    assert [b.tolist() for b in s.batches(2, start=3)] == [b.tolist() for b in full[3:]]


def test_shards_partition_the_epoch():
    shards = [EpochSampler(100, batch_size=8, shuffle=True, seed=0, drop_last=False, shard=i, num_shards=3)
              for i in range(3)]
    got = np.concatenate([np.concatenate(list(s.batches(0))) for s in shards])
    assert sorted(got.tolist()) == list(range(100))
    assert sum(len(s) for s in shards) == 13


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(shard=2, num_shards=2)])
def test_bad_arguments(kw):
    args = dict(batch_size=4, shuffle=True, seed=0, drop_last=True) | kw
    with pytest.raises(ValueError):
        EpochSampler(10, **args)
