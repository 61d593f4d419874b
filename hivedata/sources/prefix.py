"""A bucket listed once: object names, sizes, generations and labels in a compact, cached index."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hivedata.common import IMAGE_EXTENSIONS as COMMON_IMAGE_EXTENSIONS
from hivedata.common import cache_root, string_blob
from hivedata.errors import DataFormatError, IndexStaleError, ObjectNotFoundError
from hivedata.gcs.auth import token_source
from hivedata.gcs.json_client import GcsJsonClient, ObjectMeta
from hivedata.gcs.parallel_listing import ListTask, list_ranges
from hivedata.gcs.paths import parse_gcs_url, storage_endpoint
from hivedata.sources.base import BucketSource, CacheKey
from hivedata.sources.labels import NoImagesError, label_flat, parse_labels  # noqa: F401 (parse_labels: its old home)
from hivedata.sources.read_plan import DEFAULT_MAX_GAP, ReadPlan, plan_whole_objects

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = tuple(f".{e}" for e in COMMON_IMAGE_EXTENSIONS)  # as name suffixes
FORMAT_VERSION = 1


@dataclass
class Index(BucketSource):
    """Objects under gs://bucket/prefix with labels, one GET per sample; names live in one UTF-8 blob (fast to load)."""

    bucket: str
    prefix: str
    classes: list[str]
    names_blob: np.ndarray  # uint8
    name_offsets: np.ndarray  # int64, len + 1
    sizes: np.ndarray  # int64
    generations: np.ndarray  # int64
    labels: np.ndarray  # int32
    endpoint: str = ""
    folders: list[str] = field(default_factory=list)  # listed class folders; empty for a flat layout

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> label, as torchvision's ImageFolder."""
        return {c: i for i, c in enumerate(self.classes)}

    def name(self, i: int) -> str:
        """Full object name of entry i."""
        a, b = int(self.name_offsets[i]), int(self.name_offsets[i + 1])
        return self.names_blob[a:b].tobytes().decode()

    def groups(self) -> np.ndarray | None:
        """Objects are independent: no group boundaries."""
        return None

    def plan(self, indices: np.ndarray, present: np.ndarray | None = None, *,
             max_gap: int = DEFAULT_MAX_GAP) -> ReadPlan:
        """One whole-object GET per sample, laid out back to back."""
        return plan_whole_objects(self.sizes[indices], present, bucket=self.bucket,
                                  names=[self.name(i) for i in indices.tolist()],
                                  generations=self.generations[indices].tolist())

    def cache_key(self, i: int) -> CacheKey | None:
        """(endpoint, bucket, object, generation); None for an object without a generation."""
        gen = int(self.generations[i])
        return CacheKey(self.bucket, self.name(i), gen, endpoint=self.endpoint) if gen else None

    def describe(self, i: int) -> str:
        """gs://bucket/object"""
        return f"gs://{self.bucket}/{self.name(i)}"

    def names(self) -> list[str]:
        """All object names (materialises a list; prefer name(i) for a few)."""
        blob = self.names_blob.tobytes().decode()
        if blob.isascii():
            offs = self.name_offsets.tolist()
            return [blob[offs[i]:offs[i + 1]] for i in range(len(self))]
        return [self.name(i) for i in range(len(self))]

    def save(self, path: str | Path) -> None:
        """Writes the index atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One temporary file per writer: loaders in one process (threads) may save the same index at once.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:12]}.tmp")
        meta = np.array([FORMAT_VERSION], dtype=np.int64)
        try:
            with open(tmp, "xb") as f:
                np.savez(f, meta=meta, bucket=np.array(self.bucket), prefix=np.array(self.prefix),
                         endpoint=np.array(self.endpoint), classes=np.array(self.classes, dtype=str),
                         folders=np.array(self.folders, dtype=str), names_blob=self.names_blob,
                         name_offsets=self.name_offsets, sizes=self.sizes, generations=self.generations,
                         labels=self.labels)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Index:
        """Reads an index written by save()."""
        with np.load(path, allow_pickle=False) as z:
            if int(z["meta"][0]) != FORMAT_VERSION:
                raise IndexStaleError(f"index file {path} has format {int(z['meta'][0])}, expected {FORMAT_VERSION}")
            return cls(bucket=str(z["bucket"]), prefix=str(z["prefix"]), classes=[str(c) for c in z["classes"]],
                       names_blob=z["names_blob"], name_offsets=z["name_offsets"], sizes=z["sizes"],
                       generations=z["generations"], labels=z["labels"], endpoint=str(z["endpoint"]),
                       folders=[str(c) for c in z["folders"]])

    @classmethod
    def from_entries(cls, bucket: str, prefix: str, classes: Sequence[str], entries: Sequence[ObjectMeta],
                     labels: Sequence[int], *, endpoint: str = "", folders: Sequence[str] = ()) -> Index:
        """Builds an index from listed objects and their labels (kept in the given order)."""
        blob, offsets = string_blob([e.name for e in entries])
        return cls(bucket=bucket, prefix=prefix, classes=list(classes), names_blob=blob, name_offsets=offsets,
                   sizes=np.array([e.size for e in entries], dtype=np.int64),
                   generations=np.array([e.generation for e in entries], dtype=np.int64),
                   labels=np.array(labels, dtype=np.int32), endpoint=endpoint, folders=list(folders))


def _is_image(name: str, extensions: Sequence[str] | None) -> bool:
    return extensions is None or name.lower().endswith(tuple(extensions))


class _Lister:
    """Lists a prefix: one delimiter listing for the class folders, then the folders in parallel."""

    def __init__(self, client: GcsJsonClient, bucket: str, workers: int, progress: bool) -> None:
        self.client, self.bucket, self.workers, self.progress = client, bucket, workers, progress

    def top(self, prefix: str) -> tuple[list[str], list[ObjectMeta]]:
        folders: list[str] = []
        files: list[ObjectMeta] = []
        for page in self.client.list_pages(self.bucket, prefix, delimiter="/"):
            folders += page.prefixes
            files += page.objects
        return folders, files

    def folders(self, folders: list[str]) -> list[list[ObjectMeta]]:
        def one(p: str) -> list[ObjectMeta]:
            return [o for page in self.client.list_pages(self.bucket, p) for o in page.objects]

        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(folders), desc=f"listing gs://{self.bucket}", unit="class", leave=False,
                       disable=None)  # only on a terminal
        results: list[list[ObjectMeta]] = [[] for _ in folders]
        total = 0
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(folders)))) as pool:
            futures = {pool.submit(one, p): i for i, p in enumerate(folders)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                total += len(results[futures[fut]])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(objects=total)
        if bar is not None:
            bar.close()
        return results


def list_tree(client: GcsJsonClient, bucket: str, prefix: str, *, workers: int = 16,
              progress: bool = True) -> tuple[list[str], list[ObjectMeta], list[list[ObjectMeta]]]:
    """(folders, top-level files, each folder's objects) under prefix, as delimiter listings would give them.

    One delimiter page first: when it is the only page, its folders are listed in parallel (one range per
    folder, large folders split between workers); otherwise (a flat folder, or more than a page of folders)
    the whole prefix is listed in parallel by splitting its name range, and folders are read off the names.
    """
    what = f"listing gs://{bucket}/{prefix}"
    page, token = client.list_page(bucket, prefix, delimiter="/", what=what)
    if token is None:
        folders = list(page.prefixes)
        per_folder = list_ranges(client, bucket, [ListTask(f) for f in folders], workers=workers,
                                 progress=progress) if folders else []
        return folders, page.objects, per_folder
    [objects] = list_ranges(client, bucket, [ListTask(prefix)], workers=workers, progress=progress)
    files: list[ObjectMeta] = []
    groups: dict[str, list[ObjectMeta]] = {}
    for o in objects:
        cut = o.name.find("/", len(prefix))
        if cut < 0:
            files.append(o)
        else:
            groups.setdefault(o.name[:cut + 1], []).append(o)
    folders = sorted(groups)
    return folders, files, [groups[f] for f in folders]


def build_index(url: str, *, classes: Sequence[str] | None = None, labels: str | dict[str, str] | None = None,
                endpoint: str | None = None, credentials: Any = "auto", workers: int = 16, progress: bool = True,
                extensions: Sequence[str] | None = IMAGE_EXTENSIONS, split_ranges: bool = True) -> Index:
    """Lists gs://bucket/prefix once into an Index.

    Folder layout (<prefix>/<class>/<file>): classes sorted like torchvision's ImageFolder, or taken from
    `classes` (validation reuses training's map; an unknown folder is an error). Flat layout
    (<prefix>/<file>): `labels` (a labels file path, gs:// URL, its text mapping, or a dict stem->class)
    gives each file's class. extensions=None indexes every object. split_ranges=False lists as before
    (class folders one per worker, a flat prefix one page after another), for comparison.
    """
    loc = parse_gcs_url(url)
    ep = storage_endpoint(endpoint)
    tokens = token_source(credentials, ep)
    client = GcsJsonClient(ep, tokens)
    prefix = loc.prefix if not loc.prefix or loc.prefix.endswith("/") else loc.prefix + "/"
    if split_ranges:
        folders, files, listed = list_tree(client, loc.bucket, prefix, workers=workers, progress=progress)
    else:
        lister = _Lister(client, loc.bucket, workers, progress)
        folders, files = lister.top(prefix)
        listed = lister.folders(folders) if folders else []
    entries: list[ObjectMeta] = []
    labels_out: list[int] = []
    skipped = 0
    if folders:
        folder_names = [f[len(prefix):].rstrip("/") for f in folders]
        if classes is None:
            class_list = sorted(folder_names)
        else:
            class_list = list(classes)
            unknown = sorted(set(folder_names) - set(class_list))
            if unknown:
                raise DataFormatError(f"gs://{loc.bucket}/{prefix}{unknown[0]}/ is not one of the {len(class_list)} "
                                      f"training classes ({len(unknown)} unknown folders)",
                                      url=f"gs://{loc.bucket}/{prefix}")
        cidx = {c: i for i, c in enumerate(class_list)}
        for fname, objs in zip(folder_names, listed, strict=True):
            for o in objs:
                if _is_image(o.name, extensions):
                    entries.append(o)
                    labels_out.append(cidx[fname])
                else:
                    skipped += 1
    else:
        images = [o for o in files if _is_image(o.name, extensions)]
        skipped = len(files) - len(images)
        if not images:
            raise NoImagesError.under(loc.bucket, prefix, [o.name for o in files])
        class_list, labels_out = label_flat(images, labels, classes, client, loc.bucket, prefix)
        entries = images
    if skipped:
        log.info("index of gs://%s/%s: skipped %d non-image objects", loc.bucket, prefix, skipped)
    order = sorted(range(len(entries)), key=lambda i: entries[i].name)
    return Index.from_entries(loc.bucket, prefix, class_list, [entries[i] for i in order],
                              [labels_out[i] for i in order], endpoint=ep, folders=sorted(folders))


def default_cache_dir() -> Path:
    """$HIVEDATA_CACHE/index, else ~/.cache/hivedata/index."""
    return cache_root() / "index"


def cache_path(url: str, *, endpoint: str | None = None, classes: Sequence[str] | None = None,
               labels: str | dict | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where the cached index of this (endpoint, bucket, prefix, class map, labels) lives."""
    loc = parse_gcs_url(url)
    key = "|".join([storage_endpoint(endpoint), loc.bucket, loc.prefix.rstrip("/"),
                    ",".join(classes) if classes is not None else "", repr(labels) if labels else ""])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{loc.bucket}-{loc.prefix.strip('/')}")[:80]
    return Path(cache_dir or default_cache_dir()) / f"{slug}-{digest}.npz"


def check_fresh(index: Index, *, credentials: Any = "auto", samples: int = 8, seed: int | None = None) -> str | None:
    """Cheap staleness check: the class folders and a few sampled objects still match. Returns why not, or None."""
    ep = index.endpoint or storage_endpoint(None)
    tokens = token_source(credentials, ep)
    client = GcsJsonClient(ep, tokens)
    if index.folders:
        folders, _ = _Lister(client, index.bucket, 1, False).top(index.prefix)
        if sorted(folders) != sorted(index.folders):
            return f"the class folders under {index.url} changed"
    rng = random.Random(seed)
    for i in rng.sample(range(len(index)), min(samples, len(index))):
        name = index.name(i)
        try:
            meta = client.object_meta(index.bucket, name)
        except ObjectNotFoundError:
            return f"gs://{index.bucket}/{name} no longer exists"
        if meta.generation != int(index.generations[i]) or meta.size != int(index.sizes[i]):
            return f"gs://{index.bucket}/{name} changed since it was indexed"
    return None


def load_index(url: str, *, classes: Sequence[str] | None = None, labels: str | dict | None = None,
               endpoint: str | None = None, credentials: Any = "auto", refresh: bool = False,
               validate: bool = True, cache_dir: str | Path | None = None, workers: int = 16,
               progress: bool = True) -> Index:
    """The index of gs://bucket/prefix from the local cache, listing the bucket only when needed.

    refresh=True lists again unconditionally; validate=True checks a cached index with check_fresh()
    and lists again when it is stale.
    """
    path = cache_path(url, endpoint=endpoint, classes=classes, labels=labels, cache_dir=cache_dir)
    if path.exists() and not refresh:
        try:
            index = Index.load(path)
        except (OSError, ValueError, KeyError, IndexStaleError) as e:
            log.warning("ignoring unreadable index cache %s: %s", path, e)
        else:
            reason = check_fresh(index, credentials=credentials) if validate else None
            if reason is None:
                return index
            log.warning("cached index is stale (%s): listing again", reason)
    index = build_index(url, classes=classes, labels=labels, endpoint=endpoint, credentials=credentials,
                        workers=workers, progress=progress)
    index.save(path)
    return index
