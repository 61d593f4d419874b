"""What every decoding backend shares: the augmentation settings and the batch-decoder protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# 64 MP (8192 x 8192): larger than any ImageNet photo by 5x, and what one decode may cost stays bounded:
# libjpeg may use 3 bytes per pixel of this budget (+16 MiB) per decode thread (a progressive JPEG keeps
# the whole image's coefficients). Pillow's own bomb limit is 2 x Image.MAX_IMAGE_PIXELS = 178,956,970.
DEFAULT_MAX_PIXELS = 1 << 26


@dataclass(frozen=True)
class Augment:
    """Training: RandomResizedCrop(scale, ratio) + horizontal flip with flip_p. Evaluation: resize the
    shorter side to out/eval_crop_ratio (256 for 224) and centre-crop out_h x out_w."""

    out_h: int = 224
    out_w: int = 224
    train: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    eval_crop_ratio: float = 0.875
    max_pixels: int = DEFAULT_MAX_PIXELS
    strict: bool = False  # any libjpeg warning refuses the file (default: counted, the file is used)

    def __post_init__(self) -> None:
        if self.out_h <= 0 or self.out_w <= 0:
            raise ValueError(f"output size must be positive, got {self.out_h}x{self.out_w}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")
        if not 0 < self.eval_crop_ratio <= 1:
            raise ValueError(f"eval_crop_ratio must be in (0, 1], got {self.eval_crop_ratio}")
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")

    def native(self) -> Any:
        """These settings as hivedata._native.AugmentParams (the one place they cross into C++)."""
        from hivedata import _native

        return _native.AugmentParams(train=self.train, out_h=self.out_h, out_w=self.out_w, scale=self.scale,
                                     ratio=self.ratio, flip_p=self.flip_p, eval_crop_ratio=self.eval_crop_ratio,
                                     max_pixels=self.max_pixels, strict=self.strict)


class BatchDecoder(Protocol):
    """Decodes a batch of encoded images into a preallocated uint8 [B, H, W, 3] array."""

    name: str

    def decode(self, encoded: Sequence[memoryview], seeds: Sequence[int], out: np.ndarray,
               names: Sequence[str]) -> list[BaseException | None]:
        """Decodes encoded[i] into out[i] with the crop drawn from seeds[i]; returns each sample's error or None."""
        ...

    def close(self) -> None:
        """Releases threads or pipelines."""
        ...
