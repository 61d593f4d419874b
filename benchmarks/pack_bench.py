"""`python -m hivedata pack` throughput, emulator to emulator: today's pack next to the parallel one, in one run.

Fills a fake-gcs-server bucket with --images synthetic JPEGs (hivedata.tools.synthetic, ~110 KB mean;
--distinct different images repeated under --images names, as wan_bench does: generating 20,000 takes
minutes of CPU and pack never looks inside them), lists it once, then packs gs://bucket/train into
gs://bucket/out-<row> with --shard-size shards, once per (link, variant):

  link     loopback (straight to the emulator) and a user-space delay line (tests/support/delay_line.py, a
           child process) of --rtt_ms round trip between this process and the emulator, for every read and
           upload (STORAGE_EMULATOR_HOST points at it while those rows run)
  variant  today    pack.py of git revision --today-rev (default: the last commit before the parallel pack),
                    loaded from git and run as it was: a shard's samples fetched (64 in flight), the shard
                    uploaded by one thread while the next one is fetched
           serial   this pack with uploads=1, readers=1 (the same pipeline shape as today's)
           parallel this pack with --uploads and --readers (defaults 8 and 2)

Per row: seconds, this process's CPU seconds (all its threads, the native fetch engine's included; the
emulator and the delay line are other processes), images/s, MB/s of shards written, and the ratio to the
`today` row of the same link. With --repeats R each variant runs R times per link in alternating order and
the row is its median.
Each output prefix is deleted after its row (disk). Nothing else runs in parallel with a row; the machine's
load average at the start and end is printed since other work on it skews every row alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivedata.common import parse_size  # noqa: E402
from hivedata.sources.prefix import load_index  # noqa: E402
from hivedata.tools import pack as pack_now  # noqa: E402
from hivedata.tools.emulator import ENV_VAR, Emulator  # noqa: E402
from hivedata.tools.synthetic import SyntheticSpec, make_jpeg  # noqa: E402
from tests.support.delay_line import DelayLineProcess  # noqa: E402

BUCKET = "hivedata-pack-bench"
CLASSES = 100
TODAY_REV = "0a47d62"  # the last commit whose pack.py uploads one shard at a time


def today_module(rev: str) -> ModuleType:
    """hivedata/tools/pack.py as it was at git revision `rev`, importable beside today's."""
    root = Path(__file__).resolve().parents[1]
    code = subprocess.run(["git", "show", f"{rev}:hivedata/tools/pack.py"], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    name = f"hivedata_pack_{rev}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = module  # dataclasses look their module up while the code runs
    exec(compile(code, f"{rev}:hivedata/tools/pack.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def fill(em: Emulator, n: int, distinct: int) -> int:
    """Uploads n JPEGs under train/<wnid>/, cycling through `distinct` synthetic ones; returns their bytes."""
    spec = SyntheticSpec(num_classes=CLASSES, seed=0)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        images = list(pool.map(lambda i: make_jpeg(i % CLASSES, i, spec, "train"), range(min(n, distinct))))
    em.create_bucket(BUCKET)
    names = [f"train/n{i % CLASSES:08d}/n{i % CLASSES:08d}_{i}.JPEG" for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: em.upload(BUCKET, names[i], images[i % len(images)]), range(n)))
    return sum(len(images[i % len(images)]) for i in range(n))


def delete_prefix(prefix: str) -> None:
    """Deletes every object under gs://BUCKET/prefix."""
    from hivedata.gcs.storage import storage_client

    client = storage_client()
    blobs = list(client.list_blobs(BUCKET, prefix=prefix))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda b: b.delete(), blobs))


def run_row(variant: str, link: str, args: argparse.Namespace, today: ModuleType) -> dict:
    """Packs train/ into out-<link>-<variant>/ once; returns the row's figures."""
    dst = f"gs://{BUCKET}/out-{link}-{variant}"
    kw = dict(shard_size=args.shard_size, progress=False, log=lambda s: None)
    t0, c0 = time.perf_counter(), time.process_time()
    if variant == "today":
        index = today.pack(f"gs://{BUCKET}/train", dst, **kw)
    elif variant == "serial":
        index = pack_now.pack(f"gs://{BUCKET}/train", dst, uploads=1, readers=1, **kw)
    else:
        index = pack_now.pack(f"gs://{BUCKET}/train", dst, uploads=args.uploads, readers=args.readers, **kw)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    total = int(index.shard_sizes.sum())
    delete_prefix(f"out-{link}-{variant}/")
    return {"link": link, "variant": variant, "seconds": seconds, "cpu_s": cpu, "images_per_s": len(index) / seconds,
            "mb_per_s": total / 1e6 / seconds, "shards": len(index.shard_names), "images": len(index)}


def main(argv: list[str] | None = None) -> int:
    """Runs every (link, variant) row and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20_000, help="JPEGs in the source bucket")
    ap.add_argument("--distinct", type=int, default=400, help="different JPEGs among them")
    ap.add_argument("--shard-size", type=parse_size, default=parse_size("64MB"), help="shard size packed")
    ap.add_argument("--uploads", type=int, default=pack_now.DEFAULT_UPLOADS, help="parallel: shards uploaded at once")
    ap.add_argument("--readers", type=int, default=pack_now.DEFAULT_READERS, help="parallel: shards read at once")
    ap.add_argument("--rtt_ms", type=float, default=40.0, help="round trip of the delay line row (0: no such row)")
    ap.add_argument("--today-rev", default=TODAY_REV, help="git revision whose pack.py is `today`")
    ap.add_argument("--variants", default="today,serial,parallel", help="which variants, comma-separated")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds per link, the variants' order reversed every other round (a load that drifts "
                         "during the run then hits every variant alike); the table shows each variant's median")
    args = ap.parse_args(argv)
    today = today_module(args.today_rev)
    variants = args.variants.split(",")
    rows = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pack-bench-") as tmp, Emulator(data_dir=tmp) as em:
        os.environ["HIVEDATA_CACHE"] = str(Path(tmp) / "cache")  # the listing index: fresh, then warm
        t0 = time.perf_counter()
        nbytes = fill(em, args.images, args.distinct)
        print(f"filled gs://{BUCKET}/train: {args.images:,} JPEGs ({args.distinct} distinct), "
              f"{nbytes / 1e9:.2f} GB, {nbytes / args.images / 1e3:.0f} KB mean, in {time.perf_counter() - t0:.0f} s",
              flush=True)
        links = [("loopback", None)] + ([(f"rtt {args.rtt_ms:g} ms", args.rtt_ms)] if args.rtt_ms > 0 else [])
        for link, rtt in links:
            line = DelayLineProcess("127.0.0.1", em.port, rtt_ms=rtt).start() if rtt else None
            try:
                if line is not None:
                    os.environ[ENV_VAR] = line.url
                load_index(f"gs://{BUCKET}/train")  # listed once per link, outside the timed rows
                runs: dict[str, list[dict]] = {v: [] for v in variants}
                for k in range(args.repeats):
                    for variant in variants if k % 2 == 0 else variants[::-1]:
                        row = run_row(variant, link.replace(" ", ""), args, today)
                        runs[variant].append(row)
                        print(f"  {link:>12}  {variant:>8}: {row['seconds']:.1f} s, {row['cpu_s']:.1f} CPU s",
                              flush=True)
                for variant in variants:
                    row = sorted(runs[variant], key=lambda r: r["seconds"])[len(runs[variant]) // 2]  # median
                    rows.append(row | {"link": link})
            finally:
                os.environ[ENV_VAR] = em.url
                if line is not None:
                    line.close()
    load1 = os.getloadavg()
    print(f"\npack {args.images:,} images, {args.shard_size / 1e6:.0f} MB shards; parallel = uploads "
          f"{args.uploads}, readers {args.readers}; today = git {args.today_rev}; {os.cpu_count()} cores, "
          f"load {load0[0]:.1f} -> {load1[0]:.1f}")
    print(f"{'link':>12}  {'variant':>8}  {'shards':>6}  {'seconds':>7}  {'CPU s':>6}  {'images/s':>8}  {'MB/s':>7}  "
          f"{'vs today':>8}")
    for r in rows:
        base = next((b for b in rows if b["link"] == r["link"] and b["variant"] == "today"), None)
        ratio = f"{r['mb_per_s'] / base['mb_per_s']:.2f}x" if base else "-"
        print(f"{r['link']:>12}  {r['variant']:>8}  {r['shards']:>6}  {r['seconds']:>7.1f}  {r['cpu_s']:>6.1f}  "
              f"{r['images_per_s']:>8,.0f}  {r['mb_per_s']:>7.1f}  {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
