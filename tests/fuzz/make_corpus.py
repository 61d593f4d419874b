"""Writes the seed corpora under tests/fuzz/corpus/<harness>/ (committed; rerun to regenerate).

    python tests/fuzz/make_corpus.py

decode: a 12-byte parameter prefix (see harnesses/decode_fuzzer.cc) + small JPEGs from tests/support/images.py:
baseline, progressive, grayscale, CMYK, 4:4:4, restart markers, optimized Huffman, truncated, a bomb header.
tar: small WebDataset shards as hivedata packs them (PAX headers), a GNU long name, a truncated one, one whose
members span scan_tar's windows.
shard_index: ShardIndex.to_bytes() with and without crcs. labels: '<file> <wnid>' lines, Kaggle CSV, devkit
ground truth. listing: GCS JSON listing bodies. corpus/decode also holds inputs libFuzzer found that add
coverage, named by their sha1:
    build/fuzz/decode_fuzzer -merge=1 <new dir> tests/fuzz/corpus/decode build/fuzz/corpus/decode
"""

from __future__ import annotations

import io
import json
import struct
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.images import huge_header, jpeg, natural_image  # noqa: E402

OUT = Path(__file__).resolve().parent / "corpus"


def prefix(out_h: int, out_w: int, flags: int, seed: int, mp: int = 3) -> bytes:
    return bytes([out_h - 1, out_w - 1, flags]) + struct.pack("<Q", seed) + bytes([mp])


def decode_seeds() -> dict[str, bytes]:
    small = natural_image(48, 40, 1)
    odd = natural_image(37, 23, 2)
    base = jpeg(small)
    seeds = {
        "baseline.jpg": jpeg(small),
        "progressive.jpg": jpeg(small, progressive=True),
        "gray.jpg": jpeg(small.convert("L")),
        "cmyk.jpg": jpeg(small.convert("CMYK")),
        "444_odd.jpg": jpeg(odd, subsampling=0),
        "420_odd_progressive.jpg": jpeg(odd, subsampling=2, progressive=True),
        "restart.jpg": _restart(small),
        "optimized.jpg": jpeg(small, optimize=True, quality=50),
        "truncated.jpg": base[: len(base) * 3 // 4],
        "bomb_header.jpg": huge_header(base, 20000, 20000),
        "big_scale.jpg": jpeg(natural_image(400, 300, 3), quality=30),
    }
    out = {}
    for i, (name, data) in enumerate(sorted(seeds.items())):
        out[name] = prefix(1 + (i * 13) % 64, 1 + (i * 29) % 64, i % 8, 1000 + i) + data
    return out


def _restart(img) -> bytes:
    """A baseline JPEG with a DRI segment (restart interval 1 MCU row) via Pillow's libjpeg options."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, restart_marker_rows=1)
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_seeds() -> dict[str, bytes]:
    img = jpeg(natural_image(16, 16, 4), quality=40)
    pax = tar_bytes([("n01440764/a.jpg", img), ("n01440764/a.cls", b"0"), ("x/b.jpg", img), ("x/b.cls", b"7")])
    return {
        "pax.tar": pax,
        "gnu_longname.tar": tar_bytes([("d" * 120 + "/k.jpg", b"\xff\xd8" + bytes(30)), ("d" * 120 + "/k.cls", b"1")],
                                      tarfile.GNU_FORMAT),
        "ustar.tar": tar_bytes([("s/c.jpg", bytes(700)), ("s/c.cls", b"3")], tarfile.USTAR_FORMAT),
        "truncated.tar": pax[:1536],
        "empty.tar": bytes(1024),
        # members that span the 1536-byte windows the scan_tar check uses, one jumped over, a PAX long name
        "windows.tar": tar_bytes([("w/" + "p" * 110 + ".jpg", img + bytes(1600)), ("w/" + "p" * 110 + ".cls", b"2"),
                                  ("w/e.jpg", b""), ("w/e.cls", b"4"), ("w/f.jpg", bytes(3000)), ("w/f.cls", b"5")]),
    }


def shard_index_seeds() -> dict[str, bytes]:
    from hivedata.sources.shards import ShardIndex

    samples = [(0, 1024, 700, 0, "n01440764/a"), (0, 2560, 900, 1, "x/b"), (1, 512, 10, 0, "c")]
    a = ShardIndex.build("bkt", "p/", ["n01440764", "x"], ["p/s-000.tar", "p/s-001.tar"], [10240, 4096], [5, 0],
                         samples)
    b = ShardIndex.build("bkt", "p/", ["n01440764", "x"], ["p/s-000.tar", "p/s-001.tar"], [10240, 4096], [5, 0],
                         samples, crcs=[1, 2**32 - 1, -1])
    empty = ShardIndex.build("bkt", "", [], [], [], [], [])
    return {"plain.npz": a.to_bytes(), "crcs.npz": b.to_bytes(), "empty.npz": empty.to_bytes()}


def labels_seeds() -> dict[str, bytes]:
    return {
        "lines.txt": b"ILSVRC2012_val_00000001.JPEG n01751748\nILSVRC2012_val_00000002.JPEG n09193705\n",
        "kaggle.csv": b"ImageId,PredictionString\nILSVRC2012_val_00008726,n02119789 255 142 454 329\n"
                      b"ILSVRC2012_val_00000001,n01751748 1 2 3 4 n01751748 5 6 7 8\n",
        "ground_truth.txt": b"490\n361\n171\n822\n\n",
        "bad_line.txt": b"a.JPEG n01 extra\n",
    }


def listing_seeds() -> dict[str, bytes]:
    page = {"items": [{"name": "a/b.JPEG", "size": "123", "generation": "1700000000000000"}],
            "prefixes": ["a/c/"], "nextPageToken": ""}
    return {
        "page.json": json.dumps(page).encode(),
        "empty.json": b"{}",
        "prefixes.json": json.dumps({"prefixes": ["x/", "y/"]}).encode(),
    }


def main() -> None:
    for harness, seeds in [("decode", decode_seeds()), ("tar", tar_seeds()), ("shard_index", shard_index_seeds()),
                           ("labels", labels_seeds()), ("listing", listing_seeds())]:
        d = OUT / harness  # files named by their sha1 are libFuzzer finds (-merge=1): kept
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"corpus: {total} bytes under {OUT}")


if __name__ == "__main__":
    main()
