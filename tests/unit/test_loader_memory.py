"""The Loader's order, resume and skip logic over an in-memory source: no emulator, no network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hivedata.errors import BadImageError
from hivedata.loader.loader import Loader
from hivedata.sources import MemorySource
from tests.support.images import jpeg, natural_image, png

N, CLASSES = 24, 4


@pytest.fixture(scope="module")
def samples() -> list[bytes]:
    return [jpeg(natural_image(64 + 8 * (i % 3), 48 + 4 * (i % 5), seed=i)) for i in range(N)]


def _source(samples, bad: dict[int, bytes] | None = None) -> MemorySource:
    data = [bad[i] if bad and i in bad else s for i, s in enumerate(samples)]
    return MemorySource.from_bytes(data, [i % CLASSES for i in range(N)], [f"c{k}" for k in range(CLASSES)],
                                   names=[f"mem/{i}.JPEG" for i in range(N)])


def _loader(source, **kw) -> Loader:
    opts = dict(batch_size=5, train=True, image_size=16, backend="native", seed=3, workers=1, prefetch=1)
    return Loader(source, **(opts | kw))


def _epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_an_epoch_reads_the_seeded_order_and_reproduces_it(samples):
    src = _source(samples)
    with _loader(src) as a, _loader(src) as b:
        ea, eb = _epoch(a), _epoch(b)
        order = a.sampler.order(0)
        assert len(ea) == N // 5 == len(a)  # drop_last when training
        got = torch.cat([y for _, y in ea]).tolist()
        assert got == [int(i) % CLASSES for i in order[:len(got)]]
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(ea, eb, strict=True))
        assert a.epoch == 1 and a.stats()["gets"] == 0  # nothing was fetched
        e1 = _epoch(a)
        assert torch.cat([y for _, y in e1]).tolist() != got  # another epoch, another order


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(samples):
    src = _source(samples)
    with _loader(src) as full:
        everything = _epoch(full)
    with _loader(src) as first:
        it = iter(first)
        for _ in range(2):
            next(it)
        state = first.state_dict()
        it.close()
    with _loader(src) as resumed:
        resumed.load_state_dict(state)
        rest = _epoch(resumed)
    assert len(rest) == len(everything) - 2
    for (x, y), (xe, ye) in zip(rest, everything[2:], strict=True):
        assert torch.equal(y, ye) and torch.equal(x, xe)


def test_a_state_of_another_order_is_refused(samples):
    with _loader(_source(samples)) as a, _loader(_source(samples), seed=4) as b:
        with pytest.raises(ValueError, match="seed"):
            b.load_state_dict(a.state_dict())


def test_a_corrupt_sample_is_skipped_named_and_replaced_within_its_batch(samples):
    src = _source(samples, bad={7: b"\xff\xd8\xff" + b"\0" * 50})
    with _loader(src, train=False, batch_size=8) as ld:
        batches = _epoch(ld)
        st = ld.stats()
    assert [len(y) for _, y in batches] == [8, 8, 8]  # the epoch keeps its length
    assert st["skipped"] == 1 and st["skipped_names"][0].startswith("mem/7.JPEG: ")
    x, y = batches[0]
    assert any(torch.equal(x[7], x[j]) and y[7] == y[j] for j in range(8) if j != 7)


def test_on_error_raise_names_the_sample(samples):
    src = _source(samples, bad={2: b"not an image at all"})
    with _loader(src, train=False, batch_size=4, on_error="raise") as ld:
        with pytest.raises(BadImageError, match="mem/2.JPEG"):
            _epoch(ld)


def test_a_png_named_jpeg_is_decoded_by_the_fallback(samples):
    src = _source(samples, bad={5: png(natural_image(40, 40, seed=5))})
    with _loader(src, train=False, batch_size=6) as ld:
        _epoch(ld)
        st = ld.stats()
    assert st["fallback_decoded"] == 1 and st["skipped"] == 0


def test_every_sample_bad_is_an_error_not_an_empty_batch(samples):
    src = _source(samples, bad={i: b"junk" for i in range(N)})
    with _loader(src, train=False, batch_size=4) as ld:
        with pytest.raises(Exception, match="every sample of a batch failed"):
            _epoch(ld)


@pytest.mark.parametrize("backend", ["native", "pillow"])
def test_evaluation_covers_every_sample_once_in_order(samples, backend):
    with _loader(_source(samples), train=False, batch_size=7, backend=backend) as ld:
        labels = torch.cat([y for _, y in ld]).tolist()
    assert labels == [i % CLASSES for i in range(N)]  # in order, the short tail kept


def test_block_order_keeps_runs_inside_the_groups_of_the_source(samples):
    src = _source(samples)
    src._groups = np.array([0, 10, 17])  # as a source of three shards would say
    with _loader(src, shuffle="block", block_size=4, shuffle_window=1, drop_last=False) as ld:
        order = ld.sampler.order(0)
    runs = ld.sampler._runs
    assert set(runs.tolist()) >= {0, 10, 17} and sorted(order.tolist()) == list(range(N))


def test_strict_makes_a_warned_image_a_bad_one(samples):
    from tests.support.broken_jpegs import extraneous_before_eoi

    src = _source(samples, bad={3: extraneous_before_eoi(samples[3])})
    with _loader(src, train=False) as lenient:
        _epoch(lenient)
        st = lenient.stats()
    assert st["skipped"] == 0 and st["decode_warnings"] == 1 and "mem/3.JPEG" in st["warned"][0]
    with _loader(src, train=False, strict=True) as strict:
        _epoch(strict)
        st = strict.stats()
    assert st["skipped"] == 1 and "mem/3.JPEG" in st["skipped_names"][0]
