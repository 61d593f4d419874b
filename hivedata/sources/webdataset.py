"""Existing WebDataset tar shards in a bucket, indexed by walking their tar headers with ranged GETs.

The walk happens once per shard: the result is cached locally (shard_cache_path) and re-walked only for
shards that are new or changed (name, size and generation compared with a fresh listing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hivedata.common import IMAGE_EXTENSIONS
from hivedata.errors import IndexStaleError, NoImagesError
from hivedata.gcs.auth import token_source
from hivedata.gcs.paths import storage_endpoint
from hivedata.sources.prefix import cache_path
from hivedata.sources.shards import ShardIndex
from hivedata.sources.tar_layout import BLOCK, padded, parse_header, pax_path

log = logging.getLogger(__name__)


def read_tar_members(read: Any, size: int, what: str) -> list[tuple[str, int, int, bytes]]:
    """(name, data offset, size, first bytes of data) of every regular member, by walking the headers.

    `read(start, length)` returns bytes of the tar; each step reads the header plus one more block,
    so small members (a `.cls` label) come with their data and need no extra request.
    """
    out = []
    pos, long_name = 0, None
    while pos + BLOCK <= size:
        chunk = read(pos, min(2 * BLOCK, size - pos))
        try:
            header = parse_header(chunk, pos)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        if header is None:
            break
        name, length, kind = header
        if length < 0:  # GNU base-256 can encode one; it would walk backwards (or not at all)
            raise ValueError(f"{what}: member {name!r} at offset {pos} has a negative size ({length})")
        data_at = pos + BLOCK
        head = chunk[BLOCK:BLOCK + min(length, BLOCK)]
        if len(head) < min(length, BLOCK) or data_at + length > size:
            raise ValueError(f"{what}: member {name!r} at offset {pos} runs past the end of the shard")
        if kind in (b"x", b"L"):  # PAX extended header / GNU long name: they name the next member
            data = head if length <= BLOCK else read(data_at, length)
            try:
                long_name = pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            except ValueError as e:
                raise ValueError(f"{what}: member {name!r} at offset {pos}: {e}") from None
        elif kind in (b"0", b"\0", b"7"):
            out.append((long_name or name, data_at, length, head))
            long_name = None
        else:
            long_name = None
        pos = data_at + padded(length)
    return out


def samples_from_members(members: list[tuple[str, int, int, bytes]], shard_no: int, what: str,
                         class_of: dict[str, int] | None = None) -> list[tuple]:
    """Groups members by WebDataset key: the image member's range and the label from `<key>.cls`."""
    groups: dict[str, dict[str, tuple[int, int, bytes]]] = {}
    order: list[str] = []
    for name, at, length, head in members:
        base = name.rsplit("/", 1)[-1]
        if "." not in base:
            continue
        dot = len(name) - len(base) + base.index(".")
        key, ext = name[:dot], name[dot + 1:].lower()
        if key not in groups:
            groups[key] = {}
            order.append(key)
        groups[key][ext] = (at, length, head)
    samples = []
    for key in order:
        g = groups[key]
        image = next((g[e] for e in IMAGE_EXTENSIONS if e in g), None)
        if image is None:
            continue
        if "cls" in g:
            try:
                text = g["cls"][2][:g["cls"][1]].decode().strip()
            except UnicodeDecodeError:
                raise ValueError(f"{what}: {key}.cls is not text (a label is a class number or name)") from None
            try:
                label = int(text)
            except ValueError:
                if class_of is None or text not in class_of:
                    raise ValueError(f"{what}: {key}.cls holds {text!r}, not a class number") from None
                label = class_of[text]
        else:
            raise ValueError(f"{what}: sample {key!r} has no .cls member (its label)")
        samples.append((shard_no, image[0], image[1], label, key))
    return samples


def _connect(endpoint: str | None, credentials: Any) -> tuple[str, Any]:
    ep = storage_endpoint(endpoint)
    return ep, token_source(credentials, ep)


def _list_shards(bucket: str, prefix: str, ep: str, tokens: Any) -> list[Any]:
    """The .tar objects under gs://bucket/prefix (ObjectMeta: name, size, generation), sorted by name."""
    from hivedata.gcs.json_client import GcsJsonClient

    listed = (o for page in GcsJsonClient(ep, tokens).list_pages(bucket, prefix) for o in page.objects)
    shards = sorted((o for o in listed if o.name.endswith(".tar")), key=lambda o: o.name)
    if not shards:
        raise NoImagesError(f"no .tar shards under gs://{bucket}/{prefix}", url=f"gs://{bucket}/{prefix}")
    return shards


def _walk_shards(bucket: str, shards: Sequence[Any], numbers: Sequence[int], ep: str, tokens: Any,
                 class_of: dict[str, int] | None, workers: int) -> list[list[tuple]]:
    """Per shard, its samples (numbered numbers[i]) from walking its tar headers with ranged GETs."""

    from hivedata.gcs.fetch import Fetcher

    local = threading.local()  # a Fetcher streams one request at a time: one per worker thread
    opened: list[Fetcher] = []

    def one(i: int) -> list[tuple]:
        if not hasattr(local, "fetcher"):
            local.fetcher = Fetcher(bucket, endpoint=ep, credentials=tokens, max_in_flight=2)
            opened.append(local.fetcher)
        o = shards[i]
        what = f"gs://{bucket}/{o.name}"
        members = read_tar_members(lambda s, ln: local.fetcher.read(o.name, s, ln), o.size, what)
        return samples_from_members(members, numbers[i], what, class_of)

    try:
        with ThreadPoolExecutor(max(1, min(workers, len(shards) or 1))) as pool:
            return list(pool.map(one, range(len(shards))))
    finally:
        for f in opened:
            f.close()


def _assemble(bucket: str, prefix: str, shards: Sequence[Any], per_shard: Sequence[Sequence[tuple]],
              classes: Sequence[str] | None, ep: str) -> ShardIndex:
    samples = [s for group in per_shard for s in group]
    n_classes = max((s[3] for s in samples), default=-1) + 1
    names = list(classes) if classes else [str(i) for i in range(n_classes)]
    return ShardIndex.build(bucket, prefix, names, [o.name for o in shards], [o.size for o in shards],
                            [o.generation for o in shards], samples, endpoint=ep)


def _class_map(classes: Sequence[str] | None) -> dict[str, int] | None:
    return {c: i for i, c in enumerate(classes)} if classes else None


def index_existing_shards(bucket: str, prefix: str, *, endpoint: str | None = None, credentials: Any = "auto",
                          classes: Sequence[str] | None = None, workers: int = 8) -> ShardIndex:
    """Indexes WebDataset tar shards under gs://bucket/prefix by walking their headers with ranged GETs."""
    ep, tokens = _connect(endpoint, credentials)
    shards = _list_shards(bucket, prefix, ep, tokens)
    per_shard = _walk_shards(bucket, shards, range(len(shards)), ep, tokens, _class_map(classes), workers)
    return _assemble(bucket, prefix, shards, per_shard, classes, ep)


def shard_cache_path(url: str, *, endpoint: str | None = None, classes: Sequence[str] | None = None,
                     cache_dir: str | Path | None = None) -> Path:
    """Where load_existing_shards caches the index of the shards under `url` (beside load_index's files)."""
    path = cache_path(url, endpoint=endpoint, classes=classes, cache_dir=cache_dir)
    return path.with_name(f"{path.stem}.shards.npz")


def _cached_samples(old: ShardIndex) -> dict[tuple[str, int, int], list[tuple]]:
    """(name, size, generation) of each cached shard -> its samples as (start, size, label, key)."""
    order = np.argsort(old.shard, kind="stable")
    bounds = np.searchsorted(old.shard[order], np.arange(len(old.shard_names) + 1))
    blob, offs = old.keys_blob.tobytes(), old.key_offsets.tolist()
    starts, sizes, labels = old.starts.tolist(), old.sizes.tolist(), old.labels.tolist()
    return {k: [(starts[i], sizes[i], labels[i], blob[offs[i]:offs[i + 1]].decode())
                for i in order[bounds[m]:bounds[m + 1]].tolist()] for m, k in enumerate(_shard_keys(old))}


def _shard_keys(index: ShardIndex) -> list[tuple[str, int, int]]:
    return list(zip(index.shard_names, index.shard_sizes.tolist(), index.shard_generations.tolist(), strict=True))


def load_existing_shards(url: str, *, endpoint: str | None = None, credentials: Any = "auto",
                         classes: Sequence[str] | None = None, workers: int = 8, cache_dir: str | Path | None = None,
                         refresh: bool = False) -> ShardIndex:
    """The index of the .tar shards under gs://bucket/prefix, cached locally; walks only new or changed shards.

    One listing per call; a cached index whose shard names, sizes and generations equal it is returned
    as is. refresh=True walks every shard again.
    """
    from hivedata.gcs.paths import parse_gcs_url

    loc = parse_gcs_url(url)
    prefix = loc.prefix if not loc.prefix or loc.prefix.endswith("/") else loc.prefix + "/"
    ep, tokens = _connect(endpoint, credentials)
    shards = _list_shards(loc.bucket, prefix, ep, tokens)
    path = shard_cache_path(f"gs://{loc.bucket}/{prefix}", endpoint=ep, classes=classes, cache_dir=cache_dir)
    listed = [(o.name, o.size, o.generation) for o in shards]
    known: dict[tuple[str, int, int], list[tuple]] = {}
    if path.exists() and not refresh:
        try:
            old = ShardIndex.load(path)
            if _shard_keys(old) == listed:
                return old
            known = _cached_samples(old)
        except (OSError, ValueError, IndexError, IndexStaleError) as e:
            log.warning("ignoring unreadable shard index cache %s: %s", path, e)
        else:
            log.info("shard index cache %s is stale: %d of %d shards new or changed, %d gone", path,
                     sum(k not in known for k in listed), len(listed), len(set(known) - set(listed)))
    todo = [n for n, k in enumerate(listed) if k not in known]
    walked = _walk_shards(loc.bucket, [shards[n] for n in todo], todo, ep, tokens, _class_map(classes), workers)
    per_shard = dict(zip(todo, walked, strict=True))
    per_shard.update({n: [(n, *s) for s in known[k]] for n, k in enumerate(listed) if k in known})
    index = _assemble(loc.bucket, prefix, shards, [per_shard[n] for n in range(len(shards))], classes, ep)
    try:
        index.save(path)
    except OSError as e:  # the index is built: a cache we cannot write only costs the next run a walk
        log.warning("cannot cache the shard index at %s: %s", path, e)
    return index
