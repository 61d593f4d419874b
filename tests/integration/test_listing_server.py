"""The GCS-like listing server (tests/support/listing_server.py) answers objects.list as fake-gcs-server does.

The benchmark's GCS-like rows are only as honest as this server: the same queries (prefix, startOffset,
endOffset, maxResults, page tokens, delimiter) go to both, and the names, prefixes and page boundaries
must agree, except where the server's docstring says the emulator departs from GCS.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from hivedata.gcs.auth import TokenSource
from hivedata.gcs.json_client import GcsJsonClient
from hivedata.gcs.parallel_listing import ListStats, list_prefix
from hivedata.sources.prefix import list_tree
from tests.support.bulk_objects import fill_bucket
from tests.support.listing_server import ListingServer, ListingServerProcess

NAMES = sorted(
    [f"flat/img_{i:04d}.JPEG" for i in range(120)]
    + ["flat/a1", "flat/a10", "flat/a1x", "flat/é", "flat/éa", "flat/中文_1.jpg", "flat/\U0001f600.jpg", "flat/~",
       "flat/-", "flat/0", "flat/Z"]
    + [f"d/{c}/x_{i}" for c in ("k", "kk", "m", "n0", "é") for i in range(4)]
    + ["d/a1", "d/m1", "d/z", "d/x/y/z", "top1", "top2", "fla", "flat0", "flatter/x"])

PREFIXES = ["", "flat/", "flat/img_00", "flat/a1", "d/k", "nothing/"]
STARTS = [None, "flat/a10", "flat/img_0050", "flat/é", "d/m/x_2"]
ENDS = [None, "flat/img_0050.JPEG", "d/kk", "~"]


def _files_of(prefix: str) -> list[str | None]:
    """Offsets a delimited listing of prefix rolls up nowhere (where both servers agree): names of its files."""
    return [None] + [n for n in NAMES if n.startswith(prefix) and "/" not in n[len(prefix):]][:3] + ["zz"]


def _pages(url: str, bucket: str, **params) -> list[tuple[list[str], list[str]]]:
    """(item names, prefixes) of every page of one listing."""
    out, token = [], None
    for _ in range(1000):
        q = {k: v for k, v in params.items() if v is not None}
        if token:
            q["pageToken"] = token
        r = requests.get(f"{url}/storage/v1/b/{bucket}/o", params=q, timeout=30)
        assert r.status_code == 200, r.text
        doc = r.json()
        out.append(([it["name"] for it in doc.get("items", [])], doc.get("prefixes", [])))
        token = doc.get("nextPageToken")
        if not token:
            return out
    raise AssertionError("no last page")


@pytest.fixture(scope="module")
def both(gcs_emulator):
    bucket = f"sim-{uuid.uuid4().hex[:10]}"
    fill_bucket(gcs_emulator, bucket, NAMES)
    with ListingServer({bucket: NAMES}) as sim:
        yield gcs_emulator.url, sim, bucket


def test_offsets_prefixes_and_pages_agree_with_the_emulator(both) -> None:
    emu, sim, bucket = both
    queries = [{"prefix": prefix, "startOffset": start, "endOffset": end, "maxResults": size}
               for prefix in PREFIXES for start in STARTS for end in ENDS for size in (1000, 25)]
    with ThreadPoolExecutor(4) as pool:  # the emulator answers in parallel; the test takes less time
        wants = list(pool.map(lambda q: _pages(emu, bucket, **q), queries))
    for q, want in zip(queries, wants, strict=True):
        assert _pages(sim.url, bucket, **q) == want, q
    assert sum(bool(w[0][0]) for w in wants) > 40  # most queries return names


def test_delimiter_listings_agree_with_the_emulator(both) -> None:
    emu, sim, bucket = both
    for prefix in ["", "d/", "d/m/", "flat/", "d/x/"]:
        for start in _files_of(prefix):
            for end in _files_of(prefix)[2:]:
                q = {"prefix": prefix, "delimiter": "/", "startOffset": start, "endOffset": end}
                [(items, prefixes)] = _pages(emu, bucket, **q)
                assert _pages(sim.url, bucket, **q) == [(items, prefixes)], q
    [(items, prefixes)] = _pages(sim.url, bucket, prefix="d/", delimiter="/")
    assert items == ["d/a1", "d/m1", "d/z"] and prefixes == ["d/k/", "d/kk/", "d/m/", "d/n0/", "d/x/", "d/é/"]


def test_delimiter_pages_count_items_and_prefixes_together(both) -> None:
    """As GCS (the emulator counts only items): a page of 2 holds 2 entries, no prefix comes twice."""
    _, sim, bucket = both
    pages = _pages(sim.url, bucket, prefix="d/", delimiter="/", maxResults=2)
    assert all(len(i) + len(p) == 2 for i, p in pages[:-1])
    assert [n for i, _ in pages for n in i] == ["d/a1", "d/m1", "d/z"]
    assert [n for _, p in pages for n in p] == ["d/k/", "d/kk/", "d/m/", "d/n0/", "d/x/", "d/é/"]


def test_field_mask_is_honoured(both) -> None:
    _, sim, bucket = both
    fields = "items(name,size,generation),prefixes,nextPageToken"
    doc = requests.get(f"{sim.url}/storage/v1/b/{bucket}/o", params={"prefix": "d/", "fields": fields}).json()
    assert set(doc["items"][0]) == {"name", "size", "generation"}
    doc = requests.get(f"{sim.url}/storage/v1/b/{bucket}/o", params={"prefix": "d/"}).json()
    assert {"name", "size", "generation", "bucket", "contentType"} <= set(doc["items"][0])


def test_the_lister_reads_the_same_from_both(both) -> None:
    emu, sim, bucket = both
    for workers, page in ((1, 1000), (4, 9), (8, 5)):
        names = {}
        for url in (emu, sim.url):
            client = GcsJsonClient(url, TokenSource("anonymous"))
            stats = ListStats()
            names[url] = [o.name for o in list_prefix(client, bucket, "flat/", workers=workers, page_size=page,
                                                      stats=stats)]
            assert stats.objects == len(names[url])
        assert names[emu] == names[sim.url] == [n for n in NAMES if n.startswith("flat/")]
    for url in (emu, sim.url):
        folders, files, per_folder = list_tree(GcsJsonClient(url, TokenSource("anonymous")), bucket, "d/",
                                               workers=3, progress=False)
        assert folders == ["d/k/", "d/kk/", "d/m/", "d/n0/", "d/x/", "d/é/"]
        assert [f.name for f in files] == ["d/a1", "d/m1", "d/z"]
        assert [[o.name for o in objs] for objs in per_folder][0] == [f"d/k/x_{i}" for i in range(4)]


def test_requests_overlap_and_are_counted(tmp_path) -> None:
    """Concurrent requests sleep their latency at the same time (a threaded server), in a child process too."""
    with ListingServerProcess({"b": NAMES}, latency_ms=300, workdir=tmp_path) as sim:
        def one() -> None:
            assert requests.get(f"{sim.url}/storage/v1/b/b/o", params={"prefix": "nothing/"}, timeout=30).ok

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = sim.stats(reset=True)
        assert stats["requests"] == 6 and stats["empty_pages"] == 6 and stats["max_in_flight"] >= 3
        assert sim.stats()["requests"] == 0
        assert requests.get(f"{sim.url}/storage/v1/b/nope/o", timeout=30).status_code == 404
