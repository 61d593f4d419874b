"""hivedata.Loader against the real emulator: shapes, exactly-once, determinism, resume, bad samples,
backends, memory vs streaming, fork, interpreter exit, the DataLoader adapter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from hivedata import Loader
from hivedata.errors import BadImageError
from hivedata.sources.prefix import load_index
from hivedata.tools.synthetic import SyntheticSpec, make_jpeg, wnids
from tests.support.images import HOSTILE_BAD, hostile_set, jpeg, natural_image

ROOT = Path(__file__).resolve().parents[2]
SPEC = SyntheticSpec(num_classes=4, train_per_class=10, val_per_class=4, min_short_side=80, max_short_side=120)
SIZE = 64


@pytest.fixture(scope="module")
def dataset(gcs_emulator) -> str:
    """4 classes x 10 small generated JPEGs under train/, plus a bucket prefix of hostile objects."""
    bucket = "loader-data"
    gcs_emulator.create_bucket(bucket)
    ids = wnids(SPEC.num_classes)
    jobs = [(f"train/{ids[c]}/{ids[c]}_{i}.JPEG", c, i) for c in range(SPEC.num_classes)
            for i in range(SPEC.train_per_class)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda j: gcs_emulator.upload(bucket, j[0], make_jpeg(j[1], j[2], SPEC, "train")), jobs))
    for name, data in hostile_set().items():
        gcs_emulator.upload(bucket, f"hostile/n00000001/{name}", data)
    for i in range(6):
        gcs_emulator.upload(bucket, f"hostile/n00000002/good_{i}.JPEG", jpeg(natural_image(200, 150, i)))
    return bucket


def _loader(url: str, **kw) -> Loader:
    args = dict(batch_size=8, train=True, image_size=SIZE, workers=2) | kw
    return Loader(url, **args)


def test_shapes_dtypes_and_length(dataset):
    with _loader(f"gs://{dataset}/train") as ld:
        assert len(ld) == 40 // 8
        batches = list(ld)
    assert len(batches) == 5
    x, y = batches[0]
    assert x.shape == (8, 3, SIZE, SIZE) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (8,) and y.dtype == torch.int64
    assert -3 < float(x.mean()) < 3 and float(x.std()) > 0.1  # normalised, not blank


def test_uint8_and_channels_last(dataset):
    with _loader(f"gs://{dataset}/train", normalize=False, channels_last=True) as ld:
        x, _ = next(iter(ld))
    assert x.dtype == torch.uint8 and x.shape == (8, 3, SIZE, SIZE)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert int(x.max()) > 100


def test_epoch_is_exactly_once_without_drop_last(dataset):
    idx = load_index(f"gs://{dataset}/train")
    with _loader(idx, batch_size=6, drop_last=False) as ld:
        labels = torch.cat([y for _, y in ld]).tolist()
    assert Counter(labels) == Counter(idx.labels.tolist())
    with _loader(idx, batch_size=6, train=False) as ld:  # evaluation: in index order
        assert torch.cat([y for _, y in ld]).tolist() == idx.labels.tolist()


def test_same_seed_same_batches_other_seed_different(dataset):
    def first_two(seed):
        with _loader(f"gs://{dataset}/train", seed=seed) as ld:
            it = iter(ld)
            return [next(it) for _ in range(2)]

    a, b, c = first_two(3), first_two(3), first_two(4)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], c[0][0])


def test_epochs_advance_and_set_epoch_replays(dataset):
    with _loader(f"gs://{dataset}/train") as ld:
        e0 = [y.tolist() for _, y in ld]
        assert ld.epoch == 1
        e1 = [y.tolist() for _, y in ld]
        ld.set_epoch(0)
        again = [y.tolist() for _, y in ld]
    assert e0 != e1 and again == e0


def test_resume_mid_epoch_yields_exactly_the_rest(dataset):
    with _loader(f"gs://{dataset}/train", seed=9) as ld:
        ld.set_epoch(2)
        full = [(x.clone(), y.clone()) for x, y in ld]
    with _loader(f"gs://{dataset}/train", seed=9) as ld:
        ld.set_epoch(2)
        it = iter(ld)
        next(it), next(it)
        state = ld.state_dict()
        it.close()
    assert state["epoch"] == 2 and state["position"] == 2
    with _loader(f"gs://{dataset}/train", seed=9) as ld2:
        ld2.load_state_dict(state)
        rest = list(ld2)
    assert len(rest) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], rest, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    with _loader(f"gs://{dataset}/train", seed=8) as other, pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_hostile_samples_are_skipped_and_counted(dataset):
    idx = load_index(f"gs://{dataset}/hostile")
    with _loader(idx, batch_size=4, train=False, drop_last=False) as ld:
        labels = torch.cat([y for _, y in ld])
        st = ld.stats()
    assert len(labels) == len(idx)  # the epoch still yields every sample slot
    assert st["skipped"] == len(HOSTILE_BAD)
    skipped = " ".join(st["skipped_names"])
    for name in HOSTILE_BAD:
        assert name in skipped
    assert st["fallback_decoded"] == 1  # the PNG named .JPEG


def test_on_error_raise_names_the_object(dataset):
    with _loader(f"gs://{dataset}/hostile", batch_size=4, train=False, on_error="raise") as ld:
        with pytest.raises(BadImageError) as ei:
            list(ld)
    assert ei.value.object.startswith("hostile/n00000001/")


def test_on_error_callable_sees_each_bad_sample(dataset):
    seen = []
    with _loader(f"gs://{dataset}/hostile", batch_size=4, train=False, on_error=seen.append) as ld:
        list(ld)
    assert len(seen) == len(HOSTILE_BAD) and all(isinstance(e, BadImageError) for e in seen)


def test_missing_object_raises_unless_max_missing_allows_it(dataset, gcs_emulator):
    gcs_emulator.upload(dataset, "gone/n1/a.JPEG", jpeg(natural_image(100, 100, 1)))
    gcs_emulator.upload(dataset, "gone/n1/b.JPEG", jpeg(natural_image(100, 100, 2)))
    idx = load_index(f"gs://{dataset}/gone")
    idx.names_blob = idx.names_blob.copy()
    idx.names_blob[-6] = ord("z")  # "b.JPEG" -> "z.JPEG": not in the bucket
    with _loader(idx, batch_size=2, train=False) as ld, pytest.raises(FileNotFoundError, match="gone/n1/z.JPEG"):
        list(ld)
    with _loader(idx, batch_size=2, train=False, max_missing=1) as ld:
        (x, y), = list(ld)
        st = ld.stats()
        assert st["missing"] == 1 and st["skipped"] == 0 and torch.equal(x[0], x[1])


@pytest.mark.parametrize("backend", ["pillow", "dali"])
def test_backends_agree_on_shapes_dtypes_and_labels(dataset, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is installed by the test setup; absent only on other platforms")
    outs = {}
    for b in ("native", backend):
        with _loader(f"gs://{dataset}/train", backend=b, train=False, batch_size=8) as ld:
            outs[b] = list(ld)
    for (xa, ya), (xb, yb) in zip(outs["native"], outs[backend], strict=True):
        assert xa.shape == xb.shape and xa.dtype == xb.dtype
        assert torch.equal(ya, yb)
        # the same evaluation crop through other resamplers (DALI rounds the crop window its own way)
        assert float((xa - xb).abs().mean()) < (0.15 if backend == "pillow" else 0.35)


def test_memory_and_streaming_give_identical_batches(dataset):
    with _loader(f"gs://{dataset}/train", seed=1) as a, _loader(f"gs://{dataset}/train", seed=1, in_memory=True) as b:
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_stats_report_every_stage(dataset):
    with _loader(f"gs://{dataset}/train") as ld:
        list(ld)
        st = ld.stats()
    assert st["objects"] == 40 and st["bytes"] > 0 and st["decoded"] == 40
    assert st["fetch_latency_p99_s"] >= st["fetch_latency_p50_s"] > 0
    assert st["decode_s"] > 0 and st["batches"] == 5 and st["images_per_s"] > 0
    assert 0 < st["slot_occupancy"] <= 1 and st["skipped"] == 0 and st["skipped_names"] == []


def test_fork_after_iterating(dataset):
    with _loader(f"gs://{dataset}/train", train=False) as ld:
        expected = [y.tolist() for _, y in ld]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if [y.tolist() for _, y in ld] == expected else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert [y.tolist() for _, y in ld] == expected
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_interpreter_exit_while_the_loader_runs(dataset, gcs_emulator):
    code = f"""
        from hivedata import Loader
        ld = Loader("gs://{dataset}/train", batch_size=8, train=True, image_size=64, prefetch=4)
        it = iter(ld)
        next(it)
        print("leaving with batches in flight", flush=True)
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "leaving with batches in flight" in r.stdout


def test_dataloader_adapter_covers_the_epoch_with_workers(dataset):
    from torch.utils.data import DataLoader

    from hivedata.loader.torch_dataset import LoaderDataset

    ds = LoaderDataset(f"gs://{dataset}/train", batch_size=4, train=False, image_size=SIZE, workers=1)
    labels = torch.cat([y for _, y in DataLoader(ds, batch_size=None, num_workers=2)])
    idx = load_index(f"gs://{dataset}/train")
    assert sorted(labels.tolist()) == sorted(idx.labels.tolist())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_cuda_ring_matches_cpu(dataset, dtype, channels_last):
    with _loader(f"gs://{dataset}/train", train=False) as cpu, \
            _loader(f"gs://{dataset}/train", train=False, device="cuda", dtype=dtype, channels_last=channels_last,
                    prefetch=1) as gpu:
        for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
            assert xg.device.type == "cuda" and xg.dtype == dtype and yg.device.type == "cuda"
            assert xg.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            assert torch.equal(yc, yg.cpu())
            assert float((xc - xg.float().cpu()).abs().max()) < (0.05 if dtype == torch.bfloat16 else 1e-4)
