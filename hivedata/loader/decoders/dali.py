"""The ``dali`` backend: NVIDIA DALI decodes, crops, resizes and flips a batch of encoded images.

Pipeline (built at the first :meth:`DaliDecoder.decode`, rebuilt in a forked child or after DALI fails)::

    train: external_source (1-D uint8 arrays) → decoders.image_random_crop(RGB, random_area=scale,
           random_aspect_ratio=ratio, num_attempts=10) → resize(out_w x out_h, antialias)
           → flip(horizontal=random.coin_flip(flip_p))
    eval:  external_source → decoders.image(RGB) → resize(mode="not_smaller", round(out_w / eval_crop_ratio)
           x round(out_h / eval_crop_ratio): the shorter side to 256 for 224, antialias) → crop(out_h x out_w, centred)

``device="cpu"`` runs a CPU-only pipeline (``device_id=None``: no CUDA needed); ``device="cuda"``
decodes with ``"mixed"`` (nvJPEG, and the hardware JPEG decoder on A100/H100) on
``torch.cuda.current_device()`` and copies the result back into the host ``out`` array.

EXIF orientation is ignored (``adjust_orientation=False``; DALI's default is to apply it), as the
``native`` and ``pillow`` backends and torchvision's PIL loader do: every backend sees the same pixels.

Crops come from DALI's own RNG, seeded with ``seed``: ``seeds`` passed to :meth:`decode` are NOT used
for the DALI path, so DALI crops are reproducible for the same pipeline seed, batch size and batch
order, but differ from the ``native`` and ``pillow`` backends' crops for the same sample seeds.

Bad input. DALI fails the whole batch on one bad image, and the pipeline object is unusable after
that (``"Current pipeline object is no longer valid"``). So each sample is checked first, cheaply
(header parse with Pillow, no pixel decoding):

* empty, unidentifiable, unreadable header, or more than ``max_pixels`` pixels → that sample's
  error is reported, and it is left out of the DALI batch (DALI accepts batches smaller than
  ``batch_size``, so nothing is padded; ``out[i]`` is zeroed);
* decodable by Pillow but unusual for DALI — not a JPEG (a PNG named ``.JPEG``), a colour space other
  than RGB/grey (CMYK, YCCK), or no EOI marker at the end (truncated, or trailing bytes) → decoded
  by the ``pillow`` backend with ``seeds[i]`` (which reports a truncated one as corrupt);
* the rest go to DALI in chunks of at most ``batch_size``. If DALI still raises for a chunk, the
  pipeline is rebuilt (with the next seed, so the crop sequence does not replay) and that chunk is
  decoded sample by sample with the ``pillow`` backend, which reports the culprits.

A final partial batch needs no special handling (DALI's variable batch size). DALI prints its own
decoder errors to stderr; they cannot be silenced from Python.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence

import numpy as np

from hivedata.errors import BadImageError
from hivedata.loader.decoders.base import Augment
from hivedata.loader.decoders.pillow import CropFn, PillowDecoder, check_batch_args, open_image

INSTALL_HINT = "pip install nvidia-dali-cuda130"

# DALI pipelines inherited over fork() must never be destroyed in the child (their worker threads
# do not exist there and the destructor would wait for them): keep them referenced.
# Every pipeline built in this process is tracked weakly, and a forked child takes a strong reference
# to all of them at once: that covers pipelines of other decoders still waiting for the garbage
# collector, which would otherwise be destroyed (and crash) in the child.
_forked_orphans: list[object] = []
_live_pipelines: weakref.WeakSet = weakref.WeakSet()


def _orphan_inherited_pipelines() -> None:
    """In a forked child: keep every pipeline inherited from the parent alive for good."""
    _forked_orphans.extend(_live_pipelines)
    _live_pipelines.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_orphan_inherited_pipelines)


def _import_dali():
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
    except ImportError as e:
        raise ImportError(f"the dali backend needs NVIDIA DALI: {INSTALL_HINT}") from e
    return dali, fn, types


class DaliDecoder:
    """Decodes batches with an NVIDIA DALI pipeline (CPU-only, or ``mixed`` nvJPEG decoding on CUDA).

    Args:
        augment: output size and crop/flip settings.
        batch_size: the largest batch DALI is given at once (longer inputs are split; shorter ones run as is).
        device: ``"cpu"`` (CPU-only pipeline, no GPU needed) or ``"cuda"`` (nvJPEG on the current CUDA device).
        threads: DALI CPU threads and the Pillow fallback's threads; default ``os.cpu_count()``.
        seed: DALI's random seed (crops and flips); ``decode``'s per-sample seeds are not used by DALI.
        crop_fn: the crop chooser for samples decoded by the Pillow fallback (see
            :class:`~hivedata.loader.decoders.pillow.PillowDecoder`).
    """

    name = "dali"

    def __init__(self, augment: Augment, *, batch_size: int, device: str = "cpu", threads: int | None = None,
                 seed: int = 0, crop_fn: CropFn | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.augment = augment
        self.batch_size = batch_size
        self.device = device
        self.threads = threads or os.cpu_count() or 1
        self.seed = seed
        self.fallback = PillowDecoder(augment, threads=self.threads, crop_fn=crop_fn)
        self.dali_failures = 0  # how many chunks DALI refused (each one decoded by Pillow instead)
        self._pipe = None
        self._pipe_pid: int | None = None
        self._builds = 0
        self._lock = threading.Lock()  # a DALI pipeline is fed and run by one thread at a time

    # -- pipeline -----------------------------------------------------------------------------------
    def _build(self):
        dali, fn, types = _import_dali()
        aug = self.augment
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError("DaliDecoder(device='cuda') needs a CUDA device; use device='cpu'")
            device_id, decoder_device = torch.cuda.current_device(), "mixed"
        else:
            device_id, decoder_device = None, "cpu"
        pipe = dali.Pipeline(batch_size=self.batch_size, num_threads=self.threads, device_id=device_id,
                             seed=self.seed + self._builds, prefetch_queue_depth=1, exec_async=False,
                             exec_pipelined=False)
        with pipe:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            if aug.train:
                images = fn.decoders.image_random_crop(
                    encoded, device=decoder_device, output_type=types.RGB, random_area=list(aug.scale),
                    random_aspect_ratio=list(aug.ratio), num_attempts=10, adjust_orientation=False)
                images = fn.resize(images, resize_x=aug.out_w, resize_y=aug.out_h, antialias=True,
                                   interp_type=types.INTERP_LINEAR)
                if aug.flip_p > 0:
                    images = fn.flip(images, horizontal=fn.random.coin_flip(probability=aug.flip_p))
            else:
                images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB,
                                           adjust_orientation=False)
                # not_smaller: the side that binds becomes round(out / eval_crop_ratio) (256 for 224)
                images = fn.resize(images, resize_x=round(aug.out_w / aug.eval_crop_ratio),
                                   resize_y=round(aug.out_h / aug.eval_crop_ratio), mode="not_smaller",
                                   antialias=True, interp_type=types.INTERP_LINEAR)
                images = fn.crop(images, crop=(aug.out_h, aug.out_w), crop_pos_x=0.5, crop_pos_y=0.5,
                                 out_of_bounds_policy="pad")
            pipe.set_outputs(images)
        pipe.build()
        _live_pipelines.add(pipe)
        self._builds += 1
        return pipe

    def _pipeline(self):
        pid = os.getpid()
        if self._pipe is not None and self._pipe_pid != pid:
            _forked_orphans.append(self._pipe)
            self._pipe = None
        if self._pipe is None:
            self._pipe = self._build()
            self._pipe_pid = pid
        return self._pipe

    def _discard_pipeline(self) -> None:
        pipe, self._pipe = self._pipe, None
        del pipe  # a pipeline that raised cannot run again

    def _run_dali(self, pipe, arrays: list[np.ndarray]) -> np.ndarray:
        pipe.feed_input("encoded", arrays)
        (images,) = pipe.run()
        if self.device == "cuda":
            images = images.as_cpu()
        return images.as_array()

    # -- decoding -----------------------------------------------------------------------------------
    def decode(self, encoded: Sequence[memoryview], seeds: Sequence[int], out: np.ndarray,
               names: Sequence[str]) -> list[BaseException | None]:
        """Decodes ``encoded[i]`` into ``out[i]``; returns each sample's error or None (see the module docstring)."""
        n = len(encoded)
        check_batch_args(self.augment, n, seeds, out, names)
        errors: list[BaseException | None] = [None] * n
        to_dali: list[int] = []
        to_pillow: list[int] = []
        for i in range(n):
            route = self._triage(encoded[i], names[i])
            if isinstance(route, BaseException):
                errors[i] = route
                out[i] = 0
            elif route == "dali":
                to_dali.append(i)
            else:
                to_pillow.append(i)
        with self._lock:
            for start in range(0, len(to_dali), self.batch_size):
                chunk = to_dali[start:start + self.batch_size]
                arrays = [np.frombuffer(encoded[i], dtype=np.uint8) for i in chunk]
                pipe = self._pipeline()  # outside the try: a missing DALI or CUDA is the caller's error
                try:
                    images = self._run_dali(pipe, arrays)
                except Exception:  # noqa: BLE001 - a bad image DALI could not be warned about: let Pillow tell
                    self._discard_pipeline()
                    self.dali_failures += 1
                    to_pillow.extend(chunk)
                    continue
                out[chunk] = images
        if to_pillow:
            to_pillow.sort()
            fallback_errors = self.fallback.decode_indices(to_pillow, encoded, seeds, out, names)
            for i, err in zip(to_pillow, fallback_errors, strict=True):
                errors[i] = err
        return errors

    def _triage(self, data, name: str) -> str | BaseException:
        """``"dali"``, ``"pillow"`` or the sample's error, from the header alone."""
        try:
            img = open_image(data, name, self.augment.max_pixels)
        except BadImageError as e:
            return e
        except Exception:  # noqa: BLE001 - let the Pillow path produce the precise error
            return "pillow"
        try:
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return "pillow"
            tail = bytes(data[-2:])
            return "dali" if tail == b"\xff\xd9" else "pillow"
        finally:
            img.close()

    def close(self) -> None:
        """Releases the DALI pipeline and the Pillow fallback's threads."""
        with self._lock:
            if self._pipe is not None and self._pipe_pid != os.getpid():
                _forked_orphans.append(self._pipe)
                self._pipe = None
            self._discard_pipeline()
        self.fallback.close()

    def __enter__(self) -> DaliDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"DaliDecoder(batch_size={self.batch_size}, device={self.device!r}, threads={self.threads}, "
                f"seed={self.seed}, augment={self.augment})")
