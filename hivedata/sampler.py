"""Which samples each batch holds: a seeded permutation per epoch, resumable at any batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class EpochSampler:
    """Batches of dataset indices for an epoch: permuted by (seed, epoch) when shuffling.

    With drop_last=False the last batch is short and every index appears exactly once per epoch.
    `shard`/`num_shards` keep every num_shards-th batch (DataLoader workers, data-parallel ranks).
    """

    def __init__(self, n: int, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                 shard: int = 0, num_shards: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
        if n == 0:
            raise ValueError("the dataset is empty")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.shard, self.num_shards = drop_last, shard, num_shards

    def total_batches(self) -> int:
        """Batches in an epoch across all shards."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        total = self.total_batches()
        return len(range(self.shard, total, self.num_shards))

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order."""
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n).astype(np.int64)

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This shard's batches of the epoch, from its `start`-th batch on."""
        order = self.order(epoch)
        for b in list(range(self.shard, self.total_batches(), self.num_shards))[start:]:
            yield order[b * self.batch_size:(b + 1) * self.batch_size]
