"""`python -m hivedata verify URL`: every broken image of a dataset, in one pass, so it can be cleaned once.

Every sample is read with the same machinery as training (open_source, the native pipeline: GETs,
shard ranges, crc32c checks, local reads) and decoded whole with the strict checks: truncated or corrupt
data and any libjpeg warning fail it, whatever crop training would draw. A non-JPEG (a PNG named .JPEG)
is fine when Pillow decodes it, as the loader's fallback does. Unreadable samples (404, checksum) are
broken too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hivedata.errors import NotJpegError

VERIFY_SIZE = 32  # output side: the file is decoded through EOI whatever the output; small is cheap


@dataclass
class VerifyReport:
    """What verify found: (name, reason) per broken sample, out of `checked`."""

    checked: int = 0
    broken: list[tuple[str, str]] = field(default_factory=list)
    fallback: int = 0  # not JPEG, decoded by Pillow

    def summary(self) -> str:
        """One line: how many were checked and how many are broken."""
        extra = f", {self.fallback} decoded by the Pillow fallback (not JPEG)" if self.fallback else ""
        return f"checked {self.checked} images: {len(self.broken)} broken{extra}"


def _reason(name: str, exc: BaseException) -> str:
    text = str(exc)
    while text.startswith(name + ": "):  # the pipeline and the binding each prefix the name
        text = text[len(name) + 2:]
    return f"{type(exc).__name__}: {text}"


def verify(url: str, *, endpoint: str | None = None, credentials: Any = "auto", labels: str | None = None,
           batch_size: int = 64, threads: int | None = None, max_pixels: int | None = None,
           in_flight: int = 4) -> Iterator[tuple[str, str] | VerifyReport]:
    """Yields (name, reason) per broken sample as found, then the VerifyReport."""
    import os

    from hivedata.gcs.auth import token_source
    from hivedata.gcs.paths import storage_endpoint
    from hivedata.gcs.transport import Transport
    from hivedata.loader.decoders.base import DEFAULT_MAX_PIXELS, Augment
    from hivedata.loader.decoders.pillow import PillowDecoder
    from hivedata.loader.pipeline import Pipeline
    from hivedata.sources.resolve import SourceOptions, open_source

    ep = storage_endpoint(endpoint)
    tokens = token_source(credentials, ep)
    source = open_source(url, SourceOptions(ep, tokens, None, labels))
    aug = Augment(out_h=VERIFY_SIZE, out_w=VERIFY_SIZE, train=False, strict=True,
                  max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    pipe = Pipeline(endpoint=ep, augment=aug, decode=True, threads=threads or os.cpu_count() or 1,
                    transport=Transport(), tokens=tokens)
    fallback = PillowDecoder(Augment(out_h=VERIFY_SIZE, out_w=VERIFY_SIZE, train=False), threads=1)
    report = VerifyReport()
    pending: dict[int, tuple[np.ndarray, Any, np.ndarray, np.ndarray]] = {}
    n = len(source)
    starts = list(range(0, n, batch_size))
    try:
        while starts or pending:
            while starts and len(pending) < in_flight:
                first = starts.pop(0)
                indices = np.arange(first, min(n, first + batch_size))
                plan = source.plan(indices)
                arena = plan.arena if plan.arena is not None else np.empty(plan.arena_size, np.uint8)
                plan = source.prefill(plan, arena)
                out = np.empty((len(indices), VERIFY_SIZE, VERIFY_SIZE, 3), np.uint8)
                pending[first] = (indices, plan, arena, out)
                pipe.submit(first, plan, [0] * len(indices), arena, out)
            r = pipe.poll(timeout=None)
            indices, plan, arena, out = pending.pop(r.batch_id)
            report.checked += len(indices)
            for j, exc in sorted(r.failed, key=lambda f: f[0]):
                name = source.describe(int(indices[j]))
                if isinstance(exc, NotJpegError) and r.nbytes[j] > 0:
                    off = int(plan.offsets[j])
                    err = fallback.decode([memoryview(arena)[off:off + r.nbytes[j]]], [0], out[j:j + 1], [name])[0]
                    if err is None:
                        report.fallback += 1
                        continue
                broken = (name, _reason(name, exc))
                report.broken.append(broken)
                yield broken
    finally:
        pipe.drain()
        pipe.close()
        fallback.close()
    yield report
