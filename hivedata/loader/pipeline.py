"""The native batch pipeline behind a typed front: submit a ReadPlan, poll finished batches.

Next to hivedata.gcs.fetch.Fetcher (single reads), this is what the Loader drives: per batch, the plan's
spans are fetched into the slot's arena (or are there already) and, when the pipeline decodes, every
sample is decoded, cropped and resized into the slot's images as soon as its bytes have arrived.
Samples whose crc32c the plan knows are checked before that (and before anyone caches them); one that
still mismatches after its re-reads fails with a ChecksumError (the failure policy names the sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hivedata import _native
from hivedata.gcs.auth import TokenFeed, TokenSource
from hivedata.gcs.transport import Transport
from hivedata.loader.decoders.base import Augment
from hivedata.sources.read_plan import ReadPlan

BatchResult = _native.PipelineResult  # batch_id, nbytes per sample, failed [(sample, exception)], decode_s


class Pipeline:
    """Fetch (and, with decode=True, decode) batches on native threads; the GIL is released while waiting."""

    def __init__(self, *, endpoint: str, augment: Augment, decode: bool, threads: int, transport: Transport,
                 tokens: TokenSource) -> None:
        self._native = _native.Pipeline(endpoint=endpoint, augment=augment.native(), threads=threads, decode=decode,
                                         **transport.native(endpoint))
        self._feed = TokenFeed(tokens, endpoint, self._native.set_token)

    def submit(self, batch_id: int, plan: ReadPlan, seeds: Sequence[int], arena: np.ndarray,
               out: np.ndarray | None) -> None:
        """Reads `plan` into `arena` and (decode mode) decodes sample i into out[i] with the crop of seeds[i].

        `arena` and `out` must stay untouched until the batch is polled.
        """
        self._feed.update()
        self._native.submit(batch_id, plan, seeds, arena, out)

    def poll(self, timeout: float | None = None) -> BatchResult | None:
        """The next finished batch; None when nothing is outstanding or none finished within `timeout`."""
        while True:
            r = self._native.poll(timeout=timeout)
            if r is not None or not self._native.token_wanted:
                return r
            self._feed.update(rejected=True)  # a GET was refused with 401: it waits for a fresh token

    @property
    def outstanding(self) -> int:
        """Batches submitted and not yet polled."""
        return self._native.outstanding

    def drain(self) -> None:
        """Cancels every batch in flight and waits until none is left (their buffers are free again)."""
        if self._native.outstanding:
            self._native.cancel_all()
            while self._native.outstanding:
                self._native.poll(timeout=1.0)

    def stats(self) -> dict[str, Any]:
        """Fetch, integrity and decode counters; `batches_submitted` counts what was handed to the pipeline.

        Integrity: `verified` samples matched their crc32c, `unverified` ones had none to check (whole
        objects are still checked against GCS's x-goog-hash by the fetch), `checksum_retries` GETs were
        made again for a mismatch, `checksum_errors` samples failed with ChecksumError.
        """
        s = self._native.stats()
        s["batches_submitted"] = s.pop("batches")
        return s

    def close(self) -> None:
        """Stops every native thread; nothing writes into lent buffers afterwards."""
        self._native.close()
