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
        from .loader import Loader

        return Loader
    if name == "LoaderDataset":
        from .torch_dataset import LoaderDataset

        return LoaderDataset
    if name == "Fetcher":
        from .fetch import Fetcher

        return Fetcher
    if name in ("Index", "load_index"):
        from . import index

        return getattr(index, name)
    raise AttributeError(f"module 'hivedata' has no attribute {name!r}")
