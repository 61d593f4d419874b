"""Writing a synthetic dataset (hivedata.tools.synthetic) to a local folder or a GCS bucket, in parallel."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from hivedata.tools.synthetic import (
    DatasetInfo,
    SampleRef,
    SyntheticSpec,
    dataset_items,
    make_jpeg,
    val_labels_object,
    val_labels_text,
    wnids,
)


def _generate(
    spec: SyntheticSpec,
    items: list[SampleRef],
    put: Callable[[str, bytes], None],
    workers: int,
    progress: bool,
) -> int:
    """Generate and ``put`` every item with a bounded thread pool; returns the total JPEG bytes."""

    def job(item: SampleRef) -> int:
        data = make_jpeg(item.label, item.index, spec, item.split)
        put(item.name, data)
        return len(data)

    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="img", desc="synthetic", disable=None)  # only on a terminal
    total = 0
    pending: set[Future[int]] = set()
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for item in items:
                if len(pending) >= 4 * max(1, workers):
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        total += fut.result()
                    if bar is not None:
                        bar.update(len(done))
                pending.add(pool.submit(job, item))
            for fut in pending:
                total += fut.result()
            if bar is not None:
                bar.update(len(pending))
    finally:
        if bar is not None:
            bar.close()
    return total


def _info(
    location: str,
    spec: SyntheticSpec,
    tp: str,
    vp: str,
    n_train: int,
    n_val: int,
    total: int,
    labels: str | None,
) -> DatasetInfo:
    return DatasetInfo(
        location, tp, vp, spec.num_classes, tuple(wnids(spec.num_classes)), n_train, n_val, total, labels
    )


def write_dataset(
    root: Path | str,
    spec: SyntheticSpec,
    train_prefix: str = "train",
    val_prefix: str = "val",
    *,
    workers: int = 8,
    progress: bool = False,
) -> DatasetInfo:
    """Write the dataset as files under a local directory ``root`` (same names as the bucket objects)."""
    root = Path(root)
    tp, vp = train_prefix.rstrip("/"), val_prefix.rstrip("/")
    train, val = dataset_items(spec, tp, vp)

    def put(name: str, data: bytes) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    total = _generate(spec, train + val, put, workers, progress)
    labels = None
    if spec.val_layout == "flat":
        labels = val_labels_object(vp)
        put(labels, val_labels_text(spec, val).encode())
    return _info(str(root), spec, tp, vp, len(train), len(val), total, labels)


def _ensure_bucket(client: Any, name: str) -> Any:
    bucket = client.lookup_bucket(name)
    if bucket is not None:
        return bucket
    project = getattr(client, "project", None) or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if project is None and os.environ.get("STORAGE_EMULATOR_HOST"):
        project = "test"  # emulators accept any project; the client has none without credentials
    return client.create_bucket(name, project=project) if project else client.create_bucket(name)


def size_connection_pool(client: Any, connections: int) -> None:
    """Lets ``connections`` threads share a storage client without urllib3's "Connection pool is full" discards.

    google-cloud-storage has no public setting for this: its client sends through a requests Session
    (``client._http``) whose default adapters keep 10 connections per host, fewer than upload_dataset's threads.
    """
    import requests
    from requests.adapters import DEFAULT_POOLSIZE, HTTPAdapter

    session = getattr(client, "_http", None)
    if not isinstance(session, requests.Session) or connections <= DEFAULT_POOLSIZE:
        return
    for prefix, adapter in list(session.adapters.items()):
        if type(adapter) is HTTPAdapter:  # a custom adapter (mutual TLS) keeps its own settings
            session.mount(prefix, HTTPAdapter(pool_connections=DEFAULT_POOLSIZE, pool_maxsize=connections,
                                              max_retries=adapter.max_retries))


def upload_dataset(
    bucket: str,
    spec: SyntheticSpec,
    *,
    train_prefix: str = "train",
    val_prefix: str = "val",
    workers: int = 16,
    client: Any = None,
    progress: bool = True,
) -> DatasetInfo:
    """Generate and upload the dataset to a GCS bucket (created if missing; honours STORAGE_EMULATOR_HOST)."""
    retry: Any = None
    if client is None:
        from google.cloud import storage

        client = storage.Client()
    size_connection_pool(client, workers)  # every worker thread keeps its connection
    try:
        from google.cloud.storage.retry import DEFAULT_RETRY

        retry = DEFAULT_RETRY  # uploads are idempotent here: same name, same bytes
    except ImportError:
        pass
    bkt = _ensure_bucket(client, bucket)
    tp, vp = train_prefix.rstrip("/"), val_prefix.rstrip("/")
    train, val = dataset_items(spec, tp, vp)

    def put(name: str, data: bytes, content_type: str = "image/jpeg") -> None:
        kwargs = {"retry": retry} if retry is not None else {}
        bkt.blob(name).upload_from_string(data, content_type=content_type, **kwargs)

    total = _generate(spec, train + val, put, workers, progress)
    labels = None
    if spec.val_layout == "flat":
        labels = val_labels_object(vp)
        put(labels, val_labels_text(spec, val).encode(), "text/plain")
    return _info(bucket, spec, tp, vp, len(train), len(val), total, labels)
