"""An IterableDataset over hivedata.Loader for people who want torch.utils.data.DataLoader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from hivedata.loader.failures import check_max_missing
from hivedata.sources.base import SampleSource


class LoaderDataset(IterableDataset):
    """Yields whole batches; use DataLoader(ds, batch_size=None, num_workers=k).

    Each DataLoader worker builds its own Loader after the fork and reads every k-th batch, so the
    workers together cover the epoch exactly once. Keyword arguments go to hivedata.Loader. Each worker's
    Loader keeps its own max_missing budget over its share of the epoch: a fraction means the same share of
    every worker's samples, a count is allowed per worker.
    """

    def __init__(self, source: str | SampleSource, **loader_kwargs: Any) -> None:
        super().__init__()
        if loader_kwargs.get("device", "cpu") != "cpu":
            raise ValueError("DataLoader workers produce cpu tensors: move them to the device in the main process")
        check_max_missing(loader_kwargs.get("max_missing", 0))  # here, not in each worker after the fork
        self.source, self.loader_kwargs = source, loader_kwargs
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (workers are recreated per epoch by DataLoader)."""
        self._epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from hivedata.loader.loader import Loader

        info = get_worker_info()
        shard, shards = (info.id, info.num_workers) if info is not None else (0, 1)
        with Loader(self.source, shard=shard, num_shards=shards, **self.loader_kwargs) as loader:
            loader.set_epoch(self._epoch)
            yield from loader
