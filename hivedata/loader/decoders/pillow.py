"""The ``pillow`` backend: Pillow (or Pillow-SIMD) decodes, crops, resizes and flips in a thread pool.

Pillow releases the GIL while it decodes and resamples, so a thread pool scales over cores. Per
sample: parse the header, refuse oversized images before decoding, draw the crop box with
``crop_fn`` on the full-size dimensions, let libjpeg(-turbo) DCT-scale the image by 1/2, 1/4 or 1/8
when the crop is at least that many times larger than the output (``Image.draft``), then one
``resize(..., BILINEAR, box=crop)`` (antialiased: Pillow widens the filter when it downscales) and
an optional horizontal flip. This is the portable fallback: a non-JPEG that Pillow can decode (a PNG
named ``.JPEG``, as ImageNet has a few) is decoded rather than refused.

``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here: a truncated image is reported as
:class:`~hivedata.errors.CorruptImageError`. (It is a process-wide Pillow flag; if other code sets it,
Pillow pads truncated images with grey and they are no longer detected.)

Verdicts: Pillow decodes every row, so its verdict on a file never depends on the crop, and it agrees with
the native decoder on truncated files (an error) and on libjpeg's warnings such as extraneous bytes (the
file is used). It differs where Pillow cannot see: it silences libjpeg's warnings, so corrupt entropy-coded
data (a bad Huffman code) decodes to garbage without an error, warnings are not counted, and
``Augment.strict`` is not honoured here; ``python -m hivedata verify`` (native, strict) finds those files.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import numpy as np

from hivedata.errors import BadImageError, CorruptImageError, ImageTooLargeError, NotJpegError, UnsupportedImageError
from hivedata.loader.decoders.base import Augment

CropFn = Callable[..., tuple[float, float, float, float, bool]]
"""``crop_fn(width, height, sample_seed, *, train, out_h, out_w, scale, ratio, flip_p, eval_crop_ratio)
-> (x, y, w, h, flip)``: a float box in source pixels and whether to flip (``_native.choose_crop``)."""


def native_crop_fn() -> CropFn:
    """``hivedata._native.choose_crop``, looked up when first needed (the extension may lack it)."""
    try:
        from hivedata import _native

        return _native.choose_crop
    except (ImportError, AttributeError) as e:
        raise RuntimeError(
            "hivedata._native.choose_crop is not available (rebuild the extension), "
            "or pass crop_fn= (e.g. hivedata.loader.decoders.pillow.python_choose_crop)") from e


def python_choose_crop(width: int, height: int, sample_seed: int, *, train: bool, out_h: int, out_w: int,
                       scale: tuple[float, float], ratio: tuple[float, float], flip_p: float,
                       eval_crop_ratio: float) -> tuple[float, float, float, float, bool]:
    """A pure-Python ``choose_crop`` with the same geometry as the native one.

    Train: torchvision ``RandomResizedCrop.get_params`` (10 attempts, then a centre crop clamped to
    ``ratio``) and a flip with probability ``flip_p``. Its random stream is Python's
    ``random.Random(sample_seed)``, not the native one: the same seed gives a different (equally
    distributed) crop than ``_native.choose_crop``.

    Eval (no randomness, the same box as the native function): torchvision's ``Resize`` +
    ``CenterCrop`` with its integer rounding. The side that binds (the shorter one for a square output)
    is resized to ``round(out / eval_crop_ratio)`` (256 for 224), the other to ``int(size * long /
    short)``; the crop starts at ``round((resized - out) / 2)``; the box is that window in source pixels.
    Meant for tests and for running without the extension.
    """
    if not train:
        if out_w * height >= out_h * width:
            rw = round(out_w / eval_crop_ratio)
            rh = math.floor(rw * height / width)
        else:
            rh = round(out_h / eval_crop_ratio)
            rw = math.floor(rh * width / height)
        rw, rh = max(rw, out_w), max(rh, out_h)
        sx, sy = width / rw, height / rh
        left, top = round((rw - out_w) / 2), round((rh - out_h) / 2)
        return left * sx, top * sy, out_w * sx, out_h * sy, False
    rng = random.Random(sample_seed)
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            x = rng.randint(0, width - w)
            y = rng.randint(0, height - h)
            break
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            h, w = height, round(height * ratio[1])
        else:
            w, h = width, height
        x, y = (width - w) // 2, (height - h) // 2
    return float(x), float(y), float(w), float(h), rng.random() < flip_p


def _draft_factor(crop_w: float, crop_h: float, out_w: int, out_h: int) -> int:
    """The largest libjpeg DCT scale (1, 2, 4, 8) that leaves at least out_w x out_h pixels in the crop."""
    room = min(crop_w / out_w, crop_h / out_h)
    for f in (8, 4, 2):
        if room >= f:
            return f
    return 1


class PillowDecoder:
    """Decodes a batch with Pillow (Pillow-SIMD when installed) in a lazily started thread pool.

    Args:
        augment: output size and crop/flip settings (:class:`~hivedata.loader.decoders.base.Augment`).
        threads: decoding threads; default ``os.cpu_count()``. The pool starts at the first
            :meth:`decode` and is restarted in a forked child.
        crop_fn: chooses each sample's crop; default ``hivedata._native.choose_crop`` (looked up at
            first use), or :func:`python_choose_crop`.

    A sample that cannot be decoded leaves ``out[i]`` zeroed and returns its
    :class:`~hivedata.errors.BadImageError`; :meth:`decode` itself raises only for a caller mistake
    (mismatched lengths, a wrong ``out`` array).
    """

    name = "pillow"

    def __init__(self, augment: Augment, *, threads: int | None = None, crop_fn: CropFn | None = None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.augment = augment
        self.threads = threads or os.cpu_count() or 1
        self._crop_fn = crop_fn
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None

    # -- properties ---------------------------------------------------------------------------------
    @property
    def simd(self) -> bool:
        """Whether the PIL in use is Pillow-SIMD (:func:`hivedata.loader.decoders.simd.pillow_is_simd`)."""
        from hivedata.loader.decoders.simd import pillow_is_simd

        return pillow_is_simd()

    @property
    def pil_version(self) -> str:
        from hivedata.loader.decoders.simd import pil_version

        return pil_version()

    @property
    def crop_fn(self) -> CropFn:
        if self._crop_fn is None:
            self._crop_fn = native_crop_fn()
        return self._crop_fn

    # -- decoding -----------------------------------------------------------------------------------
    def decode(self, encoded: Sequence[memoryview], seeds: Sequence[int], out: np.ndarray,
               names: Sequence[str]) -> list[BaseException | None]:
        """Decodes ``encoded[i]`` into ``out[i]`` with the crop drawn from ``seeds[i]``; returns per-sample errors."""
        n = len(encoded)
        check_batch_args(self.augment, n, seeds, out, names)
        return self.decode_indices(range(n), encoded, seeds, out, names)

    def decode_indices(self, indices: Sequence[int], encoded: Sequence[memoryview], seeds: Sequence[int],
                       out: np.ndarray, names: Sequence[str]) -> list[BaseException | None]:
        """Like :meth:`decode` for the samples ``indices`` only (no argument checks); errors in that order."""
        if len(indices) == 0:
            return []
        crop_fn = self.crop_fn  # resolve once, in the caller's thread: a missing extension raises here
        if len(indices) == 1 or self.threads == 1:
            return [self.decode_one(encoded[i], seeds[i], out[i], names[i], crop_fn) for i in indices]
        pool = self._get_pool()
        futures = [pool.submit(self.decode_one, encoded[i], seeds[i], out[i], names[i], crop_fn) for i in indices]
        return [f.result() for f in futures]

    def decode_one(self, data, seed: int, out: np.ndarray, name: str,
                   crop_fn: CropFn | None = None) -> BaseException | None:
        """Decodes one sample into ``out`` (an ``[H, W, 3]`` uint8 view); returns its error or None. Never raises."""
        try:
            _decode_into(data, seed, out, name, self.augment, crop_fn or self.crop_fn)
            return None
        except BadImageError as e:
            out[...] = 0
            return e
        except Exception as e:  # noqa: BLE001 - a hostile image must not take the batch down
            out[...] = 0
            err = CorruptImageError(f"{name}: cannot decode image: {type(e).__name__}: {e}", object=name)
            err.__cause__ = e
            return err

    def _get_pool(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        if self._pool is None or self._pool_pid != pid:
            # in a forked child the parent's worker threads do not exist: start a new pool, drop the old one
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="hivedata-pillow")
            self._pool_pid = pid
        return self._pool

    def close(self) -> None:
        """Stops the thread pool (a later :meth:`decode` starts a new one)."""
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.shutdown(wait=True)

    def __enter__(self) -> PillowDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PillowDecoder(threads={self.threads}, augment={self.augment})"


def check_batch_args(augment: Augment, n: int, seeds: Sequence[int], out: np.ndarray, names: Sequence[str]) -> None:
    """Raises ValueError for a caller mistake: mismatched lengths or an ``out`` that cannot hold the batch."""
    if len(seeds) != n or len(names) != n:
        raise ValueError(f"encoded, seeds and names differ in length: {n}, {len(seeds)}, {len(names)}")
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 4:
        raise ValueError("out must be a uint8 numpy array of shape [B, H, W, 3]")
    if out.shape[1:] != (augment.out_h, augment.out_w, 3):
        raise ValueError(f"out has shape {out.shape}, expected [B, {augment.out_h}, {augment.out_w}, 3]")
    if out.shape[0] < n:
        raise ValueError(f"out holds {out.shape[0]} samples, the batch has {n}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")


def open_image(data, name: str, max_pixels: int):
    """``Image.open`` on the bytes (header only, nothing decoded); maps Pillow's refusals to hivedata errors."""
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise NotJpegError(f"{name}: empty object (0 bytes)", object=name)
    try:
        img = Image.open(BytesIO(data))
    except UnidentifiedImageError as e:
        raise NotJpegError(f"{name}: not an image Pillow can identify ({len(data)} bytes, "
                           f"starts {bytes(data[:4])!r})", object=name) from e
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}", object=name) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise CorruptImageError(f"{name}: unreadable image header: {e}", object=name) from e
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"{name}: image has no pixels ({width}x{height})", object=name)
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit "
                                 f"of {max_pixels}", object=name)
    return img


def _decode_into(data, seed: int, out: np.ndarray, name: str, aug: Augment, crop_fn: CropFn) -> None:
    from PIL import Image

    img = open_image(data, name, aug.max_pixels)
    width, height = img.size
    x, y, w, h, flip = crop_fn(width, height, int(seed), train=aug.train, out_h=aug.out_h, out_w=aug.out_w,
                               scale=tuple(aug.scale), ratio=tuple(aug.ratio), flip_p=aug.flip_p,
                               eval_crop_ratio=aug.eval_crop_ratio)
    # clamp to the image: a box outside it would make Pillow sample edge pixels repeatedly
    x0, y0 = min(max(float(x), 0.0), width - 1.0), min(max(float(y), 0.0), height - 1.0)
    x1, y1 = min(max(x0 + float(w), x0 + 1.0), float(width)), min(max(y0 + float(h), y0 + 1.0), float(height))
    factor = _draft_factor(x1 - x0, y1 - y0, aug.out_w, aug.out_h)
    if factor > 1:  # JPEG and MPO only; other formats' draft() does nothing and returns None
        drafted = img.draft("RGB", (max(1, width // factor), max(1, height // factor)))
        if drafted is not None:  # scale = full width / drafted width: the box lives in the reduced image now
            s = width / drafted[1][2]
            x0, y0, x1, y1 = x0 / s, y0 / s, min(x1 / s, img.size[0]), min(y1 / s, img.size[1])
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}", object=name) from e
    except OSError as e:  # "image file is truncated", "broken data stream", "decoder error -2", ...
        raise CorruptImageError(f"{name}: corrupt or truncated image: {e}", object=name) from e
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")  # L, CMYK (incl. Adobe inverted), YCbCr, P, RGBA, I;16 ...
        except ValueError as e:
            raise UnsupportedImageError(f"{name}: cannot convert mode {img.mode} to RGB: {e}", object=name) from e
    img = img.resize((aug.out_w, aug.out_h), Image.BILINEAR, box=(x0, y0, x1, y1))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    out[...] = np.asarray(img)
