"""hivedata: stream ImageNet from Google Cloud Storage into collaborative training.

Importing it has no side effects: no threads, sockets or torch settings until asked. The heavier
entry points load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Fetcher", "Index", "Loader", "LoaderDataset", "load_index"]


def __getattr__(name: str) -> Any:
    if name == "Loader":
        from hivedata.loader.loader import Loader

        return Loader
    if name == "LoaderDataset":
        from hivedata.loader.torch_dataset import LoaderDataset

        return LoaderDataset
    if name == "Fetcher":
        from hivedata.gcs.fetch import Fetcher

        return Fetcher
    if name in ("Index", "load_index"):
        from hivedata.sources import prefix as index

        return getattr(index, name)
    raise AttributeError(f"module 'hivedata' has no attribute {name!r}")
