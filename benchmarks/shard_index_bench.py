"""Indexing existing WebDataset shards over a long link: the member-by-member header walk vs windowed reads and
the index shared through the bucket, in one run.

Fills a fake-gcs-server (memory backend) with --shards WebDataset tars of --samples samples each (<key>.jpg of
random bytes, JPEG-sized: uniform in [0.4, 1.6] x --mean_kb, and <key>.cls), puts a user-space delay line
(tests/support/delay_line.py, child process, --rtt_ms) between this process and the emulator, and indexes the
same shards four ways, each with a cold local cache:

  today          index_existing_shards(window=None, workers=8): one ~1 KB ranged GET per tar member
                 (read_tar_members, the code before windows), 8 shards at a time
  windows, 8     index_existing_shards(window=--window, workers=8): the windowed scan (with its crc32c check)
                 alone, as many shards at once as today, no shared index
  first peer     load_existing_shards(workers=--workers): windows, --workers shards at a time, each shard read
                 whole checked against GCS's crc32c (one metadata GET), then the index written to the bucket
  second peer    load_existing_shards with another empty local cache: the listing and the shared index

Per row: wall seconds, HTTP requests (ranged GETs through Fetcher.fetch, JSON API calls through requests),
requests per tar member, MB read, the mean seconds one shard took in its worker, the samples whose crc32c the
index holds (reads of them are verified), and the wall-time and request ratios against `today`. The indexes
are checked equal (keys, byte ranges, labels) before anything is printed. --json PATH writes the rows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivedata.gcs.fetch import Fetcher  # noqa: E402
from hivedata.sources import webdataset  # noqa: E402
from hivedata.sources.read_plan import NO_CRC  # noqa: E402
from hivedata.sources.tar_scan import DEFAULT_READ_THROUGH, DEFAULT_WINDOW  # noqa: E402
from hivedata.tools.emulator import Emulator  # noqa: E402
from tests.support.delay_line import DelayLineProcess  # noqa: E402

BUCKET = "hivedata-shard-index-bench"
PREFIX = "wds/"


def make_shard(s: int, samples: int, mean_kb: float) -> tuple[bytes, int]:
    """A WebDataset tar of `samples` random JPEG-sized images and their labels; (bytes, members)."""
    rng = np.random.default_rng(s)
    sizes = rng.integers(int(mean_kb * 400), int(mean_kb * 1600), samples)
    pool = rng.bytes(int(sizes.max()) + 4096)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for j, n in enumerate(sizes.tolist()):
            for name, data in ((f"{s:04d}_{j:05d}.jpg", pool[j % 4096:j % 4096 + n]),
                               (f"{s:04d}_{j:05d}.cls", str(j % 1000).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue(), 2 * samples


class Counts:
    """HTTP requests made by this process: ranged GETs through Fetcher.fetch, JSON API calls through requests."""

    def __init__(self) -> None:
        import requests.adapters

        self.gets = self.json = 0
        real_fetch, real_send = Fetcher.fetch, requests.adapters.HTTPAdapter.send
        counts = self

        def fetch(self, reqs, **kw):
            def each(rs):
                for r in rs:
                    counts.gets += 1
                    yield r
            return real_fetch(self, each(reqs), **kw)

        def send(self, request, **kw):
            counts.json += 1
            return real_send(self, request, **kw)

        Fetcher.fetch = fetch
        requests.adapters.HTTPAdapter.send = send

    def total(self) -> int:
        return self.gets + self.json


def run(label: str, fn, counts: Counts, members: int, shards: int) -> tuple[dict[str, Any], Any]:
    walked: list = []
    real = webdataset.walk_shards

    def recording(*a, **kw):
        out = real(*a, **kw)
        walked.extend(out)
        return out

    webdataset.walk_shards = recording
    g0, j0 = counts.gets, counts.json
    t0 = time.perf_counter()
    try:
        index = fn()
    finally:
        webdataset.walk_shards = real
    wall = time.perf_counter() - t0
    requests = counts.gets - g0 + counts.json - j0
    row = {"row": label, "wall_s": wall, "requests": requests, "ranged_gets": counts.gets - g0,
           "json_calls": counts.json - j0, "requests_per_member": requests / members,
           "mb_read": sum(w.bytes_read for w in walked) / 1e6, "shards_read": len(walked),
           "s_per_shard": float(np.mean([w.seconds for w in walked])) if walked else 0.0,
           "verified_shards": sum(w.verified for w in walked), "shards": shards,
           "samples_with_crc": 0 if index.crcs is None else int(np.count_nonzero(index.crcs != NO_CRC)),
           "samples": len(index)}
    return row, index


def same(a, b) -> bool:
    fields = ("shard_sizes", "shard_generations", "shard", "starts", "sizes", "labels", "key_offsets", "keys_blob")
    return a.shard_names == b.shard_names and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints its table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--samples", type=int, default=500, help="samples per shard (two tar members each)")
    ap.add_argument("--mean_kb", type=float, default=110.0, help="mean image size (KB)")
    ap.add_argument("--rtt_ms", type=float, default=30.0)
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    ap.add_argument("--read_through", type=int, default=DEFAULT_READ_THROUGH)
    ap.add_argument("--workers", type=int, default=16, help="shards read at once by the new code")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    counts = Counts()
    with Emulator(backend="memory") as em, tempfile.TemporaryDirectory() as tmp:
        em.create_bucket(BUCKET)
        t0 = time.perf_counter()
        members = total_bytes = 0
        for s in range(args.shards):
            data, m = make_shard(s, args.samples, args.mean_kb)
            em.upload(BUCKET, f"{PREFIX}shard-{s:06d}.tar", data)
            members, total_bytes = members + m, total_bytes + len(data)
        print(f"{args.shards} shards, {members} tar members, {total_bytes / 1e6:.0f} MB uploaded in "
              f"{time.perf_counter() - t0:.1f} s; rtt {args.rtt_ms:g} ms through the delay line; "
              f"window {args.window >> 10} KiB, read-through {args.read_through >> 10} KiB, {os.cpu_count()} cores",
              flush=True)
        with DelayLineProcess(em.host, em.port, rtt_ms=args.rtt_ms) as line:
            ep = line.url
            url = f"gs://{BUCKET}/{PREFIX}"
            plans = [
                ("today: header walk, 8 at once", lambda: webdataset.index_existing_shards(
                    BUCKET, PREFIX, endpoint=ep, window=None, workers=8)),
                ("windows, 8 at once", lambda: webdataset.index_existing_shards(
                    BUCKET, PREFIX, endpoint=ep, window=args.window, read_through=args.read_through, workers=8)),
                (f"first peer: windows, {args.workers} at once, shared", lambda: webdataset.load_existing_shards(
                    url, endpoint=ep, cache_dir=Path(tmp) / "a", window=args.window, read_through=args.read_through,
                    workers=args.workers)),
                ("second peer: shared index", lambda: webdataset.load_existing_shards(
                    url, endpoint=ep, cache_dir=Path(tmp) / "b")),
            ]
            rows, indexes = [], []
            for label, fn in plans:
                row, index = run(label, fn, counts, members, args.shards)
                rows.append(row)
                indexes.append(index)
                print(f"  {label}: {row['wall_s']:.2f} s, {row['requests']} requests", flush=True)
    if not all(same(indexes[0], ix) for ix in indexes[1:]):
        print("ERROR: the indexes differ", file=sys.stderr)
        return 1
    base = rows[0]
    for r in rows:
        r["time_ratio_vs_today"] = base["wall_s"] / r["wall_s"]
        r["request_ratio_vs_today"] = base["requests"] / max(r["requests"], 1)
    print()
    head = ("", "wall s", "requests", "req/member", "MB read", "s/shard", "samples with crc", "x faster",
            "x fewer req")
    print(f"| {' | '.join(head)} |")
    print(f"|{'|'.join(['---'] + ['---:'] * (len(head) - 1))}|")
    for r in rows:
        cells = [r["row"], f"{r['wall_s']:.2f}", str(r["requests"]), f"{r['requests_per_member']:.4f}",
                 f"{r['mb_read']:.0f}", f"{r['s_per_shard']:.2f}" if r["shards_read"] else "-",
                 f"{r['samples_with_crc']}/{r['samples']}", f"{r['time_ratio_vs_today']:.1f}",
                 f"{r['request_ratio_vs_today']:.0f}"]
        print(f"| {' | '.join(cells)} |")
    print(f"\nindexes identical (keys, byte ranges, labels) in all {len(rows)} rows: yes; "
          f"{len(indexes[0])} samples")
    if args.json:
        args.json.write_text(json.dumps({"shards": args.shards, "members": members, "bytes": total_bytes,
                                         "rtt_ms": args.rtt_ms, "window": args.window,
                                         "read_through": args.read_through, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
