"""The embedded default end to end: emulator, generated data, index, native fetch of everything."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hivedata.gcs.fetch import Fetcher
from hivedata.sources.prefix import load_index
from hivedata.tools.emulator import Emulator
from hivedata.tools.synthetic import SyntheticSpec
from hivedata.tools.synthetic_store import upload_dataset

DEMO_BUCKET = "hivedata-demo"


@dataclass
class DemoReport:
    """What the demo did, for printing and for tests."""

    classes: int
    train_objects: int
    val_objects: int
    bytes: int
    fetch_s: float
    retries: int
    index_cached_load_s: float

    def lines(self) -> list[str]:
        """Human-readable summary."""
        n = self.train_objects + self.val_objects
        return [
            f"classes: {self.classes}, train objects: {self.train_objects}, val objects: {self.val_objects}",
            f"fetched {n} objects ({self.bytes / 1e6:.1f} MB) natively in {self.fetch_s:.2f} s: "
            f"{n / self.fetch_s:.0f} objects/s, {self.bytes / self.fetch_s / 1e6:.0f} MB/s, "
            f"{self.retries} retries, every whole object crc32c-checked",
            f"index reloaded from the local cache in {self.index_cached_load_s * 1000:.0f} ms",
        ]


def upload_demo_data(spec: SyntheticSpec, *, progress: bool = True) -> None:
    """Generates and uploads the demo dataset into the emulator that STORAGE_EMULATOR_HOST names."""
    upload_dataset(DEMO_BUCKET, spec, train_prefix="train", val_prefix="val", progress=progress)


def run_demo(spec: SyntheticSpec, *, progress: bool = True) -> DemoReport:
    """Starts an emulator, uploads `spec`'s dataset, indexes and fetches all of it; returns a report."""
    with Emulator():
        upload_demo_data(spec, progress=progress)
        train = load_index(f"gs://{DEMO_BUCKET}/train", progress=progress)
        val = load_index(f"gs://{DEMO_BUCKET}/val", classes=train.classes, progress=progress)
        t0 = time.perf_counter()
        load_index(f"gs://{DEMO_BUCKET}/train", validate=False)
        cached_s = time.perf_counter() - t0
        with Fetcher(DEMO_BUCKET) as f:
            t0 = time.perf_counter()
            total = 0
            for idx in (train, val):
                names = idx.names()
                arena = np.empty(int(idx.sizes.max()) * 256, dtype=np.uint8)
                for s in range(0, len(idx), 256):
                    batch = f.fetch_batch(names[s:s + 256], idx.sizes[s:s + 256], arena=arena)
                    total += int(batch.sizes.sum())
            fetch_s = time.perf_counter() - t0
            retries = int(f.stats()["retries"])
    return DemoReport(len(train.classes), len(train), len(val), total, fetch_s, retries, cached_s)
