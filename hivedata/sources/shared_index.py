"""The index of WebDataset shards, shared by peers through the bucket that holds them.

The first peer that walks the shards under gs://bucket/<prefix> uploads the index it built to

    gs://bucket/<prefix>.hivedata-index/webdataset-<16 hex digits>.npz

(the digits hash the index format, the prefix and the class map, so indexes built with different class
names never meet; no WebDataset tool writes a `.hivedata-index/` folder, and it holds no `.tar`). A new
peer downloads it instead of walking tar headers. The object is a ShardIndex (.npz) that records every
shard's name, size and generation: a peer takes the samples of those shards whose listing still matches
and walks only the others (a rewritten shard has a new generation), then replaces the object.

Writes are conditional (ifGenerationMatch: 0 when the object was absent, else the generation read), so
peers writing at once cannot interleave and a stale peer never overwrites a newer index; the loser keeps
its own index. Bytes that do not parse, or an index inconsistent in itself or with this bucket and prefix,
are ignored with a warning (the shards are walked). A peer that may not write (read-only access) warns
once per process and goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Sequence

import numpy as np

from hivedata.errors import DataFormatError, FetchError, IndexStaleError, ObjectPermissionError
from hivedata.gcs.small_objects import PreconditionFailedError, SmallObjects
from hivedata.sources.shards import SHARD_INDEX_FORMAT, ShardIndex
from hivedata.sources.tar_layout import BLOCK

log = logging.getLogger(__name__)
SHARED_DIR = ".hivedata-index/"

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str, *args: object) -> None:
    with _warned_lock:
        if key in _warned:
            log.info(message, *args)
            return
        _warned.add(key)
    log.warning(message, *args)


def shared_index_name(prefix: str, classes: Sequence[str] | None) -> str:
    """The object name of the shared index of the shards under `prefix` (ending in '/' or empty)."""
    key = json.dumps({"format": SHARD_INDEX_FORMAT, "prefix": prefix, "classes": list(classes) if classes else None})
    return f"{prefix}{SHARED_DIR}webdataset-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _ints(a: object, shape: tuple[int, ...], what: str, field: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu" or a.shape != shape:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise DataFormatError(f"{what}: {field} must be {shape} integers, got {got}", url=what)
    return a.astype(np.int64)


def check_shard_index(index: ShardIndex, *, bucket: str, prefix: str, what: str) -> None:
    """DataFormatError naming `what` unless `index` describes shards under gs://bucket/prefix consistently.

    Every sample must lie inside its shard after a header block, every label name a class, every key be
    UTF-8 inside the key blob: an index that passes cannot send a read outside the shards it names.
    """
    if index.bucket != bucket or index.prefix != prefix:
        raise DataFormatError(f"{what} indexes gs://{index.bucket}/{index.prefix}, not gs://{bucket}/{prefix}",
                              url=what)
    n_shards = len(index.shard_names)
    n = index.shard.shape[0] if isinstance(index.shard, np.ndarray) and index.shard.ndim == 1 else 0
    if any(not name.startswith(prefix) or not name.endswith(".tar") for name in index.shard_names):
        raise DataFormatError(f"{what} names a shard outside {prefix!r} or not a .tar", url=what)
    if len(set(index.shard_names)) != n_shards:
        raise DataFormatError(f"{what} names a shard twice", url=what)
    sizes = _ints(index.shard_sizes, (n_shards,), what, "shard_sizes")
    _ints(index.shard_generations, (n_shards,), what, "shard_generations")
    shard = _ints(index.shard, (n,), what, "shard")
    starts = _ints(index.starts, (n,), what, "starts")
    lengths = _ints(index.sizes, (n,), what, "sizes")
    labels = _ints(index.labels, (n,), what, "labels")
    offsets = _ints(index.key_offsets, (n + 1,), what, "key_offsets")
    blob = index.keys_blob
    if not isinstance(blob, np.ndarray) or blob.dtype != np.uint8 or blob.ndim != 1:
        raise DataFormatError(f"{what}: keys_blob must be bytes (uint8)", url=what)
    if n and (shard.min() < 0 or shard.max() >= n_shards):
        raise DataFormatError(f"{what}: a sample names shard {int(shard.max())} of {n_shards}", url=what)
    if n_shards and sizes.min() < 0:
        raise DataFormatError(f"{what}: a shard has a negative size", url=what)
    if n and (starts.min() < BLOCK or lengths.min() < 0 or np.any(starts > sizes[shard])
              or np.any(lengths > sizes[shard] - starts)):  # (no int64 overflow: starts <= sizes here)
        raise DataFormatError(f"{what}: a sample's bytes lie outside its shard", url=what)
    if n and (labels.min() < 0 or labels.max() >= len(index.classes)):
        raise DataFormatError(f"{what}: a label is not one of its {len(index.classes)} classes", url=what)
    if offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 0):
        raise DataFormatError(f"{what}: key offsets do not cut the key blob into keys", url=what)
    try:
        blob.tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{what}: keys are not UTF-8 ({e})", url=what) from None
    if n and np.any(blob[offsets[:-1][offsets[:-1] < len(blob)]] & 0xC0 == 0x80):
        raise DataFormatError(f"{what}: a key offset splits a UTF-8 character", url=what)


@dataclasses.dataclass
class SharedRead:
    """What reading the shared index gave: the index (None: absent or unusable) and the generation a write
    must replace (0: absent; None: unknown, do not write)."""

    index: ShardIndex | None
    generation: int | None


def read_shared_index(objects: SmallObjects, bucket: str, prefix: str, classes: Sequence[str] | None) -> SharedRead:
    """The shared index of gs://bucket/prefix, checked; a warning and no index when it cannot be used."""
    name = shared_index_name(prefix, classes)
    url = f"gs://{bucket}/{name}"
    try:
        got = objects.download(bucket, name)
    except ObjectPermissionError as e:
        _warn_once(f"read {objects.endpoint} {url}", "cannot read the shared shard index %s (%s); walking the "
                   "shards", url, e)
        return SharedRead(None, None)
    except FetchError as e:
        log.warning("cannot read the shared shard index %s (%s); walking the shards", url, e)
        return SharedRead(None, None)
    if got is None:
        return SharedRead(None, 0)
    data, generation = got
    try:
        index = ShardIndex.from_bytes(data, what=url)
        check_shard_index(index, bucket=bucket, prefix=prefix, what=url)
        if classes and index.classes != list(classes):
            raise DataFormatError(f"{url} has classes {index.classes[:3]}..., not the ones asked for", url=url)
    except (DataFormatError, IndexStaleError) as e:
        log.warning("ignoring the shared shard index %s: %s", url, e)
        return SharedRead(None, generation or None)
    index.endpoint = objects.endpoint
    return SharedRead(index, generation or None)


def write_shared_index(objects: SmallObjects, index: ShardIndex, classes: Sequence[str] | None,
                       replaces: int) -> bool:
    """Uploads `index` as the shared index if the object still has generation `replaces` (0: absent)."""
    name = shared_index_name(index.prefix, classes)
    url = f"gs://{index.bucket}/{name}"
    data = dataclasses.replace(index, endpoint="").to_bytes()
    try:
        objects.upload(index.bucket, name, data, if_generation_match=replaces)
    except PreconditionFailedError:
        log.info("another peer wrote the shared shard index %s first; keeping it", url)
        return False
    except ObjectPermissionError as e:
        _warn_once(f"write {objects.endpoint} {url}", "cannot write the shared shard index %s (%s; read-only "
                   "access?): other peers will walk the shards themselves", url, e)
        return False
    except FetchError as e:
        _warn_once(f"write {objects.endpoint} {url}", "cannot write the shared shard index %s: %s", url, e)
        return False
    log.info("wrote the shared shard index %s (%d samples, %d shards, %d bytes)", url, len(index),
             len(index.shard_names), len(data))
    return True
