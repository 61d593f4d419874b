"""The ring of preallocated batch slots that C++ fills and the device reads, plus the host→device step."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hivedata import _native


@dataclass
class Slot:
    """One batch's memory: decoded uint8 images [B, H, W, 3] and the encoded-bytes arena."""

    images: torch.Tensor
    arena: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint8))
    event: object | None = None  # torch.cuda.Event recorded on the copy's stream after the device copy was queued

    def ensure_arena(self, nbytes: int) -> np.ndarray:
        """The arena, grown (by at least half) when a batch needs more than it holds."""
        if self.arena.nbytes < nbytes:
            self.arena = np.empty(max(nbytes, int(self.arena.nbytes * 1.5)), dtype=np.uint8)
        return self.arena

    def wait_until_read(self) -> None:
        """Blocks until the device has finished reading this slot (CUDA); no-op elsewhere."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None


class Ring:
    """K slots lent in turn to the pipeline; a slot returns to the free list once its batch was consumed."""

    def __init__(self, slots: int, batch_size: int, height: int, width: int, *, pin: bool) -> None:
        self._shape, self._pin = (batch_size, height, width, 3), pin
        self.slots: list[Slot] = []
        self.free: list[int] = []
        self.grow(slots)

    def grow(self, slots: int) -> None:
        """Adds free slots until the ring holds `slots` (a deeper read-ahead)."""
        while len(self.slots) < slots:
            self.free.append(len(self.slots))
            self.slots.append(Slot(torch.empty(self._shape, dtype=torch.uint8, pin_memory=self._pin)))

    def __len__(self) -> int:
        return len(self.slots)

    def acquire(self) -> int | None:
        """A free slot's number (waiting until the device read it), or None when all are busy."""
        if not self.free:
            return None
        k = self.free.pop(0)
        self.slots[k].wait_until_read()
        return k

    def release(self, k: int) -> None:
        """Returns slot k to the free list."""
        self.free.append(k)

    def reset(self) -> None:
        """Every slot free (after the pipeline was drained)."""
        self.free = list(range(len(self.slots)))


def to_device(images: torch.Tensor, device: torch.device, *, dtype: torch.dtype, channels_last: bool,
              normalize: bool, mean: torch.Tensor, std: torch.Tensor, slot: Slot | None = None) -> torch.Tensor:
    """uint8 [B, H, W, 3] host images -> [B, 3, H, W] on `device`, normalised to `dtype` (or uint8 when not)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if device.type == "cuda":
        x = _copy_to_cuda(images, device, slot)
    elif device.type == "cpu":
        x = images
    else:  # mps and others: a synchronous copy, then work on the device
        x = images.to(device)
    if device.type == "cpu" and (not normalize or dtype == torch.float32):
        return _cpu_output(images, normalize=normalize, channels_last=channels_last, mean=mean, std=std)
    x = x.permute(0, 3, 1, 2)
    if not normalize:
        return x.contiguous(memory_format=fmt)
    out = torch.empty(x.shape, dtype=dtype, device=x.device).contiguous(memory_format=fmt)
    out.copy_(x)
    m = mean.to(device=x.device, dtype=dtype).view(1, 3, 1, 1)
    inv = (1.0 / std).to(device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return out.sub_(m).mul_(inv)


def _copy_to_cuda(images: torch.Tensor, device: torch.device, slot: Slot | None) -> torch.Tensor:
    """A non-blocking copy of pinned `images` to `device`; `slot.event` marks its end on the stream that copies.

    The copy runs on the current stream of `device` (not of the current device: with device="cuda:1" while
    the current device is 0 they differ), so the event is recorded on that stream, on that device; an event
    on another stream would complete early and let the decode threads overwrite the slot mid-copy.
    """
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device)
        x = images.to(device, non_blocking=True)
        if slot is not None:
            event = torch.cuda.Event()
            event.record(stream)
            slot.event = event
    return x


def _cpu_output(images: torch.Tensor, *, normalize: bool, channels_last: bool, mean: torch.Tensor,
                std: torch.Tensor) -> torch.Tensor:
    """The cpu path in native code: torch's OpenMP pool would hang a child forked after the parent used it."""
    n, h, w, _ = images.shape
    src = images.numpy()
    if not normalize:  # the slot is reused: hand out a copy
        if channels_last:
            return torch.from_numpy(src.copy()).permute(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(src.transpose(0, 3, 1, 2)))
    shape = (n, h, w, 3) if channels_last else (n, 3, h, w)
    out = np.empty(shape, dtype=np.float32)
    _native.normalize_u8(src, out, n, h, w, channels_last, mean.tolist(), std.tolist())
    t = torch.from_numpy(out)
    return t.permute(0, 3, 1, 2) if channels_last else t
