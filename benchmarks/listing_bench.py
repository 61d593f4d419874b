"""Listing at scale: objects listed per second, index build time and index memory, today's path vs range splitting.

Fills a filesystem-backed fake-gcs-server directly (tests/support/bulk_objects.py): bucket A holds class folders
(train/<wnid>/<wnid>_<i>.JPEG), bucket B one flat folder (val/ILSVRC2012_val_<n>.JPEG). In the same run it
builds each index with today's path (build_index(split_ranges=False): class folders one per worker, the flat
folder one page after another) and with range splitting, on loopback and, for the flat folder, through a 50 ms
delay line (tests/support/delay_line.py, a child process). It prints a table, the index's in-memory bytes
per sample (measured on the built index and on a generated 1.28 M-entry index) and the extrapolation to
1.28 M objects. --json PATH writes the figures.

Note: fake-gcs-server answers every page by walking the whole bucket directory and reading the attributes of
every object under the request's prefix, so on the emulator a page costs time in proportion to the bucket,
not to the page; loopback figures measure that server as much as the client.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.index_bench import make_index  # noqa: E402
from hivedata.sources.prefix import Index, build_index  # noqa: E402
from hivedata.tools.emulator import Emulator  # noqa: E402
from hivedata.tools.synthetic import wnids  # noqa: E402
from tests.support.bulk_objects import fill_bucket  # noqa: E402
from tests.support.delay_line import DelayLineProcess  # noqa: E402

IMAGENET = 1_281_167


def index_bytes(index: Index) -> int:
    """Bytes held by the index's arrays (names blob, offsets, sizes, generations, labels)."""
    return sum(a.nbytes for a in (index.names_blob, index.name_offsets, index.sizes, index.generations,
                                  index.labels))


def timed_build(url: str, endpoint: str, split: bool, workers: int, labels: dict | None = None) -> tuple[Index, float]:
    """Builds the index of url; returns it and the seconds it took."""
    t0 = time.perf_counter()
    idx = build_index(url, endpoint=endpoint, credentials="anonymous", progress=False, workers=workers,
                      split_ranges=split, labels=labels)
    return idx, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per_class", type=int, default=150)
    ap.add_argument("--flat", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rtt_ms", type=float, default=50.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows: list[tuple[str, str, int, float]] = []
    out: dict = {"classes": args.classes, "per_class": args.per_class, "flat": args.flat, "workers": args.workers,
                 "rtt_ms": args.rtt_ms}
    with Emulator() as em:
        t0 = time.perf_counter()
        ids = wnids(args.classes)
        fill_bucket(em, "bench-classes", [f"train/{w}/{w}_{i}.JPEG" for w in ids for i in range(args.per_class)])
        fill_bucket(em, "bench-flat", [f"val/ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, args.flat + 1)])
        n_classes, n_flat = args.classes * args.per_class, args.flat
        out["fill_s"] = time.perf_counter() - t0
        print(f"filled {n_classes + n_flat} objects in {out['fill_s']:.1f} s", flush=True)
        labels = {f"ILSVRC2012_val_{i:08d}": ids[i % len(ids)] for i in range(1, args.flat + 1)}
        results = {}
        for name, url, lab, n in (("class folders", "gs://bench-classes/train", None, n_classes),
                                  ("flat folder", "gs://bench-flat/val", labels, n_flat)):
            for split in (False, True):
                idx, s = timed_build(url, em.url, split, args.workers, lab)
                assert len(idx) == n, (name, len(idx), n)
                results[(name, split)] = idx
                rows.append((name + ", loopback", "range split" if split else "today", n, s))
                print(f"  {rows[-1]}", flush=True)
            assert results[(name, True)].names() == results[(name, False)].names()
        with DelayLineProcess("127.0.0.1", em.port, rtt_ms=args.rtt_ms) as line:
            for split in (False, True):
                idx, s = timed_build("gs://bench-flat/val", line.url, split, args.workers, labels)
                assert idx.names() == results[("flat folder", False)].names()
                rows.append((f"flat folder, {args.rtt_ms:.0f} ms rtt", "range split" if split else "today",
                             n_flat, s))
                print(f"  {rows[-1]}", flush=True)
        built = results[("class folders", True)]
    synthetic = make_index(IMAGENET)
    per_sample_built = index_bytes(built) / len(built)
    per_sample_imagenet = index_bytes(synthetic) / len(synthetic)
    print()
    print(f"{'listing':<28} {'path':<12} {'objects':>8} {'index build s':>14} {'objects/s':>10} {'ratio':>7} "
          f"{'1.28 M est. s':>14}")
    base = {}
    for what, path, n, s in rows:
        rate = n / s
        if path == "today":
            base[what] = rate
        ratio = rate / base[what]
        print(f"{what:<28} {path:<12} {n:>8} {s:>14.2f} {rate:>10.0f} {ratio:>6.2f}x {IMAGENET / rate:>14.0f}")
    print()
    print(f"index in memory: {per_sample_built:.1f} B/sample on the built class-folder index "
          f"({len(built)} samples); {per_sample_imagenet:.1f} B/sample, "
          f"{per_sample_imagenet * 1e6 / 2**20:.1f} MiB per million samples, "
          f"{index_bytes(synthetic) / 2**20:.1f} MiB for {IMAGENET} ImageNet-shaped names")
    print(f"workers: {args.workers} listing threads (machine: {__import__('os').cpu_count()} CPUs)")
    out["rows"] = [{"listing": w, "path": p, "objects": n, "seconds": s, "objects_per_s": n / s}
                   for w, p, n, s in rows]
    out["index_bytes_per_sample"] = per_sample_imagenet
    out["index_mib_per_million"] = per_sample_imagenet * 1e6 / 2**20
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
