"""EpochSampler: exactly-once epochs, determinism, sharding, resume."""

from __future__ import annotations

import numpy as np
import pytest

from hivedata.loader.sampler import EpochSampler, run_starts


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


def _runs_in(batch: np.ndarray) -> int:
    """How many runs of consecutive indices a batch holds."""
    s = np.sort(batch)
    return 1 + int(np.count_nonzero(np.diff(s) != 1))


def test_block_shuffle_is_an_exact_permutation_made_of_runs():
    groups = np.array([0, 100, 230, 300])  # four shards of 100, 130, 70 and 90 samples
    s = EpochSampler(390, batch_size=16, shuffle="block", seed=4, drop_last=False, block_size=16,
                     group_starts=groups)
    order = s.order(0)
    assert sorted(order.tolist()) == list(range(390))
    batches = list(s.batches(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(390))
    runs = [_runs_in(b) for b in batches]
    assert max(runs) <= 3 and np.mean(runs) < 2.5  # a batch holds a run or two, never 16 scattered samples
    g = EpochSampler(390, batch_size=16, shuffle="global", seed=4, drop_last=False)
    assert np.mean([_runs_in(b) for b in g.batches(0)]) > 10
    runs = run_starts(390, 16, groups)
    assert set(groups.tolist()) <= set(runs.tolist())  # every shard starts a run: no run crosses a shard
    assert np.all(np.diff(np.append(runs, 390)) <= 16)
    in_order = [b for b in batches if np.all(np.diff(b) == 1)]
    assert len(in_order) < len(batches) / 2  # a batch is shuffled within itself


def test_block_shuffle_changes_with_epoch_and_seed_and_resumes():
    kw = dict(batch_size=8, shuffle="block", drop_last=True, block_size=8)
    a, b = EpochSampler(200, seed=1, **kw), EpochSampler(200, seed=2, **kw)
    assert np.array_equal(a.order(0), EpochSampler(200, seed=1, **kw).order(0))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), b.order(0))
    full = [x.tolist() for x in a.batches(3)]
    assert [x.tolist() for x in a.batches(3, start=5)] == full[5:]
    assert a.describe().startswith("block:8:8:") and EpochSampler(200, seed=1, batch_size=8, shuffle=True,
                                                        drop_last=True).describe() == "global"


def test_block_shuffle_with_a_wider_window_mixes_more():
    kw = dict(batch_size=8, shuffle="block", seed=0, drop_last=True, block_size=8)
    narrow = np.mean([_runs_in(b) for b in EpochSampler(400, **kw).batches(0)])
    wide = np.mean([_runs_in(b) for b in EpochSampler(400, window=64, **kw).batches(0)])
    assert wide > narrow


@pytest.mark.parametrize("kw", [dict(shuffle="blocks"), dict(shuffle="block", block_size=0),
                                dict(shuffle="block", group_starts=np.array([5, 7])),
                                dict(shuffle="block", group_starts=np.array([0, 7, 7]))])
def test_bad_shuffle_arguments(kw):
    args = dict(batch_size=4, seed=0, drop_last=True) | kw
    with pytest.raises(ValueError):
        EpochSampler(10, **args)
