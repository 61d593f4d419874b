"""The disk cache at scale: today's per-file cache against run files, in one run, with >= 1 M entries.

    python benchmarks/cache_bench.py                     # 1,000,000 entries of 1-4 KB in each cache
    python benchmarks/cache_bench.py --baseline-entries 300000 --dir /mnt/ssd/bench

Each cache is filled with synthetic entries keyed like shard byte ranges (max_bytes 1.5x the data, so the
fill evicts nothing but runs each cache's periodic scans), then measured: put rate (the run cache fed
as CacheWriter feeds it: put_many per run of run_bytes), files on disk, startup (a new instance in this
process until its first hit: the per-file cache has nothing to load, the run cache reads every run's
footer), hit latency (get_into of random keys, one at a time, page cache warm), and one eviction pass
with the files 10% over max_bytes (time; syscalls counted with `perf stat` when it can attach).
The per-file cache is benchmarks/baseline_file_cache.py, a verbatim copy of the cache this replaces.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import baseline_file_cache  # noqa: E402

from hivedata.loader.cache_writer import gathered_size  # noqa: E402
from hivedata.loader.disk_cache import DiskCache  # noqa: E402
from hivedata.sources.base import CacheKey  # noqa: E402

SYSCALLS = ("newfstatat", "statx", "unlink", "unlinkat", "getdents64", "openat", "utimensat")


class Entries:
    """N synthetic entries: keys like byte ranges of tar shards, payloads of 1-4 KB cut from one random buffer."""

    def __init__(self, n: int, lo: int, hi: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.buf = memoryview(rng.integers(0, 256, 16 << 20, dtype=np.uint8).tobytes())
        self.sizes = rng.integers(lo, hi + 1, n).tolist()
        self.offs = rng.integers(0, len(self.buf) - hi, n).tolist()
        self.keys = [CacheKey("imagenet-shards", f"train/shard-{i // 1000:06d}.tar", 1712345678901234,
                              (i % 1000) * 8192, self.sizes[i]) for i in range(n)]

    def __len__(self) -> int:
        return len(self.keys)

    def payload(self, i: int) -> memoryview:
        return self.buf[self.offs[i]:self.offs[i] + self.sizes[i]]

    def nbytes(self) -> int:
        return sum(self.sizes)


class SyscallCount:
    """Counts this process's syscalls while in the block, with `perf stat` on tracepoints (None if it cannot)."""

    def __enter__(self):
        self.counts: dict[str, int] | None = None
        self.out = tempfile.NamedTemporaryFile("r", suffix=".perf", delete=False)
        events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{s}" for s in SYSCALLS]
        try:
            self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-o", self.out.name, "-e", ",".join(events),
                                          "-p", str(os.getpid())], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attach
        except OSError:
            self.proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        counts = {}
        for line in open(self.out.name):
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].isdigit():
                name = parts[2]
                counts["all" if name.startswith("raw_syscalls") else name.split("sys_enter_")[-1]] = int(parts[0])
        os.unlink(self.out.name)
        self.counts = counts or None


def disk_files(root: Path) -> tuple[int, int]:
    """(files, bytes allocated on disk) under ROOT."""
    files = blocks = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    files += 1
                    blocks += e.stat(follow_symlinks=False).st_blocks
    return files, blocks * 512


def content_bytes(root: Path) -> int:
    """Bytes of the files under ROOT (what the caches count against max_bytes)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def fill(kind: str, cache, entries: Entries) -> float:
    """Puts every entry; seconds."""
    t0 = time.perf_counter()
    if kind == "per-file":
        for i, key in enumerate(entries.keys):
            cache.put(key, entries.payload(i))
    else:  # what CacheWriter does: gather entries, then one put_many per run of run_bytes
        run, size = [], 0
        for i, key in enumerate(entries.keys):
            run.append((key, entries.payload(i)))
            size += gathered_size(key, entries.payload(i))
            if size >= cache.run_bytes:
                cache.put_many(run)
                run, size = [], 0
        cache.put_many(run)
    return time.perf_counter() - t0


def measure(kind: str, cls, entries: Entries, root: Path, hits: int, log) -> dict:
    """Fills a cache of CLS at ROOT with ENTRIES and measures it; a row of the table."""
    n, data = len(entries), entries.nbytes()
    max_bytes = int(data * 1.5)
    log(f"{kind}: filling {n:,} entries ({data / 1e9:.2f} GB) ...")
    fill_s = fill(kind, cls(root, max_bytes), entries)
    files, on_disk = disk_files(root)
    log(f"{kind}: {n / fill_s:,.0f} puts/s, {files:,} files; opening it again ...")

    t0 = time.perf_counter()
    cache = cls(root, max_bytes)
    first = np.empty(entries.sizes[0], np.uint8)
    assert cache.get_into(entries.keys[0], first) and first.tobytes() == bytes(entries.payload(0))
    startup_s = time.perf_counter() - t0

    rng = np.random.default_rng(1)
    picks = rng.integers(0, n, hits).tolist()
    lat = np.empty(len(picks))
    outs = {s: np.empty(s, np.uint8) for s in set(entries.sizes[i] for i in picks)}
    wrong = 0
    for j, i in enumerate(picks):
        out = outs[entries.sizes[i]]
        t = time.perf_counter_ns()
        ok = cache.get_into(entries.keys[i], out)
        lat[j] = time.perf_counter_ns() - t
        wrong += not ok or (j % 64 == 0 and out.tobytes() != bytes(entries.payload(i)))
    assert wrong == 0, f"{kind}: {wrong} hits missing or wrong"
    log(f"{kind}: hits p50 {np.percentile(lat, 50) / 1e3:.1f} us; eviction pass ...")

    total = content_bytes(root)
    cache.max_bytes = int(total / 1.1)  # the files are 10% over
    with SyscallCount() as sc:
        t0 = time.perf_counter()
        after, evicted = cache._sweep()  # one eviction pass, as a put past the bound triggers it
        evict_s = time.perf_counter() - t0
    files_after, _ = disk_files(root)
    return dict(kind=kind, n=n, fill_s=fill_s, files=files, on_disk=on_disk, data=data, startup_s=startup_s,
                p50=np.percentile(lat, 50) / 1e3, p99=np.percentile(lat, 99) / 1e3, mean=lat.mean() / 1e3,
                evict_s=evict_s, evicted=evicted, total=total, after=after, files_after=files_after,
                syscalls=sc.counts, index_mb=(len(cache._index) * 16 / 1e6 if hasattr(cache, "_index") else 0.0))


def table(rows: list[dict]) -> str:
    """The results side by side, with new/old ratios."""
    old, new = rows
    def sc(r, names):
        return "n/a" if r["syscalls"] is None else f"{sum(r['syscalls'].get(s, 0) for s in names):,}"
    lines = [
        ("entries", f"{old['n']:,}", f"{new['n']:,}", ""),
        ("payload data", f"{old['data'] / 1e9:.2f} GB", f"{new['data'] / 1e9:.2f} GB", ""),
        ("put rate", f"{old['n'] / old['fill_s']:,.0f}/s", f"{new['n'] / new['fill_s']:,.0f}/s",
         f"{(new['n'] / new['fill_s']) / (old['n'] / old['fill_s']):.1f}x"),
        ("files on disk", f"{old['files']:,}", f"{new['files']:,}", f"1/{old['files'] / max(1, new['files']):,.0f}"),
        ("space on disk", f"{old['on_disk'] / 1e9:.2f} GB", f"{new['on_disk'] / 1e9:.2f} GB",
         f"{new['on_disk'] / old['on_disk']:.2f}x"),
        ("startup (open + 1st hit)", f"{old['startup_s'] * 1e3:.1f} ms", f"{new['startup_s'] * 1e3:.1f} ms",
         f"{new['startup_s'] / old['startup_s']:.0f}x"),
        ("index in memory", "none", f"{new['index_mb']:.1f} MB", ""),
        ("hit latency p50", f"{old['p50']:.1f} us", f"{new['p50']:.1f} us", f"{new['p50'] / old['p50']:.2f}x"),
        ("hit latency p99", f"{old['p99']:.1f} us", f"{new['p99']:.1f} us", f"{new['p99'] / old['p99']:.2f}x"),
        ("eviction pass (10% over)", f"{old['evict_s']:.3f} s", f"{new['evict_s']:.4f} s",
         f"1/{old['evict_s'] / new['evict_s']:,.0f}"),
        ("  files deleted", f"{old['evicted']:,}", f"{new['evicted']:,}", ""),
        ("  syscalls (all)", sc(old, ["all"]), sc(new, ["all"]), ""),
        ("  stat calls", sc(old, ["newfstatat", "statx"]), sc(new, ["newfstatat", "statx"]), ""),
        ("  unlink calls", sc(old, ["unlink", "unlinkat"]), sc(new, ["unlink", "unlinkat"]), ""),
        ("  getdents64 calls", sc(old, ["getdents64"]), sc(new, ["getdents64"]), ""),
    ]
    w = [max(len(r[c]) for r in lines + [("", "per-file (today)", "run files (new)", "new/old")]) for c in range(4)]
    head = ("", "per-file (today)", "run files (new)", "new/old")
    out = [" | ".join(h.ljust(w[c]) for c, h in enumerate(head)), "-+-".join("-" * x for x in w)]
    out += [" | ".join(v.ljust(w[c]) for c, v in enumerate(r)) for r in lines]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="entries in the run-file cache (>= 1 M)")
    ap.add_argument("--baseline-entries", type=int, default=None, help="entries in the per-file cache "
                    "(default: --entries; less when 1 M files take too long on this machine)")
    ap.add_argument("--min-size", type=int, default=1024)
    ap.add_argument("--max-size", type=int, default=4096)
    ap.add_argument("--hits", type=int, default=20_000, help="random hits timed in each cache")
    ap.add_argument("--dir", default=None, help="where the caches go (default: a temp dir); removed afterwards")
    args = ap.parse_args()
    n_old = args.baseline_entries or args.entries
    base = Path(tempfile.mkdtemp(prefix="cache-bench-", dir=args.dir))

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    rows = []
    try:
        for kind, cls, n in (("per-file", baseline_file_cache.DiskCache, n_old), ("runs", DiskCache, args.entries)):
            root = base / kind
            rows.append(measure(kind, cls, Entries(n, args.min_size, args.max_size), root, args.hits, log))
            shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"disk cache, {os.cpu_count()} CPUs, entries of {args.min_size}-{args.max_size} bytes, "
          f"{args.hits:,} random hits each, load average {os.getloadavg()[0]:.1f}")
    print(table(rows))
    if n_old != args.entries:
        print(f"(the per-file cache held {n_old:,} entries, the run-file cache {args.entries:,})")


if __name__ == "__main__":
    main()
