"""How long loading an ImageNet-sized index (1.28 M entries, generated names) from the local cache takes.

Prints save and load times, the file size, and the time to materialise all names. --json PATH writes
{"entries": int, "file_mb": float, "save_s": float, "load_s": float, "names_s": float}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivedata.gcs.json_client import ObjectMeta  # noqa: E402
from hivedata.sources.prefix import Index  # noqa: E402
from hivedata.tools.synthetic import wnids  # noqa: E402


def make_index(n: int, classes: int = 1000) -> Index:
    """An ILSVRC-shaped index with generated names, sizes and generations."""
    ids = wnids(classes)
    rng = np.random.default_rng(0)
    sizes = rng.integers(20_000, 300_000, n)
    entries = [ObjectMeta(f"train/{ids[i % classes]}/{ids[i % classes]}_{i}.JPEG", int(sizes[i]), 1_700_000_000_000 + i)
               for i in range(n)]
    labels = [i % classes for i in range(n)]
    return Index.from_entries("imagenet", "train/", ids, entries, labels, endpoint="https://storage.googleapis.com",
                              folders=[f"train/{c}/" for c in ids])


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_281_167)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    idx = make_index(args.entries)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.npz"
        t0 = time.perf_counter()
        idx.save(path)
        save_s = time.perf_counter() - t0
        loads = []
        for _ in range(3):
            t0 = time.perf_counter()
            back = Index.load(path)
            loads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        names = back.names()
        names_s = time.perf_counter() - t0
        assert len(names) == args.entries and back.name(args.entries - 1) == names[-1]
        out = {"entries": args.entries, "file_mb": path.stat().st_size / 1e6, "save_s": save_s,
               "load_s": min(loads), "names_s": names_s}
    print(f"{out['entries']} entries, {out['file_mb']:.1f} MB: save {out['save_s']:.2f} s, "
          f"load {out['load_s'] * 1000:.0f} ms (best of 3), all names as str {out['names_s'] * 1000:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
