"""FailurePolicy: bad images follow on_error; unreadable samples raise unless max_missing budgets for them."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hivedata.errors import (
    BadImageError,
    ChecksumError,
    CorruptImageError,
    FetchCancelledError,
    FetchError,
    HivedataError,
    NotJpegError,
    ObjectNotFoundError,
    ObjectPermissionError,
)
from hivedata.loader.failures import WARN_EACH_FIRST, WARN_INTERVAL_S, FailurePolicy, check_max_missing

B = 4


def batch() -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels equal their sample number, and labels 10 + j."""
    images = np.stack([np.full((2, 2, 3), j, dtype=np.uint8) for j in range(B)])
    return images, np.arange(10, 10 + B, dtype=np.int64)


def name(j: int) -> str:
    return f"gs://b/s.tar#key{j}"


def forbidden(j: int) -> ObjectPermissionError:
    return ObjectPermissionError(f"HTTP 403 for gs://b/s.tar (bytes={j}00-{j}99)", bucket="b", object="s.tar",
                                 status=403)


def corrupt(j: int) -> CorruptImageError:
    return CorruptImageError(f"gs://b/s.tar: corrupt JPEG {j}", bucket="b", object="s.tar")


def test_bad_images_are_skipped_replaced_and_named():
    policy = FailurePolicy("skip")
    images, labels = batch()
    policy.apply([(1, corrupt(1)), (3, NotJpegError("not a jpeg", object="x"))], images, labels, name)
    assert labels.tolist() == [10, 10, 12, 12] and images[1].max() == 0 and images[3].max() == 2
    st = policy.stats()
    assert st["skipped"] == 2 and st["missing"] == 0 and st["missing_names"] == []
    assert st["skipped_names"][0].startswith("gs://b/s.tar#key1: ")


def test_bad_images_raise_or_reach_the_callable():
    images, labels = batch()
    with pytest.raises(CorruptImageError):
        FailurePolicy("raise").apply([(1, corrupt(1))], images, labels, name)
    seen: list[BaseException] = []
    policy = FailurePolicy(seen.append)
    policy.apply([(2, corrupt(2))], images, labels, name)
    assert len(seen) == 1 and policy.skipped == 1


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_a_transport_failure_raises_by_default_naming_the_sample(on_error):
    policy = FailurePolicy(on_error)
    policy.start_epoch(0, 1000)
    images, labels = batch()
    before = images.copy()
    with pytest.raises(ObjectPermissionError) as ei:  # still a PermissionError, still about s.tar
        policy.apply([(2, forbidden(2))], images, labels, name)
    message = str(ei.value)
    assert message.startswith("gs://b/s.tar#key2: HTTP 403 for gs://b/s.tar")
    assert "max_missing=0 allows none" in message and "1 sample(s) of epoch 0" in message
    assert ei.value.object == "s.tar" and ei.value.status == 403 and isinstance(ei.value, PermissionError)
    assert isinstance(ei.value.__cause__, ObjectPermissionError)
    assert policy.skipped == 0 and policy.missing == 0
    assert np.array_equal(images[:2], before[:2])


def test_a_name_already_in_the_message_is_not_repeated():
    policy = FailurePolicy("skip")
    images, labels = batch()
    exc = ObjectNotFoundError("HTTP 404 for gs://b/x.JPEG", bucket="b", object="x.JPEG", status=404)
    with pytest.raises(FileNotFoundError) as ei:
        policy.apply([(0, exc)], images, labels, lambda j: "gs://b/x.JPEG")
    assert str(ei.value).startswith("HTTP 404 for gs://b/x.JPEG [1 sample(s)")


def test_a_callable_on_error_is_not_called_for_transport_failures():
    seen: list[BaseException] = []
    with pytest.raises(FetchError):
        FailurePolicy(seen.append).apply([(0, FetchError("network error fetching gs://b/x"))], *batch(), name)
    assert seen == []
    policy = FailurePolicy(seen.append, max_missing=1)
    policy.apply([(0, FetchError("network error fetching gs://b/x"))], *batch(), name)
    assert seen == [] and policy.missing == 1


def test_a_count_budget_replaces_counts_apart_and_then_raises_with_count_budget_and_last_error():
    policy = FailurePolicy("skip", max_missing=2)
    policy.start_epoch(3, 40)
    images, labels = batch()
    policy.apply([(0, forbidden(0)), (1, corrupt(1))], images, labels, name)
    assert labels.tolist() == [12, 13, 12, 13] and images[0].max() == 2
    policy.apply([(3, ChecksumError("crc32c mismatch for gs://b/s.tar"))], *batch(), name)
    st = policy.stats()
    assert st["missing"] == 2 and st["missing_this_epoch"] == 2 and st["missing_budget"] == 2
    assert st["skipped"] == 1 and st["skipped_names"] == [f"{name(1)}: {corrupt(1)}"]
    assert st["missing_names"][0].startswith("gs://b/s.tar#key0: HTTP 403")
    with pytest.raises(ObjectNotFoundError) as ei:
        policy.apply([(2, ObjectNotFoundError("HTTP 404 for gs://b/s.tar", object="s.tar", status=404))],
                      *batch(), name)
    message = str(ei.value)
    assert "gs://b/s.tar#key2: HTTP 404" in message and "3 sample(s) of epoch 3" in message
    assert "max_missing=2 allows 2 of 40" in message
    assert policy.missing == 2 and policy.epoch_missing == 2  # the one that broke the budget was not replaced


def test_a_fraction_budget_is_of_the_epoch_rounded_down_and_restarts_every_epoch():
    policy = FailurePolicy("skip", max_missing=0.05)
    policy.start_epoch(0, 59)
    assert policy.budget == 2  # 2.95 -> 2
    for j in range(2):
        policy.apply([(j, forbidden(j))], *batch(), name)
    with pytest.raises(ObjectPermissionError, match=r"max_missing=0.05 allows 2 of 59"):
        policy.apply([(2, forbidden(2))], *batch(), name)
    policy.start_epoch(1, 59)
    policy.apply([(0, forbidden(0)), (1, forbidden(1))], *batch(), name)
    assert policy.stats()["missing"] == 4 and policy.stats()["missing_this_epoch"] == 2
    policy.start_epoch(2, 10)  # a smaller epoch (a last shard's share): 0.5 -> nothing allowed
    with pytest.raises(ObjectPermissionError, match="allows none"):
        policy.apply([(0, forbidden(0))], *batch(), name)


def test_cancelled_samples_are_never_counted_and_always_raise():
    policy = FailurePolicy("skip", max_missing=100)
    policy.start_epoch(0, 1000)
    cancelled = FetchCancelledError("cancelled: gs://b/s.tar", bucket="b", object="s.tar")
    with pytest.raises(FetchCancelledError, match="cancelled"):
        policy.apply([(1, cancelled)], *batch(), name)
    st = policy.stats()
    assert st["missing"] == 0 and st["skipped"] == 0 and st["missing_this_epoch"] == 0


def test_an_unknown_failure_is_raised_not_replaced():
    policy = FailurePolicy("skip", max_missing=100)
    with pytest.raises(RuntimeError, match="bug"):
        policy.apply([(0, RuntimeError("a bug"))], *batch(), name)
    assert policy.skipped == 0 and policy.missing == 0


def test_a_batch_with_nothing_left_raises():
    policy = FailurePolicy("skip", max_missing=B)
    with pytest.raises(HivedataError, match="every sample of a batch"):
        policy.apply([(j, forbidden(j)) for j in range(B)], *batch(), name)


def test_warnings_name_the_first_few_then_are_rate_limited(caplog):
    now = [0.0]
    policy = FailurePolicy("skip", max_missing=1000, clock=lambda: now[0])
    policy.start_epoch(0, 5000)
    with caplog.at_level(logging.WARNING, logger="hivedata.loader.failures"):
        for k in range(500):
            now[0] += 0.01  # 500 misses in 5 s: no summary yet
            policy.apply([(k % B, forbidden(k % B))], *batch(), name)
        named = [r for r in caplog.records if "replaced by another" in r.getMessage()]
        assert len(named) == WARN_EACH_FIRST and name(0) in named[0].getMessage()
        assert len(caplog.records) == WARN_EACH_FIRST + 1  # plus one line saying the rest are summarised
        now[0] += WARN_INTERVAL_S
        policy.apply([(0, forbidden(0))], *batch(), name)
        policy.apply([(0, forbidden(0))], *batch(), name)
        assert len(caplog.records) == WARN_EACH_FIRST + 2
        assert "501 samples of this epoch missing so far" in caplog.records[-1].getMessage()
        policy.end_epoch()
    assert "502 of 5000 samples could not be read" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("value", [-1, 1.0, 2.5, -0.1, True, "0.1", None])
def test_bad_budgets_are_refused(value):
    with pytest.raises(ValueError, match="max_missing"):
        check_max_missing(value)


def test_good_budgets_are_kept():
    assert check_max_missing(0) == 0 and check_max_missing(0.0) == 0 and check_max_missing(np.int64(7)) == 7
    assert check_max_missing(0.001) == 0.001
    with pytest.raises(ValueError, match="on_error"):
        FailurePolicy("ignore")


def test_bad_image_errors_of_the_python_decoders_are_bad_images():
    from hivedata.loader.decoders.base import Augment
    from hivedata.loader.decoders.pillow import PillowDecoder, python_choose_crop

    aug = Augment(out_h=8, out_w=8, train=False)
    out = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with PillowDecoder(aug, threads=1, crop_fn=python_choose_crop) as dec:
        errs = dec.decode([memoryview(b"\xff\xd8\xff\xe0junk"), memoryview(b"GIF89a..")], [0, 1], out, ["a", "b"])
    assert all(isinstance(e, BadImageError) for e in errs)
    policy = FailurePolicy("skip")
    images, labels = batch()
    policy.apply([(0, errs[0]), (1, errs[1])], images, labels, name)
    assert policy.skipped == 2 and policy.missing == 0


@pytest.mark.parametrize("n,batch_size,drop_last,num_shards", [(10, 4, False, 1), (10, 4, True, 1), (10, 4, False, 2),
                                                                (11, 3, False, 3), (12, 4, False, 2), (9, 4, True, 2)])
def test_the_budget_is_of_the_samples_this_loader_yields_in_an_epoch(n, batch_size, drop_last, num_shards):
    from hivedata.loader.loader import Loader
    from hivedata.sources import MemorySource

    src = MemorySource.from_bytes([b"x"] * n, [0] * n, ["c"], names=[f"m/{i}" for i in range(n)])
    for shard in range(num_shards):
        with Loader(src, batch_size=batch_size, train=False, drop_last=drop_last, shard=shard,
                    num_shards=num_shards, max_missing=0.5, backend="native", workers=1) as ld:
            want = sum(len(b) for b in ld.sampler.batches(0))
            assert ld.epoch_samples() == want
