"""An IterableDataset over hivedata.Loader for people who want torch.utils.data.DataLoader."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from hivedata.common import usable_cpus
from hivedata.gcs.transport import Transport
from hivedata.loader.failures import check_max_missing
from hivedata.sources.base import SampleSource

if TYPE_CHECKING:
    from hivedata.loader.loader import Loader

log = logging.getLogger(__name__)


def share(total: int, parts: int, i: int) -> int:
    """Part i of `total` split into `parts` near-equal whole shares (total // parts, the remainder to the first
    ones), at least 1: the shares sum to `total` whenever parts <= total."""
    return max(1, total // parts + (1 if i < total % parts else 0))


class LoaderDataset(IterableDataset):
    """Yields whole batches; use DataLoader(ds, batch_size=None, num_workers=k).

    Each DataLoader worker builds its own Loader after the fork and reads every k-th batch, so the
    workers together cover the epoch exactly once. Keyword arguments go to hivedata.Loader. Each worker's
    Loader keeps its own max_missing budget over its share of the epoch: a fraction means the same share of
    every worker's samples, a count is allowed per worker.

    Budget: the decode threads (`workers`, default: the CPUs this process may use, hivedata.common.usable_cpus)
    and the GETs in flight (`max_in_flight`, or the `transport`'s; default 256; and max_connections when the
    transport sets it) are totals for all DataLoader workers together: each worker's Loader gets its share
    (total // workers, the remainder to the first ones, at least 1), so k workers never run more than the
    totals (unless there are more workers than threads: one each). Each Loader's stats()["budget"] says so.
    """

    def __init__(self, source: str | SampleSource, **loader_kwargs: Any) -> None:
        super().__init__()
        if loader_kwargs.get("device", "cpu") != "cpu":
            raise ValueError("DataLoader workers produce cpu tensors: move them to the device in the main process")
        check_max_missing(loader_kwargs.get("max_missing", 0))  # here, not in each worker after the fork
        transport = loader_kwargs.pop("transport", None)
        in_flight = loader_kwargs.pop("max_in_flight", None)
        if transport is None:  # what Loader would build, made here so that its totals can be divided
            transport = Transport(ca_bundle=loader_kwargs.get("ca_bundle"),
                                  http_version=loader_kwargs.get("http_version", "2"),
                                  **({} if in_flight is None else {"max_in_flight": in_flight}))
        elif in_flight is not None and in_flight != transport.max_in_flight:
            raise ValueError(f"max_in_flight={in_flight} but the transport has "
                             f"max_in_flight={transport.max_in_flight}: give one of them")
        if loader_kwargs.get("workers"):
            threads, cpu_source = int(loader_kwargs.pop("workers")), "workers argument"
        else:
            loader_kwargs.pop("workers", None)
            threads, cpu_source = usable_cpus()
        self.source, self.loader_kwargs, self.transport = source, loader_kwargs, transport
        self.threads, self.cpu_source = threads, cpu_source  # totals over all DataLoader workers
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (workers are recreated per epoch by DataLoader)."""
        self._epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        shard, shards = (info.id, info.num_workers) if info is not None else (0, 1)
        with self.make_loader(shard, shards) as loader:
            loader.set_epoch(self._epoch)
            yield from loader

    def make_loader(self, worker: int, workers: int) -> Loader:
        """The Loader of DataLoader worker `worker` of `workers`: its shard of the batches, its share of the budget."""
        from hivedata.loader.loader import Loader

        if worker == 0 and workers > self.threads:
            log.warning("%d DataLoader workers but a budget of %d decode threads (%s): each worker takes one, "
                        "%d in all", workers, self.threads, self.cpu_source, workers)
        loader = Loader(self.source, shard=worker, num_shards=workers, **self.worker_kwargs(worker, workers))
        loader.budget.update(cpu_source=f"{self.cpu_source}, shared by {workers} DataLoader workers",
                             worker=worker, total_threads=self.threads,
                             total_max_in_flight=self.transport.max_in_flight)
        return loader

    def worker_kwargs(self, worker: int, workers: int) -> dict[str, Any]:
        """The Loader keywords of DataLoader worker `worker` of `workers`: its share of threads and GETs."""
        t = self.transport
        transport = dataclasses.replace(
            t, max_in_flight=share(t.max_in_flight, workers, worker),
            max_connections=None if t.max_connections is None else share(t.max_connections, workers, worker))
        return dict(self.loader_kwargs, workers=share(self.threads, workers, worker), transport=transport)
