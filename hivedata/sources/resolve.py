"""open_source(url): which SampleSource a location names, decided by a table of URL forms."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hivedata.sources.base import SampleSource


@dataclass(frozen=True)
class SourceOptions:
    """What opening a source may need: where and how to reach the bucket, and a class map / labels."""

    endpoint: str
    credentials: Any
    classes: Sequence[str] | None = None
    labels: str | dict[str, str] | None = None


def _packed(url: str, o: SourceOptions) -> SampleSource:
    from hivedata.sources.shards import load_shard_index

    return load_shard_index(url, endpoint=o.endpoint, credentials=o.credentials)


def _webdataset(url: str, o: SourceOptions) -> SampleSource:
    from hivedata.sources.webdataset import load_existing_shards

    return load_existing_shards(url[:-len("*.tar")], endpoint=o.endpoint, credentials=o.credentials,
                                classes=o.classes)


def _local(url: str, o: SourceOptions) -> SampleSource:
    from hivedata.sources.local import LocalFolderSource

    return LocalFolderSource(url[len("file://"):] if url.startswith("file://") else url, classes=o.classes,
                             labels=o.labels)


def _prefix(url: str, o: SourceOptions) -> SampleSource:
    from hivedata.sources.prefix import load_index

    return load_index(url, classes=o.classes, labels=o.labels, endpoint=o.endpoint, credentials=o.credentials)


def _is_local(url: str) -> bool:
    return url.startswith("file://") or (not url.startswith("gs://") and os.path.isdir(url))


# first match wins: (what the URL looks like, how to open it, what it is)
SOURCE_TABLE: list[tuple[Callable[[str], bool], Callable[[str, SourceOptions], SampleSource], str]] = [
    (lambda u: u.endswith(".index.npz"), _packed, "shards written by `python -m hivedata pack` (their index)"),
    (lambda u: u.endswith("/*.tar"), _webdataset, "any WebDataset tar shards (headers walked once, cached)"),
    (_is_local, _local, "a local folder in the ILSVRC layout (file://... or a directory path)"),
    (lambda u: True, _prefix, "gs://bucket/prefix: class folders, or a flat folder with labels (one GET per image)"),
]


def open_source(source: str | SampleSource, options: SourceOptions) -> SampleSource:
    """The SampleSource `source` names (a URL or path, see SOURCE_TABLE); a source object is returned as is."""
    if not isinstance(source, str):
        return source
    for matches, opener, _what in SOURCE_TABLE:
        if matches(source):
            return opener(source, options)
    raise ValueError(f"no source reads {source!r}")  # unreachable: the last entry matches everything
