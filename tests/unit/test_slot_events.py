"""A ring slot is lent back to the decode threads only after the device copy that reads it has finished.

The copy to device="cuda:n" runs on the current stream of cuda:n, whatever the current device is, so the
slot's event must be recorded on that stream. The first tests fake torch.cuda's stream, event and device
functions (and the copy) to check that logic on any machine; the last ones run on real GPUs.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from hivedata.loader.ring import Ring, to_device

MEAN = torch.tensor((0.485 * 255, 0.456 * 255, 0.406 * 255))
STD = torch.tensor((0.229 * 255, 0.224 * 255, 0.225 * 255))


class FakeStream:
    """A CUDA stream: work runs in order, and only when someone waits for it."""

    def __init__(self, device: int, name: str) -> None:
        self.device, self.name = device, name
        self.queue: list[object] = []
        self.done: list[object] = []

    def run_until(self, item: object) -> None:
        while self.queue:
            work = self.queue.pop(0)
            self.done.append(work)
            if work is item:
                return

    def __repr__(self) -> str:
        return f"FakeStream({self.name} on cuda:{self.device})"


class FakeEvent:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda, self.stream = cuda, None

    def record(self, stream: FakeStream | None = None) -> None:
        # torch.cuda.Event.record(): stream None means the current device's current stream
        self.stream = stream if stream is not None else self.cuda.current_stream()
        self.stream.queue.append(self)

    def synchronize(self) -> None:
        assert self.stream is not None, "synchronize() on an event never recorded"
        self.stream.run_until(self)


class FakeCuda:
    """torch.cuda's device / current_stream / Event, for two devices, each with its own current stream."""

    def __init__(self, current: int = 0) -> None:
        self.current = current
        self.streams = {0: FakeStream(0, "default"), 1: FakeStream(1, "default")}
        self.copies: list[tuple[FakeStream, object]] = []

    def _index(self, device) -> int:
        if device is None:
            return self.current
        d = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        return self.current if d.index is None else d.index

    @contextlib.contextmanager
    def device(self, device):
        before = self.current
        self.current = self._index(device)
        try:
            yield
        finally:
            self.current = before

    def current_stream(self, device=None) -> FakeStream:
        return self.streams[self._index(device)]

    def Event(self) -> FakeEvent:  # noqa: N802 (torch's name)
        return FakeEvent(self)

    def copy(self, tensor: torch.Tensor, device) -> torch.Tensor:
        """A non-blocking host->device copy: queued on the current stream of the *target* device."""
        stream = self.streams[self._index(device)]
        work = ("copy", tensor.data_ptr())
        stream.queue.append(work)
        self.copies.append((stream, work))
        return tensor.clone()  # stands in for the device tensor; the rest of to_device runs on the cpu

    def copies_pending(self) -> list:
        return [work for stream, work in self.copies if work not in stream.done]


@pytest.fixture
def cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "device", fake.device)
    monkeypatch.setattr(torch.cuda, "current_stream", fake.current_stream)
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    real_to = torch.Tensor.to

    def to(self, *args, **kw):
        target = args[0] if args else kw.get("device")
        if isinstance(target, torch.device | str) and torch.device(target).type == "cuda":
            return fake.copy(self, target)
        return real_to(self, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return fake


def _one_batch(ring: Ring, k: int, device: torch.device) -> torch.Tensor:
    """What Loader.__iter__ does with a finished batch: copy it out of slot k, then release the slot."""
    out = to_device(ring.slots[k].images, device, dtype=torch.float32, channels_last=False, normalize=True,
                    mean=MEAN, std=STD, slot=ring.slots[k])
    ring.release(k)
    return out


def _reacquire(ring: Ring, k: int) -> None:
    """Acquires slots until slot k is lent out again (acquire waits until the device has read it)."""
    while (got := ring.acquire()) != k:
        assert got is not None


@pytest.mark.parametrize("current", [0, 1])
def test_the_event_is_on_the_stream_that_copies_to_cuda_1(cuda, current):
    cuda.current = current  # cuda:1 while the current device is 0 is the case that went wrong
    ring = Ring(2, 2, 4, 4, pin=False)
    k = ring.acquire()
    _one_batch(ring, k, torch.device("cuda:1"))
    event = ring.slots[k].event
    assert event.stream is cuda.streams[1], f"event on {event.stream}, copy on {cuda.streams[1]}"
    assert cuda.current == current  # the device switch was undone
    _reacquire(ring, k)
    assert cuda.copies_pending() == [], "slot k was lent to the decode threads while its copy was still queued"
    assert ring.slots[k].event is None


def test_plain_cuda_means_the_current_device(cuda):
    cuda.current = 1
    ring = Ring(2, 2, 4, 4, pin=False)
    k = ring.acquire()
    _one_batch(ring, k, torch.device("cuda"))
    assert ring.slots[k].event.stream is cuda.streams[1]
    _reacquire(ring, k)
    assert cuda.copies_pending() == []


def test_a_stream_the_caller_made_current_on_that_device_is_the_one_waited_for(cuda):
    cuda.streams[1] = side = FakeStream(1, "side")  # as under `with torch.cuda.stream(side):` on cuda:1
    ring = Ring(3, 2, 4, 4, pin=False)
    slots = [ring.acquire() for _ in range(3)]
    for k in slots:
        _one_batch(ring, k, torch.device("cuda:1"))
    assert all(ring.slots[k].event.stream is side for k in slots)
    _reacquire(ring, slots[0])
    assert len(cuda.copies_pending()) == 2  # waits for the first copy only, not the whole queue
    _reacquire(ring, slots[2])
    assert cuda.copies_pending() == []


def test_to_device_output_is_still_normalised(cuda):
    ring = Ring(1, 2, 4, 4, pin=False)
    k = ring.acquire()
    ring.slots[k].images.copy_(torch.from_numpy(np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)))
    out = _one_batch(ring, k, torch.device("cuda:1"))
    expected = (ring.slots[k].images.permute(0, 3, 1, 2).float() - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    assert out.shape == (2, 3, 4, 4) and torch.allclose(out, expected, atol=1e-5)


# -- real GPUs -----------------------------------------------------------------------------------------------
def _slot_survives_overwrite(device: torch.device, current: int) -> None:
    """Queues a long kernel before the copy on `device`'s stream, waits for the slot, overwrites the pinned
    source: the copy must have read the original bytes (a premature wait would let it read the new ones)."""
    torch.cuda.set_device(current)
    ring = Ring(1, 64, 224, 224, pin=True)
    k = ring.acquire()
    src = ring.slots[k].images
    src.copy_(torch.randint(0, 255, src.shape, dtype=torch.uint8))
    original = src.clone()
    with torch.cuda.device(device):
        torch.cuda._sleep(1 << 31)  # ~1 s of GPU time on device's current stream, ahead of the copy
    out = to_device(src, device, dtype=torch.uint8, channels_last=True, normalize=False, mean=MEAN, std=STD,
                    slot=ring.slots[k])
    ring.release(k)
    assert ring.acquire() == k  # waits for the copy
    src.fill_(0)  # what the decode threads do to a slot they were lent
    torch.cuda.synchronize(device)
    assert torch.equal(out.cpu().permute(0, 2, 3, 1), original)
    assert torch.cuda.current_device() == current


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_slot_is_read_before_it_is_lent_again():
    _slot_survives_overwrite(torch.device("cuda:0"), 0)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # a stream the caller made current: the copy and the event go there
        _slot_survives_overwrite(torch.device("cuda"), 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_1_slot_is_read_before_it_is_lent_again_while_cuda_0_is_current():
    _slot_survives_overwrite(torch.device("cuda:1"), 0)
