"""Coordinated coverage, the part that needs no network: a data epoch split into blocks, the choice of the next block
to claim, and BlockFeed, which cuts claimed blocks into batches for a Loader.

A data epoch d is ONE seeded permutation shared by every peer of a run (seed = the run's seed, not a per-peer one),
split into blocks: B consecutive positions of the permutation, or, when the source has groups (packed shards), runs
of at most B neighbouring samples inside one shard (so a block's reads coalesce), the runs permuted per epoch.
Who reads which block is decided elsewhere (hivedata.train.claims: claims through the hivemind DHT).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hivedata.loader.orders import run_starts


class EpochBlocks:
    """The blocks of every data epoch: `samples(epoch, block)` is block `block` of epoch `epoch`'s permutation."""

    def __init__(self, n: int, block_size: int, seed: int, group_starts: np.ndarray | None = None) -> None:
        if n <= 0:
            raise ValueError(f"EpochBlocks needs a non-empty dataset, got n={n}")
        if block_size <= 0:
            raise ValueError(f"EpochBlocks block_size must be positive, got {block_size}")
        self.n, self.block_size, self.seed = int(n), int(block_size), int(seed)
        self.runs = run_starts(n, block_size, group_starts) if group_starts is not None else None
        self.n_blocks = len(self.runs) if self.runs is not None else -(-self.n // self.block_size)
        self._cache: dict[int, np.ndarray] = {}  # the last two epochs' permutations (of samples or of runs)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                del self._cache[min(self._cache)]
            size = self.n_blocks if self.runs is not None else self.n
            self._cache[epoch] = np.random.default_rng([self.seed, epoch, 0xC0]).permutation(size).astype(np.int64)
        return self._cache[epoch]

    def samples(self, epoch: int, block: int) -> np.ndarray:
        """The sample indices of one block of one epoch."""
        if not 0 <= block < self.n_blocks or epoch < 0:
            raise IndexError(f"block {block} of epoch {epoch}: an epoch has blocks 0..{self.n_blocks - 1}")
        perm = self._perm(epoch)
        if self.runs is None:
            return perm[block * self.block_size:(block + 1) * self.block_size]
        run = perm[block]
        end = self.runs[run + 1] if run + 1 < len(self.runs) else self.n
        return np.arange(self.runs[run], end, dtype=np.int64)

    def describe(self) -> str:
        """'swarm:<n>:<block size>:<seed>:<hash of the runs or 'perm'>' (peers agree on blocks only if equal)."""
        runs = hashlib.sha256(self.runs.tobytes()).hexdigest()[:12] if self.runs is not None else "perm"
        return f"swarm:{self.n}:{self.block_size}:{self.seed}:{runs}"

    def tag(self) -> str:
        """A short name for this layout (DHT keys): peers with other blocks never read each other's claims."""
        return hashlib.sha256(self.describe().encode()).hexdigest()[:10]


def choose_block(taken: np.ndarray, after: int | None, rng: np.random.Generator) -> int | None:
    """The block to claim next among those not `taken` (bool per block; None: every block is taken).

    The one after `after` (this peer's last block) when it is free, so a peer reads a run of blocks; else a
    random block in the middle half of the largest free stretch (cyclic), so peers spread out and rarely race.
    """
    n = len(taken)
    free = ~np.asarray(taken, dtype=bool)
    if not free.any():
        return None
    if after is not None and free[(after + 1) % n]:
        return (after + 1) % n
    if free.all():
        return int(rng.integers(n))
    first_taken = int(np.argmax(~free))
    rolled = np.roll(free, -first_taken)  # starts on a taken block: no free stretch wraps around
    edges = np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = ends - starts
    longest = np.flatnonzero(lengths == lengths.max())
    k = int(longest[rng.integers(len(longest))])
    length = int(lengths[k])
    lo = length // 4
    offset = int(rng.integers(lo, max(lo + 1, length - lo)))
    return (first_taken + int(starts[k]) + offset) % n


class BlockSource(Protocol):
    """Where BlockFeed gets its blocks: claimed for this peer, reported back once read."""

    epoch: int  # the data epoch the swarm is in (the lowest with a block not read)

    def next_block(self) -> tuple[int, int] | None:
        """(epoch, block) of the next block this peer reads (blocks until one is claimed); None: no more."""
        ...

    def finished(self, epoch: int, block: int) -> None:
        """Every sample of the block reached the consumer."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records (at least the data epoch)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state_dict() (a resumed peer)."""
        ...

    def close(self) -> None:
        """Stops claiming; claims not finished are given up."""
        ...


class BatchFeed(Protocol):
    """What a Loader's `feed=` is: batches produced lazily, told which reached the consumer."""

    epoch: int

    def next_batch(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(sample indices, their data epochs) of the next batch; None: no more."""
        ...

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """next_batch() until None."""
        ...

    def delivered(self, k: int) -> None:
        """k more samples handed out reached the consumer."""
        ...

    def rewind(self) -> None:
        """Hand out again what was handed out but not delivered."""
        ...

    def describe(self) -> str:
        """The order's name (a Loader's state_dict 'order')."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The feed's state (in a Loader's state_dict 'feed')."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state_dict()."""
        ...

    def close(self) -> None:
        """Stops whatever the feed runs."""
        ...


@dataclass
class _Held:
    epoch: int
    block: int
    samples: np.ndarray
    end: int  # position in the feed's stream just after its last sample


class BlockFeed:
    """Batches cut from a stream of claimed blocks, lazily (a Loader's `feed=`).

    `next_batch()` hands out the next batch_size samples (a batch may span blocks, even epochs: each sample
    carries its epoch, which seeds its augmentation); `delivered(k)` says k more samples reached the consumer, and
    a block is reported `finished` once all of its samples did; `rewind()` hands out again what was handed out but
    not delivered (a Loader iteration that was left early), so no sample of a claimed block is lost.
    """

    def __init__(self, blocks: EpochBlocks, batch_size: int, source: BlockSource) -> None:
        if batch_size <= 0:
            raise ValueError(f"BlockFeed batch_size must be positive, got {batch_size}")
        self.blocks, self.batch_size, self.source = blocks, batch_size, source
        self._held: deque[_Held] = deque()
        self._base = 0  # stream position of the first held block's first sample
        self._end = 0  # stream position after the last held sample
        self._handed = 0
        self._delivered = 0
        self.samples_delivered = 0

    @property
    def epoch(self) -> int:
        """The swarm's data epoch (as this peer last saw it)."""
        return int(self.source.epoch)

    def describe(self) -> str:
        """The block layout (a Loader's state_dict 'order')."""
        return self.blocks.describe()

    def next_batch(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(sample indices, their data epochs) of the next batch, claiming blocks as needed; None: no more blocks."""
        while self._end - self._handed < self.batch_size:
            nxt = self.source.next_block()
            if nxt is None:
                break
            epoch, block = nxt
            samples = self.blocks.samples(epoch, block)
            self._end += len(samples)
            self._held.append(_Held(epoch, block, samples, self._end))
        take = min(self.batch_size, self._end - self._handed)
        if take == 0:
            return None
        indices, epochs = [], []
        pos = self._base
        for h in self._held:
            start = pos
            pos += len(h.samples)
            lo, hi = max(start, self._handed), min(pos, self._handed + take)
            if lo < hi:
                indices.append(h.samples[lo - start:hi - start])
                epochs.append(np.full(hi - lo, h.epoch, dtype=np.int64))
            if pos >= self._handed + take:
                break
        self._handed += take
        return np.concatenate(indices), np.concatenate(epochs)

    def delivered(self, k: int) -> None:
        """k more samples of what was handed out reached the consumer; finished blocks are reported."""
        if k < 0 or self._delivered + k > self._handed:
            raise ValueError(f"delivered({k}): only {self._handed - self._delivered} samples are handed out")
        self._delivered += k
        self.samples_delivered += k
        while self._held and self._held[0].end <= self._delivered:
            h = self._held.popleft()
            self._base = h.end
            self.source.finished(h.epoch, h.block)

    def rewind(self) -> None:
        """What was handed out but not delivered is handed out again, in the same order."""
        self._handed = self._delivered

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """next_batch() until there are no more blocks (delivery is the caller's to report)."""
        while (batch := self.next_batch()) is not None:
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The swarm's data epoch and what the source records (a Loader's state_dict()['feed'])."""
        return {"epoch": self.epoch, **self.source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hands the recorded state to the source (a resumed peer starts from the checkpoint's data epoch)."""
        self.source.load_state_dict(state)

    def close(self) -> None:
        """Closes the source (its claims not read are released)."""
        self.source.close()
