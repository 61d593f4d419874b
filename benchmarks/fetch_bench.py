"""Objects/s, MB/s and client CPU per 1,000 objects: the native engine vs a 16-thread google-cloud-storage pool.

By default it starts the embedded emulator and uploads generated objects (~110 KB mean, ImageNet-like sizes);
`--bucket B --prefix P` measures an existing bucket instead (real GCS, or the emulator STORAGE_EMULATOR_HOST
names). Both engines read the same objects in the same run; each is measured `--repeats` times and the
median run is reported.

JSON schema (--json PATH):
    {
      "objects": int, "mean_object_bytes": float, "endpoint": str, "repeats": int,
      "engines": [
        {"engine": "native" | "gcs_pool", "objects_per_s": float, "mb_per_s": float,
         "cpu_s_per_1000": float,   # client process CPU seconds (all threads) per 1,000 objects
         "wall_s": float, "cpu_s": float, "retries": int | null}
      ],
      "ratio": {"objects_per_s": float, "cpu_per_object": float}   # native / gcs_pool
    }
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivedata.gcs.fetch import Fetcher  # noqa: E402
from hivedata.sources.prefix import build_index  # noqa: E402
from hivedata.tools.emulator import Emulator  # noqa: E402


def generate(em: Emulator, bucket: str, n: int, seed: int) -> None:
    """Uploads n objects with ImageNet-like sizes (log-normal, mean ~110 KB)."""
    em.create_bucket(bucket)
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.lognormal(np.log(95_000), 0.55, n), 8_000, 1_500_000).astype(int)
    payload = rng.integers(0, 256, int(sizes.max()), dtype=np.uint8).tobytes()

    def up(i: int) -> None:
        c = i % 100
        em.upload(bucket, f"bench/n{c:08d}/n{c:08d}_{i}.JPEG", payload[i % 997:][: sizes[i]].ljust(sizes[i], b"\0"))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(up, range(n)))


def run_native(bucket: str, names: list[str], sizes: np.ndarray, in_flight: int) -> dict:
    """Reads every object with the native engine into reused arenas of 256 objects."""
    with Fetcher(bucket, max_in_flight=in_flight) as f:
        f.fetch_batch(names[:64], sizes[:64])  # warm the connection pool
        base = f.stats()["retries"]
        arena = np.empty(int(sizes.max()) * 256, dtype=np.uint8)
        c0, t0 = time.process_time(), time.perf_counter()
        for s in range(0, len(names), 256):
            f.fetch_batch(names[s:s + 256], sizes[s:s + 256], arena=arena)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        retries = f.stats()["retries"] - base
    return {"engine": "native", "wall_s": wall, "cpu_s": cpu, "retries": retries}


def run_gcs_pool(bucket: str, names: list[str], threads: int) -> dict:
    """What the original script did: one blob.download_as_bytes() per object from a thread pool."""
    from google.cloud import storage

    client = storage.Client()
    b = client.bucket(bucket)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda n: b.blob(n).download_as_bytes(), names[:64]))  # warm up
        c0, t0 = time.process_time(), time.perf_counter()
        total = sum(map(len, pool.map(lambda n: b.blob(n).download_as_bytes(), names)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert total > 0
    return {"engine": "gcs_pool", "wall_s": wall, "cpu_s": cpu, "retries": None}


def summarise(runs: list[dict], n: int, nbytes: int) -> dict:
    """Median run by wall time, with derived rates."""
    r = dict(sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2])
    r["objects_per_s"] = n / r["wall_s"]
    r["mb_per_s"] = nbytes / r["wall_s"] / 1e6
    r["cpu_s_per_1000"] = r["cpu_s"] / n * 1000
    r["cpu_cores"] = r["cpu_s"] / r["wall_s"]
    return r


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bucket", help="existing bucket (default: embedded emulator with generated data)")
    ap.add_argument("--prefix", default="", help="object prefix in --bucket")
    ap.add_argument("--objects", type=int, default=3000, help="objects to read per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=64, help="native transfers in flight")
    ap.add_argument("--threads", type=int, default=16, help="google-cloud-storage pool threads")
    ap.add_argument("--engines", default="native,gcs_pool")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    em = None
    bucket, prefix = args.bucket, args.prefix
    if bucket is None:
        em = Emulator().start()
        bucket, prefix = "hivedata-bench", "bench/"
        print(f"generating {args.objects} objects in the embedded emulator ...", flush=True)
        generate(em, bucket, args.objects, seed=0)
    try:
        idx = build_index(f"gs://{bucket}/{prefix}", progress=False, extensions=None)
        n = min(args.objects, len(idx))
        names, sizes = idx.names()[:n], idx.sizes[:n]
        nbytes = int(sizes.sum())
        results = []
        for engine in args.engines.split(","):
            runs = []
            for _ in range(args.repeats):
                runs.append(run_native(bucket, names, sizes, args.in_flight) if engine == "native"
                            else run_gcs_pool(bucket, names, args.threads))
            results.append(summarise(runs, n, nbytes))
    finally:
        if em:
            em.stop()

    endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com") if em is None else "emulator"
    print(f"\n{n} objects, mean {nbytes / n / 1e3:.0f} KB, median of {args.repeats} runs, endpoint: {endpoint}")
    print(f"{'engine':<10} {'objects/s':>10} {'MB/s':>8} {'CPU s/1000':>11} {'cores':>6} {'retries':>8}")
    for r in results:
        print(f"{r['engine']:<10} {r['objects_per_s']:>10.0f} {r['mb_per_s']:>8.1f} {r['cpu_s_per_1000']:>11.3f} "
              f"{r['cpu_cores']:>6.2f} {str(r['retries']):>8}")
    out = {"objects": n, "mean_object_bytes": nbytes / n, "endpoint": endpoint, "repeats": args.repeats,
           "engines": results}
    by = {r["engine"]: r for r in results}
    if "native" in by and "gcs_pool" in by:
        out["ratio"] = {"objects_per_s": by["native"]["objects_per_s"] / by["gcs_pool"]["objects_per_s"],
                        "cpu_per_object": by["native"]["cpu_s_per_1000"] / by["gcs_pool"]["cpu_s_per_1000"]}
        print(f"native vs gcs_pool: {out['ratio']['objects_per_s']:.2f}x objects/s, "
              f"{out['ratio']['cpu_per_object']:.3f}x CPU per object")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
