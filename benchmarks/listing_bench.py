"""Listing at scale: objects listed per second, index build time, page requests and index memory, today's path
vs range splitting, against a GCS-like listing server and against fake-gcs-server.

GCS-like rows (the figures to quote): tests/support/listing_server.py, a threaded server in a child process
that answers objects.list (prefix, delimiter, startOffset/endOffset, maxResults, pageToken, field masks) with
bisect over sorted in-memory names, sleeping a fixed latency per page (--latency_ms, default 30 and 80 ms)
so that, as on GCS, a page costs the same whatever the bucket holds and concurrent pages overlap. One bucket
holds --classes class folders of --per_class objects (train/<wnid>/<wnid>_<i>.JPEG) and a flat folder of
--flat objects (val/ILSVRC2012_val_<n>.JPEG); 1000 x 150 + 50,000 = 200,000 by default. The server counts
the page requests (GETs) each build issues and how many came back empty.

Emulator rows: fake-gcs-server, filled directly (tests/support/bulk_objects.py), smaller (--emu_classes,
--emu_per_class, --emu_flat), on loopback and, for the flat folder, through a --rtt_ms delay line
(tests/support/delay_line.py). fake-gcs-server answers every page by walking its whole bucket directory and
reading the attributes of every object under the request's prefix, so a page costs time in proportion to
the bucket: splitting, which issues more requests, loses there; these rows measure that server.

In the same run each index is built with today's path (build_index(split_ranges=False): class folders one
per worker, a flat folder one page after another) and with range splitting, and the two indexes must hold
the same names. It prints a table (ratio = objects/s against today's path in the same setting), the index's
in-memory bytes per sample and the extrapolation to 1.28 M objects at the measured rate. --json PATH
writes the figures. --mode gcs-like or emulator runs one half.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.index_bench import make_index  # noqa: E402
from hivedata.sources.prefix import Index, build_index  # noqa: E402
from hivedata.tools.emulator import Emulator  # noqa: E402
from hivedata.tools.synthetic import wnids  # noqa: E402
from tests.support.bulk_objects import fill_bucket  # noqa: E402
from tests.support.delay_line import DelayLineProcess  # noqa: E402
from tests.support.listing_server import ListingServerProcess  # noqa: E402

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


class Row:
    """One index build: where, which layout, which path, how many objects, seconds, GETs (None: not counted)."""

    def __init__(self, setting: str, layout: str, path: str, objects: int, seconds: float,
                 gets: int | None = None, empty: int | None = None) -> None:
        self.setting, self.layout, self.path, self.objects, self.seconds = setting, layout, path, objects, seconds
        self.gets, self.empty = gets, empty

    @property
    def rate(self) -> float:
        """Objects listed per second."""
        return self.objects / self.seconds


def _names(ids: list[str], per_class: int, flat: int) -> tuple[list[str], list[str], dict[str, str]]:
    """Class-folder names, flat-folder names, and the flat folder's labels (stem -> class)."""
    train = [f"train/{w}/{w}_{i}.JPEG" for w in ids for i in range(per_class)]
    val = [f"val/ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, flat + 1)]
    labels = {f"ILSVRC2012_val_{i:08d}": ids[i % len(ids)] for i in range(1, flat + 1)}
    return train, val, labels


def run_gcs_like(args: argparse.Namespace, rows: list[Row], workdir: Path) -> None:
    """Today's path and range splitting against the GCS-like server, one latency after another."""
    ids = wnids(args.classes)
    train, val, labels = _names(ids, args.per_class, args.flat)
    for latency in args.latency_ms:
        setting = f"GCS-like server: {latency:g} ms per page"
        with ListingServerProcess({"bench": train + val}, latency_ms=latency, workdir=workdir) as sim:
            print(f"{setting}: {len(train) + len(val)} objects in one bucket", flush=True)
            for layout, url, lab, n in (("class folders", "gs://bench/train", None, len(train)),
                                        ("flat folder", "gs://bench/val", labels, len(val))):
                built = {}
                for split in (False, True):
                    sim.stats(reset=True)
                    idx, s = timed_build(url, sim.url, split, args.workers, lab)
                    st = sim.stats(reset=True)
                    if len(idx) != n:
                        raise AssertionError(f"{setting}, {layout}: {len(idx)} objects indexed, expected {n}")
                    built[split] = idx
                    rows.append(Row(setting, layout, "range split" if split else "today", n, s, st["requests"],
                                    st["empty_pages"]))
                    print(f"  {layout:<14} {rows[-1].path:<12} {s:7.2f} s  {st['requests']} GETs "
                          f"({st['empty_pages']} empty)", flush=True)
                if built[True].names() != built[False].names():
                    raise AssertionError(f"{setting}, {layout}: the two paths listed different names")


def run_emulator(args: argparse.Namespace, rows: list[Row], out: dict) -> Index:
    """Today's path and range splitting against fake-gcs-server, on loopback and through a delay line."""
    with Emulator() as em:
        t0 = time.perf_counter()
        ids = wnids(args.emu_classes)
        train, val, labels = _names(ids, args.emu_per_class, args.emu_flat)
        fill_bucket(em, "bench-classes", train)
        fill_bucket(em, "bench-flat", val)
        out["emulator_fill_s"] = time.perf_counter() - t0
        print(f"fake-gcs-server: filled {len(train) + len(val)} objects in {out['emulator_fill_s']:.1f} s", flush=True)
        results = {}
        settings = [("fake-gcs-server, loopback", em.url, ("class folders", "flat folder"))]
        with DelayLineProcess("127.0.0.1", em.port, rtt_ms=args.rtt_ms) as line:
            settings.append((f"fake-gcs-server, {args.rtt_ms:g} ms rtt", line.url, ("flat folder",)))
            for setting, endpoint, layouts in settings:
                for layout in layouts:
                    url, lab, n = (("gs://bench-classes/train", None, len(train)) if layout == "class folders"
                                   else ("gs://bench-flat/val", labels, len(val)))
                    for split in (False, True):
                        idx, s = timed_build(url, endpoint, split, args.workers, lab)
                        if len(idx) != n:
                            raise AssertionError(f"{setting}, {layout}: {len(idx)} objects indexed, expected {n}")
                        if (layout, split) in results and results[(layout, split)].names() != idx.names():
                            raise AssertionError(f"{setting}, {layout}: names differ from the loopback build")
                        results[(layout, split)] = idx
                        rows.append(Row(setting, layout, "range split" if split else "today", n, s))
                        print(f"  {setting}, {layout:<14} {rows[-1].path:<12} {s:7.2f} s", flush=True)
                    if results[(layout, True)].names() != results[(layout, False)].names():
                        raise AssertionError(f"{setting}, {layout}: the two paths listed different names")
    return results[("class folders", True)]


def print_table(rows: list[Row]) -> None:
    """The table: one row per build, ratio against today's path in the same setting and layout."""
    print()
    print(f"{'setting':<32} {'layout':<14} {'path':<12} {'objects':>8} {'build s':>8} {'objects/s':>10} "
          f"{'ratio':>7} {'GETs':>6} {'empty':>6} {'1.28 M est. s':>14}")
    base: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.path == "today":
            base[(r.setting, r.layout)] = r.rate
        ratio = r.rate / base[(r.setting, r.layout)]
        gets = "-" if r.gets is None else str(r.gets)
        empty = "-" if r.empty is None else str(r.empty)
        print(f"{r.setting:<32} {r.layout:<14} {r.path:<12} {r.objects:>8} {r.seconds:>8.2f} {r.rate:>10.0f} "
              f"{ratio:>6.2f}x {gets:>6} {empty:>6} {IMAGENET / r.rate:>14.1f}")


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("all", "gcs-like", "emulator"), default="all")
    ap.add_argument("--classes", type=int, default=1000, help="GCS-like server: class folders")
    ap.add_argument("--per_class", type=int, default=150, help="GCS-like server: objects per class folder")
    ap.add_argument("--flat", type=int, default=50_000, help="GCS-like server: objects in the flat folder")
    ap.add_argument("--latency_ms", type=lambda v: [float(x) for x in v.split(",")], default=[30.0, 80.0],
                    help="GCS-like server: latency per page, comma-separated (one run each)")
    ap.add_argument("--emu_classes", type=int, default=20)
    ap.add_argument("--emu_per_class", type=int, default=150)
    ap.add_argument("--emu_flat", type=int, default=5000)
    ap.add_argument("--rtt_ms", type=float, default=50.0, help="emulator: delay line round trip")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows: list[Row] = []
    out: dict = {k: v for k, v in vars(args).items() if k != "json"}
    t0 = time.perf_counter()
    built = None
    if args.mode in ("all", "gcs-like"):
        with tempfile.TemporaryDirectory(prefix="listing-bench-") as tmp:
            run_gcs_like(args, rows, Path(tmp))
    if args.mode in ("all", "emulator"):
        built = run_emulator(args, rows, out)
    print_table(rows)
    print()
    synthetic = make_index(IMAGENET)
    per_sample = index_bytes(synthetic) / len(synthetic)
    if built is not None:
        print(f"index in memory: {index_bytes(built) / len(built):.1f} B/sample on the built class-folder index "
              f"({len(built)} samples)")
    print(f"index in memory: {per_sample:.1f} B/sample, {per_sample * 1e6 / 2**20:.1f} MiB per million samples, "
          f"{index_bytes(synthetic) / 2**20:.1f} MiB for {IMAGENET} ImageNet-shaped names")
    print(f"workers: {args.workers} listing threads (machine: {os.cpu_count()} CPUs); "
          f"1.28 M est. s = {IMAGENET} / objects/s; total {time.perf_counter() - t0:.0f} s")
    out["rows"] = [{**vars(r), "objects_per_s": r.rate} for r in rows]
    out["index_bytes_per_sample"] = per_sample
    out["index_mib_per_million"] = per_sample * 1e6 / 2**20
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
