"""Outages are loud: an object the loader cannot read (403, 404 through the fault proxy in front of the real
emulator) stops it, naming the object, unless max_missing budgets for it; bad images are still skipped."""

from __future__ import annotations

import logging

import pytest
import torch

from hivedata import Loader
from hivedata.loader.torch_dataset import LoaderDataset
from hivedata.sources.prefix import load_index
from hivedata.tools.pack import pack
from tests.support.fault_proxy import FaultProxy
from tests.support.images import jpeg, natural_image

PER_CLASS = 4
N = 2 * PER_CLASS
EVAL = dict(train=False, image_size=16, workers=1, drop_last=False, shuffle=False)


@pytest.fixture(scope="module")
def data(gcs_emulator) -> str:
    """train/: 2 classes x 4 small JPEGs; corrupt/: the same plus one truncated JPEG; packed/: train/ in one shard."""
    bucket = "outages"
    gcs_emulator.create_bucket(bucket)
    for c in range(2):
        for i in range(PER_CLASS):
            data = jpeg(natural_image(40, 32, 10 * c + i))
            gcs_emulator.upload(bucket, f"train/n0000000{c}/img_{i}.JPEG", data)
            gcs_emulator.upload(bucket, f"corrupt/n0000000{c}/img_{i}.JPEG", data)
    truncated = jpeg(natural_image(40, 32, 99))
    gcs_emulator.upload(bucket, "corrupt/n00000001/truncated.JPEG", truncated[: len(truncated) // 2])
    pack(f"gs://{bucket}/train", f"gs://{bucket}/packed", shard_size=64 * 1024, progress=False, log=lambda s: None)
    return bucket


@pytest.fixture
def proxy(gcs_emulator):
    with FaultProxy(gcs_emulator.url) as p:
        yield p


VICTIM = "train/n00000001/img_2.JPEG"


@pytest.mark.parametrize("backend", ["native", "pillow"])
@pytest.mark.parametrize("status,error", [(403, PermissionError), (404, FileNotFoundError)])
def test_an_unreadable_object_stops_the_loader_naming_it(data, proxy, status, error, backend):
    index = load_index(f"gs://{data}/train")  # listed directly: only the loader's reads go through the proxy
    proxy.add_fault("status", status=status, count=1000, match=VICTIM)
    with Loader(index, batch_size=4, endpoint=proxy.url, backend=backend, **EVAL) as ld:
        assert ld.failures.on_error == "skip"  # the default: bad images are skipped, outages are not
        with pytest.raises(error) as ei:
            list(ld)
        st = ld.stats()
    assert f"gs://{data}/{VICTIM}" in str(ei.value) and ei.value.object == VICTIM and ei.value.status == status
    assert "max_missing=0 allows none" in str(ei.value)
    assert st["missing"] == 0 and st["skipped"] == 0 and proxy.stats[f"status_{status}"] >= 1


@pytest.mark.parametrize("status", [403, 404])
@pytest.mark.parametrize("max_missing", [1, 0.2])  # 0.2 of 8 samples: 1
def test_within_max_missing_the_epoch_completes_and_counts_it_apart(data, proxy, status, max_missing, caplog):
    index = load_index(f"gs://{data}/train")
    victim = index.names().index(VICTIM)
    proxy.add_fault("status", status=status, count=1000, match=VICTIM)
    with caplog.at_level(logging.WARNING, logger="hivedata.loader.failures"):
        with Loader(index, batch_size=4, endpoint=proxy.url, max_missing=max_missing, **EVAL) as ld:
            batches = list(ld)
            st = ld.stats()
    labels = torch.cat([y for _, y in batches])
    assert len(labels) == N  # the batch kept its shape
    want = index.labels.astype("int64").tolist()
    assert labels.tolist()[:victim] + labels.tolist()[victim + 1:] == want[:victim] + want[victim + 1:]
    x = batches[victim // 4][0]
    assert any(torch.equal(x[victim % 4], x[j]) for j in range(4) if j != victim % 4)  # a copy of another sample
    assert st["missing"] == 1 and st["skipped"] == 0 and st["skipped_names"] == []
    assert st["missing_budget"] == 1 and VICTIM in st["missing_names"][0]
    warned = [r.getMessage() for r in caplog.records]
    assert any(VICTIM in m and "replaced by another" in m for m in warned)
    assert any("1 of 8 samples could not be read" in m for m in warned)  # the epoch's summary


def test_past_the_budget_it_raises_with_the_count_the_budget_and_the_last_error(data, proxy):
    index = load_index(f"gs://{data}/train")
    proxy.add_fault("status", status=403, count=1000, match="train/n00000000/img_1.JPEG")
    proxy.add_fault("status", status=404, count=1000, match=VICTIM)
    with Loader(index, batch_size=4, endpoint=proxy.url, max_missing=1, **EVAL) as ld:
        with pytest.raises(FileNotFoundError) as ei:
            list(ld)
        assert ld.stats()["missing"] == 1
    message = str(ei.value)
    assert message.startswith(f"no such object: gs://{data}/{VICTIM}")  # the last error
    assert "2 sample(s) of epoch 0 could not be read" in message and "max_missing=1 allows 1 of 8" in message


def test_the_budget_restarts_every_epoch(data, proxy):
    index = load_index(f"gs://{data}/train")
    proxy.add_fault("status", status=403, count=1000, match=VICTIM)
    with Loader(index, batch_size=4, endpoint=proxy.url, max_missing=1, **EVAL) as ld:
        for epoch in range(2):
            assert sum(len(y) for _, y in ld) == N and ld.epoch == epoch + 1
        st = ld.stats()
    assert st["missing"] == 2 and st["missing_this_epoch"] == 1


def test_a_corrupt_jpeg_is_still_skipped_and_counted_apart_from_missing_ones(data, proxy):
    index = load_index(f"gs://{data}/corrupt")
    assert len(index) == N + 1
    with Loader(index, batch_size=3, endpoint=proxy.url, **EVAL) as ld:  # on_error="skip", max_missing=0
        assert sum(len(y) for _, y in ld) == N + 1
        st = ld.stats()
    assert st["skipped"] == 1 and "truncated.JPEG" in st["skipped_names"][0] and st["missing"] == 0
    proxy.add_fault("status", status=403, count=1000, match="corrupt/n00000000/img_0.JPEG")
    with Loader(index, batch_size=3, endpoint=proxy.url, max_missing=1, **EVAL) as ld:
        assert sum(len(y) for _, y in ld) == N + 1
        st = ld.stats()
    assert st["skipped"] == 1 and st["missing"] == 1
    assert "img_0.JPEG" in st["missing_names"][0] and "truncated.JPEG" in st["skipped_names"][0]


def test_a_refused_shard_names_the_member_it_was_reading(data, proxy):
    url = f"gs://{data}/packed/train.index.npz"
    with Loader(url, batch_size=4, **EVAL) as probe:
        source = probe.source
    assert len(source.shard_names) == 1
    proxy.add_fault("status", status=403, count=1000, match=source.shard_names[0])
    with Loader(source, batch_size=4, endpoint=proxy.url, **EVAL) as ld:
        with pytest.raises(PermissionError) as ei:
            list(ld)
    message = str(ei.value)
    assert message.startswith(f"{source.describe(0)}: ") and f"#{source.key(0)}" in message
    assert ei.value.object == source.shard_names[0]


def test_loader_dataset_passes_the_budget_to_its_loaders(data, proxy):
    index = load_index(f"gs://{data}/train")
    proxy.add_fault("status", status=403, count=1000, match=VICTIM)
    with pytest.raises(ValueError, match="max_missing"):
        LoaderDataset(index, batch_size=4, max_missing=2.5, **EVAL)
    loader = torch.utils.data.DataLoader(LoaderDataset(index, batch_size=4, endpoint=proxy.url, max_missing=1,
                                                       **EVAL), batch_size=None)
    assert sum(len(y) for _, y in loader) == N
    strict = torch.utils.data.DataLoader(LoaderDataset(index, batch_size=4, endpoint=proxy.url, **EVAL),
                                         batch_size=None)
    with pytest.raises(PermissionError, match=VICTIM):
        list(strict)


def test_train_py_max_missing_reaches_both_loaders(data, proxy, monkeypatch):
    from hivedata.train.config import fill_defaults, parse_args
    from hivedata.train.parts import build_data

    train_source = load_index(f"gs://{data}/train")
    val_source = load_index(f"gs://{data}/corrupt", classes=train_source.classes)
    proxy.add_fault("status", status=403, count=1000, match=VICTIM)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)  # the loaders read through the proxy
    for flag, ok in (([], False), (["--max_missing", "1"], True)):
        args = fill_defaults(parse_args(["--bucket", data, "--image_size", "16", "--batch_size", "4",
                                         "--num_workers", "1", "--backend", "native", *flag]), embedded=True)
        built = build_data(args, device=torch.device("cpu"), peer_id="outage-peer",
                           sources=(train_source, val_source))
        try:
            assert built.train.failures.max_missing == built.val.failures.max_missing == (1 if ok else 0)
            if ok:
                assert sum(len(y) for _, y in built.train) == N and built.train.stats()["missing"] == 1
            else:
                with pytest.raises(PermissionError, match=VICTIM):
                    list(built.train)
        finally:
            built.close()
