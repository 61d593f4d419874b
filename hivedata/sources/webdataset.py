"""Existing WebDataset tar shards in a bucket, indexed by reading their tar headers with ranged GETs.

Each shard is read in large windows (tar_scan.scan_tar: several members per GET, many shards at once);
a shard read whole in order is checked against the crc32c GCS stores for it, and then its samples get
their crc32c (reads of them are verified). The result is cached locally (shard_cache_path) and shared
through the bucket (shared_index: gs://bucket/<prefix>.hivedata-index/...); only shards that are new or
changed (name, size and generation compared with a fresh listing) are read again.
`read_tar_members` is the walk before windows (one small GET per member), kept as the reference the
windowed scan must agree with and as the baseline of benchmarks/shard_index_bench.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hivedata.common import IMAGE_EXTENSIONS
from hivedata.errors import ChecksumError, IndexStaleError, NoImagesError
from hivedata.gcs.auth import token_source
from hivedata.gcs.paths import storage_endpoint
from hivedata.sources.prefix import cache_path
from hivedata.sources.read_plan import NO_CRC
from hivedata.sources.shards import ShardIndex
from hivedata.sources.tar_layout import BLOCK, padded, parse_header, pax_path
from hivedata.sources.tar_scan import DEFAULT_READ_THROUGH, DEFAULT_WINDOW, scan_tar

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
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:  # read_tar_members keeps undecodable bytes as surrogates
            raw = key.encode("utf-8", "surrogateescape")
            raise ValueError(f"{what}: member name {raw!r} is not UTF-8: a sample's key must be text (rename the "
                             f"member, e.g. repack the shard with UTF-8 names)") from None
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


@dataclass
class WalkedShard:
    """One shard's samples (shard number, start, size, label, key), their crc32c (NO_CRC: unknown), and
    what reading them cost."""

    samples: list[tuple]
    crcs: list[int]
    members: int  # regular tar members
    reads: int  # ranged GETs of the shard (plus one crc32c look-up when it was read whole)
    bytes_read: int
    seconds: float
    verified: bool  # read whole and equal to the crc32c GCS stores: its samples carry crcs


def scan_shard(o: Any, number: int, read: Any, objects: Any, *, bucket: str, class_of: dict[str, int] | None = None,
               window: int = DEFAULT_WINDOW, read_through: int = DEFAULT_READ_THROUGH) -> WalkedShard:
    """Samples of shard `o` (ObjectMeta) numbered `number`, read with read(start, length) in windows.

    A shard read whole is checked against the crc32c GCS stores (objects: a SmallObjects); then its
    samples carry their crc32c. Bytes that do not match it, or do not parse as a tar, are read once more
    (a transfer may have damaged them) before the error (ChecksumError / ValueError) names the shard.
    """
    what = f"gs://{bucket}/{o.name}"
    t0 = time.perf_counter()
    reads = nbytes = 0
    for attempt in (1, 2):
        try:
            scan = scan_tar(read, o.size, what, window=window, read_through=read_through)
        except ValueError as e:
            if attempt == 2:
                raise
            log.warning("%s; reading the shard once more", e)
            continue
        reads, nbytes = reads + scan.reads, nbytes + scan.bytes_read
        stored = None
        if scan.object_crc is not None:
            stored = objects.crc32c(bucket, o.name, o.generation)
            reads += 1
        if stored is not None and stored != scan.object_crc:
            if attempt == 2:
                raise ChecksumError(f"{what}: the bytes read twice do not match the shard's crc32c {stored:08x}",
                                    bucket=bucket, object=o.name)
            log.warning("%s: the bytes read have crc32c %08x, GCS stores %08x; reading the shard once more", what,
                        scan.object_crc, stored)
            continue
        samples = samples_from_members(scan.members, number, what, class_of)
        if stored is None:  # not read whole, or GCS keeps no crc32c: the samples stay unverified
            crcs = [NO_CRC] * len(samples)
        else:
            crc_at = {m[1]: c for m, c in zip(scan.members, scan.crcs, strict=True)}
            crcs = [crc_at[s[1]] for s in samples]
        return WalkedShard(samples, crcs, len(scan.members), reads, nbytes, time.perf_counter() - t0,
                           stored is not None)
    raise AssertionError("unreachable")


def walk_shards(bucket: str, shards: Sequence[Any], numbers: Sequence[int], ep: str, tokens: Any,
                class_of: dict[str, int] | None, workers: int, *, window: int | None = DEFAULT_WINDOW,
                read_through: int = DEFAULT_READ_THROUGH) -> list[WalkedShard]:
    """Per shard (ObjectMeta), its samples numbered numbers[i], read `workers` shards at a time.

    window=None walks one small GET per member header (read_tar_members: the walk before windows).
    Reads name the listed generation, so a shard rewritten meanwhile is an IndexStaleError, not a mix.
    """
    from hivedata.errors import ObjectNotFoundError
    from hivedata.gcs.fetch import Fetcher, ReadRequest
    from hivedata.gcs.small_objects import SmallObjects

    local = threading.local()  # a Fetcher streams one request at a time: one per worker thread
    opened: list[Any] = []
    lock = threading.Lock()

    def one(i: int) -> WalkedShard:
        if not hasattr(local, "fetcher"):
            local.fetcher = Fetcher(bucket, endpoint=ep, credentials=tokens, max_in_flight=2)
            local.objects = SmallObjects(ep, tokens)
            with lock:
                opened.extend([local.fetcher, local.objects])
        o = shards[i]
        what = f"gs://{bucket}/{o.name}"
        if window is None:
            t0, count = time.perf_counter(), [0, 0]

            def read_small(s: int, ln: int) -> bytes:
                data = local.fetcher.read(o.name, s, ln)
                count[0], count[1] = count[0] + 1, count[1] + len(data)
                return data

            members = read_tar_members(read_small, o.size, what)
            samples = samples_from_members(members, numbers[i], what, class_of)
            return WalkedShard(samples, [NO_CRC] * len(samples), len(members), count[0], count[1],
                               time.perf_counter() - t0, False)

        def read(s: int, ln: int) -> bytes:
            item = next(local.fetcher.fetch([ReadRequest(o.name, s, ln, o.generation or None)]))
            return bytes(item.data)

        try:
            return scan_shard(o, numbers[i], read, local.objects, bucket=bucket, class_of=class_of, window=window,
                              read_through=read_through)
        except ObjectNotFoundError as e:
            raise IndexStaleError(f"{what} (generation {o.generation}) changed or disappeared while it was "
                                  f"indexed: {e}") from e

    try:
        with ThreadPoolExecutor(max(1, min(workers, len(shards) or 1))) as pool:
            return list(pool.map(one, range(len(shards))))
    finally:
        for f in opened:
            f.close()


def _assemble(bucket: str, prefix: str, shards: Sequence[Any], per_shard: Sequence[Sequence[tuple]],
              per_shard_crcs: Sequence[Sequence[int]], classes: Sequence[str] | None, ep: str) -> ShardIndex:
    samples = [s for group in per_shard for s in group]
    crcs = [c for group in per_shard_crcs for c in group]
    n_classes = max((s[3] for s in samples), default=-1) + 1
    names = list(classes) if classes else [str(i) for i in range(n_classes)]
    return ShardIndex.build(bucket, prefix, names, [o.name for o in shards], [o.size for o in shards],
                            [o.generation for o in shards], samples, endpoint=ep,
                            crcs=crcs if any(c != NO_CRC for c in crcs) else None)


def _class_map(classes: Sequence[str] | None) -> dict[str, int] | None:
    return {c: i for i, c in enumerate(classes)} if classes else None


def _log_walk(what: str, walked: Sequence[WalkedShard], seconds: float) -> None:
    if walked:
        members = sum(w.members for w in walked)
        reads = sum(w.reads for w in walked)
        log.info("%s: read %d shards in %.1f s: %d GETs for %d members (%.3f per member), %.0f MB, %d of %d "
                 "verified against their crc32c", what, len(walked), seconds, reads, members,
                 reads / max(members, 1), sum(w.bytes_read for w in walked) / 1e6, sum(w.verified for w in walked),
                 len(walked))


def index_existing_shards(bucket: str, prefix: str, *, endpoint: str | None = None, credentials: Any = "auto",
                          classes: Sequence[str] | None = None, workers: int = 16,
                          window: int | None = DEFAULT_WINDOW, read_through: int = DEFAULT_READ_THROUGH) -> ShardIndex:
    """Indexes WebDataset tar shards under gs://bucket/prefix by reading their headers (no cache).

    window: bytes per ranged GET (None: one small GET per member, the walk before windows); read_through:
    unneeded bytes read rather than starting a new GET at the next header; workers: shards read at once.
    """
    ep, tokens = _connect(endpoint, credentials)
    shards = _list_shards(bucket, prefix, ep, tokens)
    t0 = time.perf_counter()
    walked = walk_shards(bucket, shards, range(len(shards)), ep, tokens, _class_map(classes), workers,
                         window=window, read_through=read_through)
    _log_walk(f"gs://{bucket}/{prefix}", walked, time.perf_counter() - t0)
    return _assemble(bucket, prefix, shards, [w.samples for w in walked], [w.crcs for w in walked], classes, ep)


def shard_cache_path(url: str, *, endpoint: str | None = None, classes: Sequence[str] | None = None,
                     cache_dir: str | Path | None = None) -> Path:
    """Where load_existing_shards caches the index of the shards under `url` (beside load_index's files)."""
    path = cache_path(url, endpoint=endpoint, classes=classes, cache_dir=cache_dir)
    return path.with_name(f"{path.stem}.shards.npz")


ShardKey = tuple[str, int, int]  # name, size, generation


def _cached_samples(old: ShardIndex) -> dict[ShardKey, list[tuple]]:
    """(name, size, generation) of each cached shard -> its samples as (start, size, label, key, crc)."""
    order = np.argsort(old.shard, kind="stable")
    bounds = np.searchsorted(old.shard[order], np.arange(len(old.shard_names) + 1))
    blob, offs = old.keys_blob.tobytes(), old.key_offsets.tolist()
    starts, sizes, labels = old.starts.tolist(), old.sizes.tolist(), old.labels.tolist()
    crcs = old.crcs.tolist() if old.crcs is not None else [NO_CRC] * len(starts)
    return {k: [(starts[i], sizes[i], labels[i], blob[offs[i]:offs[i + 1]].decode(), crcs[i])
                for i in order[bounds[m]:bounds[m + 1]].tolist()] for m, k in enumerate(_shard_keys(old))}


def _shard_keys(index: ShardIndex) -> list[ShardKey]:
    return list(zip(index.shard_names, index.shard_sizes.tolist(), index.shard_generations.tolist(), strict=True))


def _merge(known: dict[ShardKey, list[tuple]], more: dict[ShardKey, list[tuple]]) -> None:
    """Adds `more`'s shards to `known`; for a shard in both, the samples that carry crcs win."""
    for k, samples in more.items():
        if k not in known or (all(s[4] == NO_CRC for s in known[k]) and any(s[4] != NO_CRC for s in samples)):
            known[k] = samples


def _local_cache(path: Path, listed: list[ShardKey], refresh: bool, bucket: str,
                 prefix: str) -> tuple[ShardIndex | None, dict]:
    """(the cached index if it matches the listing, else None; the samples of its shards still listed)."""
    from hivedata.sources.shared_index import check_shard_index

    if refresh or not path.exists():
        return None, {}
    try:
        old = ShardIndex.load(path)
        check_shard_index(old, bucket=bucket, prefix=prefix, what=str(path))
        if _shard_keys(old) == listed:
            return old, {}
        known = _cached_samples(old)
    except (OSError, ValueError, IndexError, IndexStaleError) as e:
        log.warning("ignoring unreadable shard index cache %s: %s", path, e)
        return None, {}
    log.info("shard index cache %s is stale: %d of %d shards new or changed, %d gone", path,
             sum(k not in known for k in listed), len(listed), len(set(known) - set(listed)))
    return None, known


def load_existing_shards(url: str, *, endpoint: str | None = None, credentials: Any = "auto",
                         classes: Sequence[str] | None = None, workers: int = 16, cache_dir: str | Path | None = None,
                         refresh: bool = False, shared: bool | None = None, window: int | None = DEFAULT_WINDOW,
                         read_through: int = DEFAULT_READ_THROUGH) -> ShardIndex:
    """The index of the .tar shards under gs://bucket/prefix, cached locally and in the bucket.

    One listing per call; a local cache whose shard names, sizes and generations equal it is returned as
    is. Otherwise the shared index in the bucket (shared_index.py; not used with shared=False, or when
    shared is None and HIVEDATA_SHARED_INDEX=0) supplies the
    shards it knows unchanged, and only the rest are read; the result is cached locally and, when it
    added anything, written back to the bucket (a peer that may not write warns once). refresh=True reads
    every shard again. window, read_through, workers: as in index_existing_shards.
    """
    from hivedata.gcs.paths import parse_gcs_url
    from hivedata.gcs.small_objects import SmallObjects
    from hivedata.sources.shared_index import SharedRead, read_shared_index, write_shared_index

    if shared is None:
        shared = os.environ.get("HIVEDATA_SHARED_INDEX", "1") != "0"
    loc = parse_gcs_url(url)
    prefix = loc.prefix if not loc.prefix or loc.prefix.endswith("/") else loc.prefix + "/"
    ep, tokens = _connect(endpoint, credentials)
    shards = _list_shards(loc.bucket, prefix, ep, tokens)
    path = shard_cache_path(f"gs://{loc.bucket}/{prefix}", endpoint=ep, classes=classes, cache_dir=cache_dir)
    listed = [(o.name, o.size, o.generation) for o in shards]
    cached, known = _local_cache(path, listed, refresh, loc.bucket, prefix)
    if cached is not None:
        return cached
    objects = SmallObjects(ep, tokens)
    try:
        from_bucket = read_shared_index(objects, loc.bucket, prefix, classes) if shared else SharedRead(None, None)
        if from_bucket.index is not None and not refresh:
            if _shard_keys(from_bucket.index) == listed:
                _save_local(from_bucket.index, path)
                return from_bucket.index
            _merge(known, _cached_samples(from_bucket.index))
        todo = [n for n, k in enumerate(listed) if k not in known]
        t0 = time.perf_counter()
        walked = walk_shards(loc.bucket, [shards[n] for n in todo], todo, ep, tokens, _class_map(classes), workers,
                             window=window, read_through=read_through)
        _log_walk(f"gs://{loc.bucket}/{prefix}", walked, time.perf_counter() - t0)
        per_shard = {n: (w.samples, w.crcs) for n, w in zip(todo, walked, strict=True)}
        for n, k in enumerate(listed):
            if n not in per_shard:
                per_shard[n] = ([(n, *s[:4]) for s in known[k]], [s[4] for s in known[k]])
        order = range(len(shards))
        index = _assemble(loc.bucket, prefix, shards, [per_shard[n][0] for n in order],
                          [per_shard[n][1] for n in order], classes, ep)
        _save_local(index, path)
        if from_bucket.generation is not None:
            write_shared_index(objects, index, classes, from_bucket.generation)
        return index
    finally:
        objects.close()


def _save_local(index: ShardIndex, path: Path) -> None:
    try:
        index.save(path)
    except OSError as e:  # the index is built: a cache we cannot write only costs the next run a walk
        log.warning("cannot cache the shard index at %s: %s", path, e)
