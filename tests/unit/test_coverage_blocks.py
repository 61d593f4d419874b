"""Coordinated coverage without a network: the block split, the block choice, BlockFeed, and a Loader reading a feed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hivedata.loader.coverage import BlockFeed, EpochBlocks, choose_block
from hivedata.loader.loader import Loader
from hivedata.sources import MemorySource
from tests.support.images import jpeg, natural_image


def test_an_epoch_is_one_seeded_permutation_split_into_blocks():
    blocks = EpochBlocks(103, 10, seed=7)
    assert blocks.n_blocks == 11
    epoch0 = [blocks.samples(0, b) for b in range(blocks.n_blocks)]
    assert sorted(np.concatenate(epoch0).tolist()) == list(range(103))  # every sample once
    assert [len(s) for s in epoch0] == [10] * 10 + [3]
    again = EpochBlocks(103, 10, seed=7)  # another peer: the same blocks
    assert all(np.array_equal(again.samples(0, b), s) for b, s in enumerate(epoch0))
    assert not np.array_equal(np.concatenate([blocks.samples(1, b) for b in range(11)]), np.concatenate(epoch0))
    other = EpochBlocks(103, 10, seed=8)
    assert other.tag() != blocks.tag() and EpochBlocks(103, 20, seed=7).tag() != blocks.tag()
    with pytest.raises(IndexError, match="block 11 of epoch 0"):
        blocks.samples(0, 11)


def test_with_shards_a_block_is_a_run_inside_one_shard():
    groups = np.array([0, 25, 40, 90])
    blocks = EpochBlocks(100, 16, seed=1, group_starts=groups)
    ends = np.append(groups[1:], 100)
    seen = []
    for b in range(blocks.n_blocks):
        s = blocks.samples(3, b)
        assert np.array_equal(s, np.arange(s[0], s[0] + len(s)))  # consecutive: one coalesced read
        shard = np.searchsorted(groups, s[0], side="right") - 1
        assert s[-1] < ends[shard] and len(s) <= 16  # never crosses a shard
        seen += s.tolist()
    assert sorted(seen) == list(range(100))
    first = [blocks.samples(0, b)[0] for b in range(blocks.n_blocks)]
    assert first != [blocks.samples(1, b)[0] for b in range(blocks.n_blocks)]  # runs permuted per epoch


def test_choose_block_continues_a_run_then_jumps_into_the_largest_free_stretch():
    rng = np.random.default_rng(0)
    taken = np.zeros(40, dtype=bool)
    assert choose_block(taken, 5, rng) == 6
    assert choose_block(taken, 39, rng) == 0  # cyclic
    assert choose_block(np.ones(40, dtype=bool), 3, rng) is None
    taken[:] = True
    taken[10:30] = False  # the largest stretch: 10..29
    taken[33:36] = False
    taken[6] = True
    picks = {choose_block(taken, 6 if k % 2 else None, rng) for k in range(200)}  # after 6: 7 is taken
    assert picks and all(15 <= p < 25 for p in picks)  # its middle half
    assert len(picks) > 3  # random there: two peers jumping at once rarely pick the same block
    wrapped = np.ones(10, dtype=bool)
    wrapped[[8, 9, 0, 1]] = False
    assert {choose_block(wrapped, None, rng) for _ in range(50)} <= {9, 0}  # a stretch across the end


class Scripted:
    """A BlockSource handing out a fixed list of (epoch, block) and recording what finished."""

    def __init__(self, claims: list[tuple[int, int]]) -> None:
        self.claims, self.done, self.epoch, self.closed = list(claims), [], 0, False

    def next_block(self):
        return self.claims.pop(0) if self.claims else None

    def finished(self, epoch, block):
        self.done.append((epoch, block))

    def state_dict(self):
        return {"done": list(self.done)}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]

    def close(self):
        self.closed = True


def test_block_feed_cuts_batches_across_blocks_and_reports_blocks_once_delivered():
    blocks = EpochBlocks(20, 4, seed=0)
    src = Scripted([(0, 1), (0, 3), (1, 0)])
    feed = BlockFeed(blocks, 3, src)
    stream = np.concatenate([blocks.samples(0, 1), blocks.samples(0, 3), blocks.samples(1, 0)])
    got, epochs = [], []
    b1 = feed.next_batch()
    b2 = feed.next_batch()
    assert src.done == []  # handed out, not delivered
    feed.delivered(3)
    assert src.done == []  # block (0, 1) has a fourth sample still in flight
    feed.delivered(3)
    assert src.done == [(0, 1)]
    for b in (b1, b2):
        got += b[0].tolist()
        epochs += b[1].tolist()
    b3 = feed.next_batch()
    feed.rewind()  # an iteration left early: b3 comes again
    b3_again = feed.next_batch()
    assert np.array_equal(b3[0], b3_again[0])
    feed.delivered(3)
    got += b3[0].tolist()
    epochs += b3[1].tolist()
    b4 = feed.next_batch()  # the last three samples
    feed.delivered(3)
    got += b4[0].tolist()
    epochs += b4[1].tolist()
    assert got == stream.tolist()
    assert epochs == [0] * 8 + [1] * 4  # each sample carries its block's epoch
    assert src.done == [(0, 1), (0, 3), (1, 0)]
    assert feed.next_batch() is None
    with pytest.raises(ValueError, match="handed out"):
        feed.delivered(1)


N = 24


@pytest.fixture(scope="module")
def source() -> MemorySource:
    data = [jpeg(natural_image(40, 32, seed=i)) for i in range(N)]
    return MemorySource.from_bytes(data, list(range(N)), [f"c{k}" for k in range(N)],
                                   names=[f"mem/{i}.JPEG" for i in range(N)])  # label = index: what was read


def _loader(source, feed) -> Loader:
    return Loader(source, batch_size=4, train=True, image_size=16, backend="native", seed=3, workers=1, prefetch=2,
                  feed=feed)


def test_a_loader_reads_a_feed_lazily_and_an_early_exit_loses_nothing(source):
    blocks = EpochBlocks(N, 3, seed=5)
    claims = [(0, b) for b in range(blocks.n_blocks)] + [(1, b) for b in range(blocks.n_blocks)]
    src = Scripted(claims)
    feed = BlockFeed(blocks, 4, src)
    expected = np.concatenate([blocks.samples(e, b) for e, b in claims]).tolist()
    with _loader(source, feed) as loader:
        assert len(loader) == N // 4
        it = iter(loader)
        first = [next(it)[1].clone() for _ in range(2)]
        assert len(src.claims) < len(claims) - 3  # read ahead (lazily: the feed was not drained)
        it.close()  # left early: what was read ahead is handed out again
        rest = [y.clone() for _, y in loader]
        assert len(rest) == len(loader)
        more = [y.clone() for _, y in loader]  # the next pass goes on where the last one stopped ...
        assert len(more) == 4  # ... and ends early when the feed runs dry
        labels = torch.cat(first + rest + more).tolist()
        assert labels == expected  # every claimed sample once, in the feed's order
        state = loader.state_dict()
        assert state["order"] == blocks.describe() and state["feed"]["done"][:2] == [(0, 0), (0, 1)]
        loader.load_state_dict({**state, "epoch": 4, "feed": {"epoch": 4}})
        assert src.epoch == 4
        with pytest.raises(ValueError, match="order"):
            loader.load_state_dict({**state, "order": "global"})
    assert src.closed


def test_a_feed_and_crops_seeded_by_each_samples_epoch(source):
    """The same sample in two data epochs gets two crops; in the same epoch, the same crop whoever reads it."""
    blocks = EpochBlocks(N, 4, seed=5)
    sample = int(blocks.samples(0, 0)[0])
    later = next(b for b in range(blocks.n_blocks) if sample in blocks.samples(1, b))
    reads = {}
    for name, claims in (("a", [(0, 0)]), ("b", [(0, 0)]), ("c", [(1, later)])):
        with _loader(source, BlockFeed(blocks, 4, Scripted(claims))) as loader:
            x, y = next(iter(loader))
            reads[name] = dict(zip(y.tolist(), x.clone(), strict=True))
    assert all(torch.equal(reads["a"][i], reads["b"][i]) for i in reads["a"])
    assert not torch.equal(reads["a"][sample], reads["c"][sample])


def test_a_sharded_loader_refuses_a_feed(source):
    with pytest.raises(ValueError, match="feed"):
        Loader(source, batch_size=4, train=True, image_size=16, backend="native", workers=1, num_shards=2,
               feed=BlockFeed(EpochBlocks(N, 4, seed=0), 4, Scripted([])))
