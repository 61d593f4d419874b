"""Which samples each batch holds: a seeded order per epoch (global or block shuffle), resumable at any batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hivedata.loader.orders import SHUFFLES, make_order, run_starts, shuffle_mode  # noqa: F401 (re-exported)


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
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.drop_last, self.shard, self.num_shards = drop_last, shard, num_shards
        self.block_size, self.window = block_size, window or batch_size
        self._order = make_order(shuffle, n, seed=seed, block_size=block_size, window=self.window,
                                 group_starts=group_starts)
        self.mode = self._order.mode
        self.shuffle = self.mode != "none"
        self._runs = getattr(self._order, "runs", None)

    def describe(self) -> str:
        """The order's parameters as one string (state_dict keeps it so a resume can refuse a different order)."""
        return self._order.describe()

    def total_batches(self) -> int:
        """Batches in an epoch across all shards."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        total = self.total_batches()
        return len(range(self.shard, total, self.num_shards))

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order."""
        return self._order.order(epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This shard's batches of the epoch, from its `start`-th batch on."""
        order = self.order(epoch)
        for b in list(range(self.shard, self.total_batches(), self.num_shards))[start:]:
            yield order[b * self.batch_size:(b + 1) * self.batch_size]
