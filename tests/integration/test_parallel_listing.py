"""Listing split between workers by name range gives exactly the sequential listing, against the real emulator."""

from __future__ import annotations

import uuid

import pytest

from hivedata.errors import FetchError
from hivedata.gcs.auth import TokenSource
from hivedata.gcs.json_client import GcsJsonClient
from hivedata.gcs.parallel_listing import ListStats, ListTask, list_prefix, list_ranges
from hivedata.sources.prefix import build_index
from tests.support.bulk_objects import fill_bucket
from tests.support.fault_proxy import FaultProxy

# Names meant to trip range boundaries: unicode, names that are prefixes of other names, names equal to the
# split points the splitter picks (single characters of the alphabet), and neighbours outside the prefix.
TRICKY = ["flat/a1", "flat/a10", "flat/a1x", "flat/a2", "flat/img_5", "flat/img_", "flat/l", "flat/m", "flat/U",
          "flat/z", "flat/zz", "flat/é", "flat/éa", "flat/中文_1.jpg", "flat/中文_10.jpg", "flat/\U0001f600.jpg",
          "flat/~", "flat/-", "flat/0", "flat/9"]
OUTSIDE = ["fla", "flat0", "flatter/x", "flat.x", "z/flat/x"]
N_FLAT = 2500


def _client(url: str, attempts: int = 6) -> GcsJsonClient:
    return GcsJsonClient(url, TokenSource("anonymous"), max_attempts=attempts)


def _sequential(client: GcsJsonClient, bucket: str, prefix: str) -> list:
    return [o for page in client.list_pages(bucket, prefix) for o in page.objects]


@pytest.fixture(scope="module")
def flat_bucket(gcs_emulator) -> str:
    name = f"listing-{uuid.uuid4().hex[:10]}"
    names = [f"flat/img_{i:05d}.JPEG" for i in range(N_FLAT)] + TRICKY + OUTSIDE
    fill_bucket(gcs_emulator, name, names)
    return name


@pytest.mark.parametrize("workers", [2, 5, 8])
def test_parallel_listing_equals_sequential(gcs_emulator, flat_bucket: str, workers: int) -> None:
    client = _client(gcs_emulator.url)
    seq = _sequential(client, flat_bucket, "flat/")
    assert len(seq) == N_FLAT + len(TRICKY)
    stats = ListStats()
    par = list_prefix(client, flat_bucket, "flat/", workers=workers, page_size=300, stats=stats)
    assert par == seq  # same names, sizes, generations, same order
    assert stats.splits > 0 and stats.objects == len(seq)


def test_ranges_split_exactly_on_names_lose_and_repeat_nothing(gcs_emulator, flat_bucket: str) -> None:
    client = _client(gcs_emulator.url)
    seq = _sequential(client, flat_bucket, "flat/")
    names = [o.name for o in seq]
    cuts = [names[1], names[500], names[501], "flat/a10", "flat/img_", "flat/é"]  # starts/ends on existing names
    bounds = sorted(set(cuts))
    tasks = [ListTask("flat/", end=bounds[0])]
    tasks += [ListTask("flat/", start=a, end=b) for a, b in zip(bounds, bounds[1:], strict=False)]
    tasks.append(ListTask("flat/", start=bounds[-1]))
    parts = list_ranges(client, flat_bucket, tasks, workers=4, page_size=200)
    assert [o for part in parts for o in part] == seq
    for task, part in zip(tasks, parts, strict=True):
        assert all((task.start is None or o.name >= task.start) and (task.end is None or o.name < task.end)
                   for o in part)


def test_build_index_flat_and_folders_match_the_old_path(gcs_emulator) -> None:
    bucket = f"listing-{uuid.uuid4().hex[:10]}"
    names = [f"train/c{c}/img_{i:04d}.JPEG" for c in range(3) for i in range(400 if c == 1 else 30)]
    names += [f"val/v_{i:05d}.JPEG" for i in range(1200)]
    fill_bucket(gcs_emulator, bucket, names)
    old = build_index(f"gs://{bucket}/train", endpoint=gcs_emulator.url, credentials="anonymous",
                      progress=False, split_ranges=False, workers=4)
    new = build_index(f"gs://{bucket}/train", endpoint=gcs_emulator.url, credentials="anonymous",
                      progress=False, workers=4)
    assert new.names() == old.names() and new.labels.tolist() == old.labels.tolist()
    assert new.folders == old.folders == [f"train/c{c}/" for c in range(3)]
    labels = {f"v_{i:05d}": f"c{i % 3}" for i in range(1200)}
    old = build_index(f"gs://{bucket}/val", labels=labels, endpoint=gcs_emulator.url, credentials="anonymous",
                      progress=False, split_ranges=False)
    new = build_index(f"gs://{bucket}/val", labels=labels, endpoint=gcs_emulator.url, credentials="anonymous",
                      progress=False, workers=4)
    assert len(new) == 1200 and new.names() == old.names() and new.labels.tolist() == old.labels.tolist()
    assert new.sizes.tolist() == old.sizes.tolist() and new.generations.tolist() == old.generations.tolist()


def test_a_503_on_a_page_is_retried_and_a_persistent_one_names_the_prefix(gcs_emulator, flat_bucket) -> None:
    with FaultProxy(gcs_emulator.url) as proxy:
        seq = _sequential(_client(gcs_emulator.url), flat_bucket, "flat/")
        proxy.add_fault("status", count=3, status=503, match="startOffset")
        par = list_prefix(_client(proxy.url), flat_bucket, "flat/", workers=4, page_size=500)
        assert par == seq
        assert proxy.stats["status_503"] == 3
        proxy.add_fault("status", count=10_000, status=503, match="flat")
        with pytest.raises(FetchError, match=f"HTTP 503 listing gs://{flat_bucket}/flat/ ") as e:
            list_prefix(_client(proxy.url, attempts=2), flat_bucket, "flat/", workers=3)
        assert e.value.bucket == flat_bucket
