"""Who turns a fetched batch into images: one strategy per backend, chosen once when the Loader starts.

native: fused with the fetch (the C++ pipeline decodes each sample as its bytes arrive); a sample that is
not a JPEG gets one try with Pillow, same crop. pillow / dali: the pipeline only fetches, then the Python
decoder decodes the whole batch from the arena.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from hivedata.errors import NotJpegError
from hivedata.loader.decoders.base import Augment, BatchDecoder

BACKENDS = ("auto", "native", "pillow", "dali")
Failures = list[tuple[int, BaseException]]


@dataclass
class FetchedBatch:
    """A batch the pipeline finished: its bytes (arena, offsets, nbytes), seeds, names and slot images."""

    arena: np.ndarray
    offsets: np.ndarray
    nbytes: list[int]
    seeds: list[int]
    names: list[str]
    images: np.ndarray  # uint8 [B, H, W, 3], the slot's
    failed: Failures  # what the pipeline could not fetch (or, fused, decode)


class DecodeStrategy(Protocol):
    """How a Loader decodes; `fused`: the native pipeline decodes while it fetches."""

    name: str
    fused: bool

    def finish(self, batch: FetchedBatch) -> Failures:
        """Makes batch.images hold every sample that can be decoded; returns the samples that cannot."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters of this strategy."""
        ...

    def close(self) -> None:
        """Stops its threads."""
        ...


def _view(b: FetchedBatch, i: int) -> memoryview:
    off = int(b.offsets[i])
    return memoryview(b.arena)[off:off + b.nbytes[i]]


class NativeDecode:
    """The pipeline decodes; non-JPEG samples (a PNG named .JPEG) fall back to Pillow with the same crop."""

    name = "native"
    fused = True

    def __init__(self, augment: Augment) -> None:
        self.augment = augment
        self._fallback: BatchDecoder | None = None
        self.fallback_decoded = 0

    def finish(self, batch: FetchedBatch) -> Failures:
        """Retries not-a-JPEG failures with Pillow; the rest stay failures."""
        left = []
        for i, exc in batch.failed:
            if isinstance(exc, NotJpegError) and batch.nbytes[i] > 0 and self._pillow_one(batch, i):
                self.fallback_decoded += 1
            else:
                left.append((i, exc))
        return left

    def _pillow_one(self, b: FetchedBatch, i: int) -> bool:
        if self._fallback is None:
            from hivedata.loader.decoders.pillow import PillowDecoder

            self._fallback = PillowDecoder(self.augment, threads=1)
        errs = self._fallback.decode([_view(b, i)], [b.seeds[i]], b.images[i:i + 1], [b.names[i]])
        return errs[0] is None

    def stats(self) -> dict[str, Any]:
        """Samples the Pillow fallback decoded (no decoding happens in Python otherwise)."""
        return {"fallback_decoded": self.fallback_decoded, "python_decode_s": 0.0}

    def close(self) -> None:
        """Stops the fallback's thread (if it ever started)."""
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None


class PythonDecode:
    """A Python batch decoder (pillow, dali) decodes the fetched arena into the slot."""

    fused = False

    def __init__(self, decoder: BatchDecoder) -> None:
        self.decoder, self.name = decoder, decoder.name
        self.decode_s = 0.0

    def finish(self, batch: FetchedBatch) -> Failures:
        """Decodes every fetched sample; returns fetch failures plus decode failures."""
        bad = {i for i, _ in batch.failed}
        good = [i for i in range(len(batch.nbytes)) if i not in bad]
        views = [_view(batch, i) for i in good]
        seeds = [batch.seeds[i] for i in good]
        names = [batch.names[i] for i in good]
        t0 = time.perf_counter()
        out = batch.images
        if len(good) == len(batch.nbytes):
            errs = self.decoder.decode(views, seeds, out[:len(good)], names)
        else:  # decode the good ones into a scratch array, then place them
            scratch = np.empty((len(good),) + out.shape[1:], dtype=np.uint8)
            errs = self.decoder.decode(views, seeds, scratch, names)
            out[good] = scratch
        self.decode_s += time.perf_counter() - t0
        return list(batch.failed) + [(good[j], e) for j, e in enumerate(errs) if e is not None]

    def stats(self) -> dict[str, Any]:
        """Time spent decoding in Python; whether Pillow-SIMD is loaded (pillow)."""
        out: dict[str, Any] = {"fallback_decoded": 0, "python_decode_s": self.decode_s}
        if hasattr(self.decoder, "simd"):
            out["pillow_simd"] = self.decoder.simd
        return out

    def close(self) -> None:
        """Releases the decoder's threads or pipelines."""
        self.decoder.close()


def dali_available() -> bool:
    """True when NVIDIA DALI imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> dali on CUDA when installed, else native; other names are checked and returned."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "auto":
        return "dali" if device.type == "cuda" and dali_available() else "native"
    return backend


@dataclass(frozen=True)
class DecodeSettings:
    """What building a strategy may need."""

    augment: Augment
    device: torch.device
    workers: int
    batch_size: int
    seed: int


def _pillow(s: DecodeSettings) -> DecodeStrategy:
    from hivedata.loader.decoders.pillow import PillowDecoder

    return PythonDecode(PillowDecoder(s.augment, threads=s.workers))


def _dali(s: DecodeSettings) -> DecodeStrategy:
    from hivedata.loader.decoders.dali import DaliDecoder

    return PythonDecode(DaliDecoder(s.augment, batch_size=s.batch_size, device=s.device.type, threads=s.workers,
                                    seed=s.seed))


STRATEGIES: dict[str, Callable[[DecodeSettings], DecodeStrategy]] = {
    "native": lambda s: NativeDecode(s.augment),
    "pillow": _pillow,
    "dali": _dali,
}


def make_strategy(backend: str, settings: DecodeSettings) -> DecodeStrategy:
    """The strategy of a resolved backend name."""
    return STRATEGIES[backend](settings)
