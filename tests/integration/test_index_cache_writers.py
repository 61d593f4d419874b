"""Several loaders in one process listing the same prefix at once all save its index to the local cache."""

from __future__ import annotations

import threading
import uuid

from hivedata.sources.prefix import Index, cache_path, load_index
from tests.support.bulk_objects import fill_bucket


def test_threads_listing_and_caching_the_same_prefix_at_once(gcs_emulator, tmp_path) -> None:
    bucket = f"cachew-{uuid.uuid4().hex[:10]}"
    names = [f"train/c{c}/img_{i:03d}.JPEG" for c in range(4) for i in range(50)]
    fill_bucket(gcs_emulator, bucket, names)
    url = f"gs://{bucket}/train"
    n = 6
    barrier = threading.Barrier(n)
    got: list[Index] = []
    errors: list[BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            got.append(load_index(url, endpoint=gcs_emulator.url, credentials="anonymous", refresh=True,
                                  cache_dir=tmp_path, progress=False, workers=2))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == n
    cached = Index.load(cache_path(url, endpoint=gcs_emulator.url, cache_dir=tmp_path))
    assert cached.names() == sorted(names) == got[0].names()
    assert [p.name for p in tmp_path.iterdir()] == [cache_path(url, endpoint=gcs_emulator.url,
                                                               cache_dir=tmp_path).name]
