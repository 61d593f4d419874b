"""Which samples each batch holds: a seeded order per epoch (global or block shuffle), resumable at any batch."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

SHUFFLES = ("none", "global", "block")


def shuffle_mode(shuffle: bool | str) -> str:
    """True -> 'global', False -> 'none'; a name is checked and returned."""
    if shuffle is True:
        return "global"
    if shuffle is False:
        return "none"
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be a bool or one of {SHUFFLES}, not {shuffle!r}")
    return shuffle


def run_starts(n: int, block_size: int, group_starts: np.ndarray | None = None) -> np.ndarray:
    """Where each run of at most block_size consecutive samples starts; runs never cross a group (shard)."""
    groups = np.asarray(group_starts if group_starts is not None and len(group_starts) else [0], dtype=np.int64)
    if groups[0] != 0 or np.any(np.diff(groups) <= 0) or groups[-1] >= n:
        raise ValueError("group_starts must rise strictly from 0 and stay below the dataset size")
    ends = np.append(groups[1:], n)
    return np.concatenate([np.arange(a, b, block_size, dtype=np.int64) for a, b in zip(groups, ends, strict=True)])


class EpochSampler:
    """Batches of dataset indices for an epoch, in an order derived from (seed, epoch).

    shuffle: "global" (a full permutation), "block" (runs of `block_size` consecutive samples, never
    crossing a `group_starts` boundary, are permuted, then samples are shuffled within windows of
    `window` positions: a batch holds a few runs, so its reads coalesce), or "none" (index order).
    With drop_last=False the last batch is short and every index appears exactly once per epoch.
    `shard`/`num_shards` keep every num_shards-th batch (DataLoader workers, data-parallel ranks).
    """

    def __init__(self, n: int, *, batch_size: int, shuffle: bool | str, seed: int, drop_last: bool,
                 shard: int = 0, num_shards: int = 1, block_size: int = 64, window: int | None = None,
                 group_starts: np.ndarray | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
        if n == 0:
            raise ValueError("the dataset is empty")
        if block_size <= 0 or (window is not None and window <= 0):
            raise ValueError(f"block_size and window must be positive, got {block_size} and {window}")
        self.n, self.batch_size, self.mode, self.seed = n, batch_size, shuffle_mode(shuffle), seed
        self.shuffle = self.mode != "none"
        self.drop_last, self.shard, self.num_shards = drop_last, shard, num_shards
        self.block_size, self.window = block_size, window or batch_size
        self._runs = run_starts(n, block_size, group_starts) if self.mode == "block" else None

    def describe(self) -> str:
        """The order's parameters as one string (state_dict keeps it so a resume can refuse a different order)."""
        if self.mode != "block":
            return self.mode
        runs = hashlib.sha256(self._runs.tobytes()).hexdigest()[:12]  # shards regrouped: another order
        return f"block:{self.block_size}:{self.window}:{runs}"

    def total_batches(self) -> int:
        """Batches in an epoch across all shards."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        total = self.total_batches()
        return len(range(self.shard, total, self.num_shards))

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order."""
        if self.mode == "none":
            return np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        if self.mode == "global":
            return rng.permutation(self.n).astype(np.int64)
        runs = self._runs
        lengths = np.diff(np.append(runs, self.n))
        picked = rng.permutation(len(runs))
        # positions of every sample of the permuted runs, without a Python loop over runs
        first = np.repeat(runs[picked], lengths[picked])
        within = np.arange(self.n, dtype=np.int64) - np.repeat(np.cumsum(lengths[picked]) - lengths[picked],
                                                               lengths[picked])
        order = first + within
        w = self.window
        for a in range(0, self.n, w):  # shuffle within each window (n / window steps)
            rng.shuffle(order[a:a + w])
        return order

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This shard's batches of the epoch, from its `start`-th batch on."""
        order = self.order(epoch)
        for b in list(range(self.shard, self.total_batches(), self.num_shards))[start:]:
            yield order[b * self.batch_size:(b + 1) * self.batch_size]
