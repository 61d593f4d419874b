"""Parallel pack into a gs:// destination (the emulator behind the fault proxy): refused uploads are retried,
the shards equal a sequential pack's, and a re-run resumes from one listing, rewriting only what is missing."""

from __future__ import annotations

import pytest

from hivedata.gcs.fetch import Fetcher
from hivedata.tools.pack import pack
from hivedata.tools.synthetic import SyntheticSpec
from hivedata.tools.synthetic_store import upload_dataset
from tests.support.fault_proxy import FaultProxy

SPEC = SyntheticSpec(num_classes=3, train_per_class=16, val_per_class=0, seed=41, min_short_side=48,
                     max_short_side=96, special_fraction=0.0)
QUIET = dict(shard_size=64 * 1024, progress=False)


@pytest.fixture(scope="module")
def bucket(gcs_emulator) -> str:
    name = "pack-uploads"
    gcs_emulator.create_bucket(name)
    upload_dataset(name, SPEC, train_prefix="train", val_prefix="val", progress=False)
    return name


def shard_bytes(bucket: str, index, endpoint: str) -> list[bytes]:
    with Fetcher(bucket, endpoint=endpoint) as f:
        return [f.read(n) for n in index.shard_names]


def test_parallel_uploads_survive_refusals_and_equal_a_serial_pack(bucket, gcs_emulator, monkeypatch):
    serial = pack(f"gs://{bucket}/train", f"gs://{bucket}/serial", uploads=1, readers=1, log=lambda s: None,
                  **QUIET)
    with FaultProxy(gcs_emulator.url) as proxy:
        proxy.add_fault("status", count=3, status=503, match="/upload/")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        parallel = pack(f"gs://{bucket}/train", f"gs://{bucket}/parallel", uploads=4, readers=2,
                        log=lambda s: None, **QUIET)
        assert proxy.stats["status_503"] == 3
        uploads = [x for x in proxy.exchanges if "/upload/" in x.target and x.status == 200]
    assert len(serial.shard_names) > 3
    assert len(uploads) == len(parallel.shard_names) + 2  # every shard, the plan and the index, once each
    assert shard_bytes(bucket, serial, gcs_emulator.url) == shard_bytes(bucket, parallel, gcs_emulator.url)
    assert serial.crcs.tolist() == parallel.crcs.tolist()


def test_a_rerun_resumes_from_one_listing(bucket, gcs_emulator, monkeypatch):
    first = pack(f"gs://{bucket}/train", f"gs://{bucket}/resume", uploads=4, log=lambda s: None, **QUIET)
    from hivedata.gcs.storage import storage_client

    storage_client().bucket(bucket).blob(first.shard_names[1]).delete()  # as if the first run stopped early
    messages = []
    with FaultProxy(gcs_emulator.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        second = pack(f"gs://{bucket}/train", f"gs://{bucket}/resume", uploads=4, log=messages.append, **QUIET)
        uploads = [x.target for x in proxy.exchanges if "/upload/" in x.target]
        metadata = [x.target for x in proxy.exchanges if x.method == "GET" and "resume/train-0" in x.target
                    and "alt=media" not in x.target]
    n = len(first.shard_names)
    assert f"({n - 1} already there)" in messages[-1]
    assert len(uploads) == 2  # the missing shard and the index
    assert metadata == []  # no metadata GET per shard: one listing told what is there
    assert second.shard_generations[0] == first.shard_generations[0]
    assert second.shard_generations[1] != first.shard_generations[1]
    assert second.crcs.tolist() == first.crcs.tolist()
