"""Images/s of the loader backends, streaming from the bucket and from memory, against the original script's way.

backends: native (C++ decode), pillow (Pillow/Pillow-SIMD threads), dali (NVIDIA DALI), and `baseline`:
what the original peer script did — a 16-thread pool of google-cloud-storage downloads, PIL decode,
RandomResizedCrop + flip, ToTensor + Normalize (written out here, torchvision is not needed), torch.stack.
All run the training transform at --size on the same objects in the same run. By default it generates
ImageNet-like data (~110 KB JPEGs) in the embedded emulator; --bucket B --prefix P reads an existing
bucket in the ILSVRC layout (real GCS, or the emulator STORAGE_EMULATOR_HOST names).
Sources: `bucket` (one GET per object), `memory` (read once into RAM), and packed tar shards read with
ranged GETs: `shards-global` (global shuffle: about one GET per sample) and `shards-block` (block
shuffle: a batch is a few runs of neighbours, coalesced into a few GETs). Generated data is packed into
--shard-size shards first; with --bucket, give --shards gs://.../train.index.npz (from `hivedata pack`).

JSON schema (--json PATH):
    {"device": str, "batch_size": int, "size": int, "seconds": float, "images": int, "mean_object_bytes": float,
     "cores": int, "pil": str,
     "results": [{"backend": str, "source": "bucket" | "memory" | "shards-global" | "shards-block",
                  "images_per_s": float,
                  "gets_per_epoch": float,     # GET requests per epoch of the whole dataset (0 from memory)
                  "cpu_cores": float,          # process CPU seconds per wall second while measuring
                  "batches": int, "rss_mb_start": float, "rss_mb_end": float,
                  "rss_mb_samples": [float]}],   # after warm-up, then every tenth of the measured time
     "ratios": {"native_vs_baseline": float, "native_vs_dali": float, "native_stream_vs_memory": float,
                "shards_global_vs_objects": float, "shards_block_vs_objects": float,
                "gets_objects_over_block": float}}
A PNG bar chart is written next to the JSON (or to --png).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivedata import Loader  # noqa: E402
from hivedata.sources.prefix import Index, load_index  # noqa: E402
from hivedata.tools.emulator import Emulator  # noqa: E402
from hivedata.tools.synthetic import SyntheticSpec  # noqa: E402
from hivedata.tools.synthetic_store import upload_dataset  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def rss_mb() -> float:
    """Resident set size now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def rrc_params(w: int, h: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params with scale (0.08, 1) and ratio (3/4, 4/3)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, w - cw), rng.randint(0, h - ch), cw, ch
    ratio = w / h
    if ratio < 3 / 4:
        cw, ch = w, round(w / (3 / 4))
    elif ratio > 4 / 3:
        ch, cw = h, round(h * 4 / 3)
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


class Baseline:
    """The original script's loader: per image, download_as_bytes in a 16-thread pool, then PIL transforms."""

    def __init__(self, index: Index, batch_size: int, size: int, memory: bool, threads: int = 16) -> None:
        from google.cloud import storage

        self.index, self.batch_size, self.size = index, batch_size, size
        self.bucket = storage.Client().bucket(index.bucket)
        self.pool = ThreadPoolExecutor(threads)
        self.names = index.names()
        self.cache = dict(zip(self.names, self.pool.map(self._download, self.names), strict=True)) if memory else None

    def _download(self, name: str) -> bytes:
        return self.bucket.blob(name).download_as_bytes()

    def _sample(self, i: int, seed: int) -> torch.Tensor:
        from PIL import Image

        name = self.names[i]
        data = self.cache[name] if self.cache is not None else self._download(name)
        img = Image.open(io.BytesIO(data)).convert("RGB")
        rng = random.Random(seed)
        x, y, w, h = rrc_params(img.width, img.height, rng)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(x, y, x + w, y + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div_(255)
        return t.sub_(MEAN).div_(STD)

    def __iter__(self):
        order = np.random.default_rng(0).permutation(len(self.names))
        for s in range(0, len(order) - self.batch_size + 1, self.batch_size):
            idx = order[s:s + self.batch_size]
            images = torch.stack(list(self.pool.map(self._sample, idx.tolist(), range(s, s + len(idx)))))
            yield images, torch.from_numpy(self.index.labels[idx].astype(np.int64))

    def gets_per_image(self) -> float:
        """One download per image when streaming, none from memory."""
        return 0.0 if self.cache is not None else 1.0

    def close(self) -> None:
        self.pool.shutdown()


class Counted(Loader):
    """A Loader that reports GET requests per image read (the pipeline's counter)."""

    def gets_per_image(self) -> float:
        """GETs the pipeline made per sample handed out (prefetched batches make it a slight overcount)."""
        st = self.stats()
        return st.get("gets", 0) / max(1, st["samples"])


def measure(make, seconds: float) -> dict:
    """Iterates epochs of make() for `seconds` after one warm-up batch; images/s and CPU cores used."""
    loader = make()
    rss0 = rss_mb()
    try:
        it = iter(loader)
        next(it)  # warm-up: connections, threads, arenas
        images = batches = 0
        rss_samples = [rss_mb()]
        c0, t0 = time.process_time(), time.perf_counter()
        next_sample = t0 + seconds / 10
        while time.perf_counter() - t0 < seconds:
            if time.perf_counter() >= next_sample:
                rss_samples.append(rss_mb())
                next_sample += seconds / 10
            try:
                x, _ = next(it)
            except StopIteration:
                it = iter(loader)
                continue
            images += x.shape[0]
            batches += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        gets_per_image = loader.gets_per_image()
    finally:
        loader.close()
    return {"images_per_s": images / wall, "cpu_cores": cpu / wall, "batches": batches,
            "gets_per_image": gets_per_image, "rss_mb_start": rss0,
            "rss_mb_end": rss_mb(), "rss_mb_samples": [round(x, 1) for x in rss_samples]}


def plot(results: list[dict], path: Path, title: str) -> None:
    """A horizontal bar chart of images/s (Pillow only, no matplotlib needed)."""
    from PIL import Image, ImageDraw

    w, row = 900, 44
    img = Image.new("RGB", (w, 60 + row * len(results)), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black")
    top = max(r["images_per_s"] for r in results) or 1
    for i, r in enumerate(results):
        y = 45 + i * row
        label = f"{r['backend']} ({r['source']})"
        d.text((10, y + 10), label, fill="black")
        bw = int((w - 330) * r["images_per_s"] / top)
        color = {"native": "#2a7", "pillow": "#37c", "dali": "#c73", "baseline": "#999"}.get(r["backend"], "#555")
        d.rectangle([200, y, 200 + bw, y + row - 12], fill=color)
        d.text((210 + bw, y + 10), f"{r['images_per_s']:.0f} img/s  {r['cpu_cores']:.2f} cores", fill="black")
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bucket", help="existing bucket, ILSVRC layout (default: embedded emulator, generated data)")
    ap.add_argument("--prefix", default="train", help="training prefix in --bucket")
    ap.add_argument("--backends", default="native,pillow,dali,baseline")
    ap.add_argument("--sources", default="bucket,memory,shards-global,shards-block",
                    help="bucket (per object), memory, shards-global, shards-block")
    ap.add_argument("--shards", help="shard index (gs://.../train.index.npz) for the shards-* sources")
    ap.add_argument("--shard-size", default="64MB", help="generated data: packed shard size")
    ap.add_argument("--block-size", type=int, default=64, help="shards-block: samples per run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured time per (backend, source)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=10, help="generated data: classes")
    ap.add_argument("--per-class", type=int, default=100, help="generated data: images per class")
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: all cores)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args(argv)

    em = None
    bucket, prefix = args.bucket, args.prefix
    if bucket is None:
        em = Emulator().start()
        bucket, prefix = "hivedata-loader-bench", "train"
        print(f"generating {args.classes * args.per_class} images in the embedded emulator ...", flush=True)
        upload_dataset(bucket, SyntheticSpec(num_classes=args.classes, train_per_class=args.per_class,
                                             val_per_class=0), progress=False)
    sources = args.sources.split(",")
    shards = args.shards
    if shards is None and em is not None and any(x.startswith("shards") for x in sources):
        from hivedata.common import parse_size
        from hivedata.tools.pack import pack

        print("packing it into tar shards ...", flush=True)
        pack(f"gs://{bucket}/{prefix}", f"gs://{bucket}/packed", shard_size=parse_size(args.shard_size),
             progress=False, log=lambda s: None)
        shards = f"gs://{bucket}/packed/{prefix.rstrip('/').rsplit('/', 1)[-1]}.index.npz"
    if shards is None:
        sources = [x for x in sources if not x.startswith("shards")]
    results = []
    try:
        index = load_index(f"gs://{bucket}/{prefix}", progress=False)
        for backend in args.backends.split(","):
            if backend == "dali":
                try:
                    import nvidia.dali  # noqa: F401
                except ImportError:
                    print("dali: not installed (pip install nvidia-dali-cuda130), skipped")
                    continue
            for source in sources:
                memory = source == "memory"
                if backend == "baseline":
                    if source.startswith("shards"):
                        continue

                    def make(memory=memory):
                        return Baseline(index, args.batch_size, args.size, memory)
                else:
                    def make(memory=memory, backend=backend, source=source):
                        src = shards if source.startswith("shards") else index
                        order = dict(shuffle="block", block_size=args.block_size) if source == "shards-block" else {}
                        return Counted(src, batch_size=args.batch_size, train=True, image_size=args.size,
                                       backend=backend, device=args.device, workers=args.workers, in_memory=memory,
                                       **order)
                r = {"backend": backend, "source": source} | measure(make, args.seconds)
                r["gets_per_epoch"] = r.pop("gets_per_image") * len(index)
                print(f"{backend:<9} {source:<13} {r['images_per_s']:8.0f} img/s  {r['cpu_cores']:.2f} cores  "
                      f"{r['gets_per_epoch']:8.0f} GETs/epoch  rss {r['rss_mb_start']:.0f}->{r['rss_mb_end']:.0f} MB",
                      flush=True)
                results.append(r)
    finally:
        if em:
            em.stop()

    import PIL

    by = {(r["backend"], r["source"]): r["images_per_s"] for r in results}
    ratios = {}
    if ("native", "bucket") in by and ("baseline", "bucket") in by:
        ratios["native_vs_baseline"] = by[("native", "bucket")] / by[("baseline", "bucket")]
    if ("native", "bucket") in by and ("dali", "bucket") in by:
        ratios["native_vs_dali"] = by[("native", "bucket")] / by[("dali", "bucket")]
    if ("native", "bucket") in by and ("native", "memory") in by:
        ratios["native_stream_vs_memory"] = by[("native", "bucket")] / by[("native", "memory")]
    for name, src in (("shards_global_vs_objects", "shards-global"), ("shards_block_vs_objects", "shards-block")):
        if ("native", "bucket") in by and ("native", src) in by:
            ratios[name] = by[("native", src)] / by[("native", "bucket")]
    gets = {(r["backend"], r["source"]): r["gets_per_epoch"] for r in results}
    if gets.get(("native", "shards-block")) and ("native", "bucket") in gets:
        ratios["gets_objects_over_block"] = gets[("native", "bucket")] / gets[("native", "shards-block")]
    out = {"device": args.device, "batch_size": args.batch_size, "size": args.size, "seconds": args.seconds,
           "images": len(index), "mean_object_bytes": float(index.sizes.mean()), "cores": os.cpu_count(),
           "pil": PIL.__version__, "results": results, "ratios": ratios}
    print(f"\n{len(index)} images, mean {out['mean_object_bytes'] / 1e3:.0f} KB, batch {args.batch_size}, "
          f"{args.size} px train transform, device {args.device}, {os.cpu_count()} cores")
    print(f"{'backend':<9} {'source':<13} {'images/s':>9} {'cores':>6} {'GETs/epoch':>10}")
    for r in results:
        print(f"{r['backend']:<9} {r['source']:<13} {r['images_per_s']:>9.0f} {r['cpu_cores']:>6.2f} "
              f"{r['gets_per_epoch']:>10.0f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    if png and results:
        plot(results, png, f"hivedata loader, {args.device}, batch {args.batch_size}, {args.size}px train")
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
