"""Packed shards against a real fake-gcs-server: round trip, loader equivalence, resume, webdataset interop."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from hivedata.gcs.fetch import Fetcher
from hivedata.loader.loader import Loader
from hivedata.sources.prefix import load_index
from hivedata.sources.shards import load_shard_index
from hivedata.sources.webdataset import index_existing_shards, read_tar_members
from hivedata.tools.pack import pack
from hivedata.tools.synthetic import SyntheticSpec
from hivedata.tools.synthetic_store import upload_dataset

SPEC = SyntheticSpec(num_classes=3, train_per_class=10, val_per_class=0, seed=11, min_short_side=48,
                     max_short_side=96, special_fraction=0.2)
SHARD = "64KiB"


@pytest.fixture(scope="module")
def dataset(gcs_emulator) -> tuple[str, dict[str, bytes]]:
    name = "shards-src"
    gcs_emulator.create_bucket(name)
    upload_dataset(name, SPEC, train_prefix="train", val_prefix="val", progress=False)
    idx = load_index(f"gs://{name}/train")
    with Fetcher(name) as f:
        originals = {n: bytes(f.read(n)) for n in idx.names()}
    return name, originals


@pytest.fixture(scope="module")
def packed(dataset, gcs_emulator):
    name, _ = dataset
    index = pack(f"gs://{name}/train", f"gs://{name}/packed", shard_size=64 * 1024, verify=5, progress=False,
                 log=lambda s: None, order="sorted")  # sample i of the shards is sample i of the listing
    return index


def test_round_trip_is_byte_identical_with_the_same_labels(dataset, packed):
    name, originals = dataset
    per_object = load_index(f"gs://{name}/train")
    assert len(packed.shard_names) > 3  # small shards: several of them
    assert all(n.startswith("packed/train-") and n.endswith(".tar") for n in packed.shard_names)
    loaded = load_shard_index(f"gs://{name}/packed/train.index.npz")
    assert len(loaded) == len(packed) == len(per_object)
    assert loaded.classes == per_object.classes
    assert loaded.labels.tolist() == per_object.labels.tolist()
    with Fetcher(name) as f:
        for i in range(len(loaded)):
            got = f.read(loaded.name(i), int(loaded.starts[i]), int(loaded.sizes[i]))
            want = originals[per_object.name(i)]
            assert got == want, loaded.key(i)
            assert per_object.name(i).startswith(f"train/{loaded.key(i)}")


def test_loader_over_shards_equals_loader_over_objects(dataset, packed):
    name, _ = dataset
    kw = dict(batch_size=8, train=False, image_size=32, backend="native", shuffle=False, drop_last=False, workers=1)
    with Loader(f"gs://{name}/train", **kw) as a, Loader(f"gs://{name}/packed/train.index.npz", **kw) as b:
        batches_a, batches_b = list(a), list(b)
        assert b.stats()["skipped"] == a.stats()["skipped"]
    assert len(batches_a) == len(batches_b) > 1
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_training_transform_and_resume_over_shards(dataset, packed):
    kw = dict(batch_size=4, train=True, image_size=32, backend="native", seed=3, workers=1)
    with Loader(packed, **kw) as full:
        want = [y for _, y in full]
    with Loader(packed, **kw) as part:
        it = iter(part)
        next(it), next(it)
        state = part.state_dict()
        it.close()
    with Loader(packed, **kw) as resumed:
        resumed.load_state_dict(state)
        rest = [y for _, y in resumed]
    assert len(rest) == len(want) - 2 and all(torch.equal(a, b) for a, b in zip(rest, want[2:], strict=True))


def test_default_order_is_random_and_a_different_plan_is_refused(dataset, tmp_path):
    name, originals = dataset
    out = tmp_path / "random"
    index = pack(f"gs://{name}/train", str(out), shard_size=64 * 1024, progress=False, log=lambda s: None)
    per_object = load_index(f"gs://{name}/train")
    keys = [index.key(i) for i in range(len(index))]
    want = sorted(n[len("train/"):].rsplit(".", 1)[0] for n in per_object.names())
    assert sorted(keys) == want and keys != want  # every sample once, not class by class
    first_shard = index.labels[index.shard == 0]
    assert len(set(first_shard.tolist())) > 1  # a shard holds several classes
    again = pack(f"gs://{name}/train", str(out), shard_size=64 * 1024, progress=False, log=lambda s: None)
    assert again.starts.tolist() == index.starts.tolist()  # same seed: same plan, resumed
    before = {p.name: p.read_bytes() for p in out.glob("train-*.tar")}
    with pytest.raises(ValueError, match="another plan"):
        pack(f"gs://{name}/train", str(out), shard_size=64 * 1024, progress=False, log=lambda s: None, seed=1)
    assert {p.name: p.read_bytes() for p in out.glob("train-*.tar")} == before  # nothing overwritten
    cli = subprocess.run([sys.executable, "-m", "hivedata", "pack", f"gs://{name}/train", str(out), "--shard-size",
                          "64KiB", "--order", "sorted", "--quiet"], capture_output=True, text=True,
                         env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert cli.returncode == 2 and "another plan" in cli.stderr


def test_interrupted_pack_resumes(dataset, tmp_path):
    name, originals = dataset
    out = tmp_path / "shards"
    first = pack(f"gs://{name}/train", str(out), shard_size=64 * 1024, progress=False, log=lambda s: None)
    shards = sorted(out.glob("train-*.tar"))
    assert len(shards) == len(first.shard_names) > 2
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    shards[1].unlink()  # never written
    shards[2].write_bytes(shards[2].read_bytes()[:1000])  # cut short mid-write (no temp file protects a copy)
    messages = []
    second = pack(f"gs://{name}/train", str(out), shard_size=64 * 1024, progress=False, log=messages.append)
    assert f"({len(shards) - 2} already there)" in messages[0]
    for p in sorted(out.glob("train-*.tar")):
        assert p.read_bytes() == before[p.name][1]
        if p.name not in (shards[1].name, shards[2].name):
            assert p.stat().st_mtime_ns == before[p.name][0]  # skipped, not rewritten
    assert second.starts.tolist() == first.starts.tolist()


def test_webdataset_reads_our_shards(dataset, tmp_path):
    import webdataset as wds  # a dev dependency: a missing one fails the test, it does not skip it
    name, originals = dataset
    out = tmp_path / "wds"
    index = pack(f"gs://{name}/train", str(out), shard_size=64 * 1024, progress=False, log=lambda s: None)
    urls = [str(p) for p in sorted(out.glob("train-*.tar"))]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        seen[sample["__key__"]] = (sample["jpg"], int(sample["cls"]))
    per_object = load_index(f"gs://{name}/train")
    listed = {per_object.name(i)[len("train/"):].rsplit(".", 1)[0]: i for i in range(len(per_object))}
    assert len(seen) == len(index) == len(listed)
    for key, (data, label) in seen.items():
        i = listed[key]
        assert data == originals[per_object.name(i)] and label == int(per_object.labels[i])


def test_we_read_shards_webdataset_wrote(dataset, gcs_emulator, tmp_path):
    import webdataset as wds  # a dev dependency: a missing one fails the test, it does not skip it
    name, originals = dataset
    items = sorted(originals.items())
    written = []
    for s in range(2):
        path = tmp_path / f"theirs-{s:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for j, (_obj, data) in enumerate(items[s::2]):
                key = f"sample{s}_{j:04d}"
                sink.write({"__key__": key, "jpg": data, "cls": j % 7})
                written.append((key, data, j % 7))
        gcs_emulator.upload(name, f"theirs/{path.name}", path.read_bytes())
    with Fetcher(name) as f:
        index = index_existing_shards(name, "theirs/", workers=2)
        assert len(index) == len(written)
        by_key = {index.key(i): i for i in range(len(index))}
        for key, data, label in written:
            i = by_key[key]
            assert f.read(index.name(i), int(index.starts[i]), int(index.sizes[i])) == data
            assert int(index.labels[i]) == label
    kw = dict(batch_size=len(written), train=False, image_size=32, backend="native", shuffle=False, workers=1)
    with Loader(f"gs://{name}/theirs/*.tar", **kw) as ld:  # the loader indexes them itself (then from cache)
        (_, labels), = list(ld)
        assert ld.stats()["skipped"] == 0
        assert labels.tolist() == [label for label in ld.index.labels.tolist()]
        assert sorted(labels.tolist()) == sorted(w[2] for w in written)


def test_truncated_tar_names_the_shard():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("a.jpg")
        info.size = 5000
        t.addfile(info, io.BytesIO(os.urandom(5000)))
    data = buf.getvalue()[:3000]
    with pytest.raises(ValueError, match="gs://b/x.tar"):
        read_tar_members(lambda s, n: data[s:s + n], len(data), "gs://b/x.tar")


def test_pack_cli_refuses_a_missing_source(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hivedata", "pack", str(tmp_path / "nope"), str(tmp_path / "out"),
                        "--quiet"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and "nope" in r.stderr and "does not exist" in r.stderr
