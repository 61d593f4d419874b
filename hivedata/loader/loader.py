"""hivedata.Loader: training-ready batches streamed from a SampleSource (a bucket, shards, a folder, memory)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from hivedata import _native
from hivedata.common import UsableCpus, usable_cpus
from hivedata.errors import HivedataError
from hivedata.gcs.auth import token_source
from hivedata.gcs.paths import storage_endpoint
from hivedata.gcs.tls import trust
from hivedata.gcs.transport import Transport
from hivedata.loader.coverage import BatchFeed
from hivedata.loader.decoders.base import DEFAULT_MAX_PIXELS, Augment
from hivedata.loader.decoders.strategy import (
    DecodeSettings,
    DecodeStrategy,
    FetchedBatch,
    make_strategy,
    resolve_backend,
)
from hivedata.loader.failures import FailurePolicy
from hivedata.loader.pipeline import BatchResult, Pipeline
from hivedata.loader.readahead import AUTO_MAX, ReadAhead
from hivedata.loader.ring import Ring, to_device
from hivedata.loader.sampler import EpochSampler
from hivedata.sources.base import SampleSource
from hivedata.sources.memory import MemorySource
from hivedata.sources.read_plan import DEFAULT_MAX_GAP, ReadPlan
from hivedata.sources.resolve import SourceOptions, open_source

log = logging.getLogger(__name__)
READAHEAD_BYTES = 2 << 30  # slot memory (decoded images + encoded bytes) that prefetch="auto" may grow to
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class Loader:
    """Batches of (images, labels) from a SampleSource, fetched, decoded and augmented natively.

    Sources (hivedata.sources.open_source): gs://bucket/prefix (ILSVRC class folders, or a flat folder with
    `labels`; one GET per image), gs://.../<name>.index.npz (shards written by `python -m hivedata pack`),
    gs://.../folder/*.tar (any WebDataset shards: headers read once, index cached locally), a local folder
    (file://... or a path) in the ILSVRC layout, or any SampleSource object (Index, ShardIndex, MemorySource).

    Configuration guide (keyword-only):
      batch_size, train   train=True: RandomResizedCrop + flip, shuffled, drop_last; False: resize the
                          shorter side to image_size/eval_crop_ratio, centre crop, in order, keep the tail.
      image_size          output side (int) or (height, width).
      backend             "native" (C++ libjpeg-turbo), "pillow" (Pillow/Pillow-SIMD in threads),
                          "dali" (NVIDIA DALI), "auto" (dali on CUDA when installed, else native).
      device              "cpu", "cuda[:n]" (async copy from pinned slots, normalised on the GPU), "mps".
      seed                the order and every sample's crop derive from (seed, epoch, sample index).
      shuffle             True/"global" (default when training), False/"none", or "block": runs of
                          block_size consecutive samples (never crossing a shard) are permuted and samples
                          shuffled within shuffle_window positions (default: a batch), so a batch's
                          samples share a few coalesced GETs; made for packed shards.
      coalesce_gap        shard members at most this many bytes apart share one ranged GET.
      cache_dir           a local disk cache of fetched bytes (size-bounded LRU by cache_size, shared
                          safely by processes); None: no cache.
      workers             decode threads (default: the CPUs this process may use: its CPU affinity, lowered to a
                          cgroup CPU quota; see hivedata.common.usable_cpus). LoaderDataset divides them among
                          DataLoader workers. stats()["budget"] reports threads, max_in_flight and the source.
      max_in_flight       cap on concurrent GETs (None: the transport's, 256); what is in flight follows the
                          read-ahead. Given with a transport, the two must agree.
      ca_bundle           PEM file of CAs to trust for the endpoint (a private CA, a TLS proxy); else
                          REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE / SSL_CERT_FILE, else the system store.
      http_version        "2" (HTTP/2 over TLS, streams spread over a few connections) or "1.1";
                          transport: a hivedata.gcs.transport.Transport for every other knob.
      prefetch            batches prepared ahead; the ring holds prefetch + 2 slots. "auto" (default): 2, grown
                          by Little's law (consumer rate x fetch p99 + decode time) whenever the consumer
                          waits, within 2 GiB of slot memory (at most 16 batches).
      strict              True: an image libjpeg warns about (extraneous bytes, a bad progression) is a bad
                          image too; False (default, like Pillow): warnings are counted and named in stats()
                          ("decode_warnings", "warned") and the image is used. Truncation is always an error.
      on_error            what to do with an image that arrived but does not decode (BadImageError): "skip" (it
                          is replaced by a copy of a good one from the same batch and counted in stats()
                          "skipped"), "raise", or a callable(exc) that raises to stop or returns to skip.
      max_missing         samples per epoch that may fail to download (HTTP 401/403/404/410, network errors,
                          checksum mismatches after retries): a fraction of the epoch's samples (float in (0, 1),
                          rounded down) or a count (int). 0 (default): the first one raises, naming it. Within
                          the budget they are replaced like skipped ones, counted in stats() "missing" and
                          logged; on_error does not apply to them. The count restarts with every epoch.
      dtype / channels_last / normalize / mean / std   the output format (uint8 when normalize=False).
      classes, labels     class map and labels file for validation sets (see hivedata.sources.prefix.load_index).
      in_memory           read every sample once into RAM, then decode from there.
      shard, num_shards   keep every num_shards-th batch (DataLoader workers, data-parallel ranks).
      feed                where batches come from instead of this loader's own order: a BatchFeed (e.g. a
                          hivedata.loader.coverage.BlockFeed over blocks a swarm's peers claim), asked lazily for
                          the next batch as read-ahead allows and told when each batch reached the consumer. An
                          iteration reads len(loader) batches; `shuffle`/`seed` then only set the crops' seeds.
    """

    def __init__(self, source: str | SampleSource, *, batch_size: int, train: bool,
                 image_size: int | tuple[int, int] = 224, backend: str = "auto", device: str | torch.device = "cpu",
                 seed: int = 0, shuffle: bool | str | None = None, drop_last: bool | None = None,
                 workers: int | None = None, prefetch: int | str = "auto",
                 on_error: str | Callable[[BaseException], Any] = "skip", max_missing: int | float = 0,
                 classes: list[str] | None = None, labels: str | None = None, endpoint: str | None = None,
                 credentials: Any = "auto", dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 normalize: bool = True, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5, eval_crop_ratio: float = 0.875,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_in_flight: int | None = None, in_memory: bool = False,
                 shard: int = 0, num_shards: int = 1, block_size: int = 64, shuffle_window: int | None = None,
                 coalesce_gap: int = DEFAULT_MAX_GAP, cache_dir: str | os.PathLike | None = None,
                 cache_size: int | str = "20GB", ca_bundle: str | os.PathLike | None = None,
                 http_version: str = "2", transport: Transport | None = None, strict: bool = False,
                 feed: BatchFeed | None = None) -> None:
        self.failures = FailurePolicy(on_error, max_missing)
        ReadAhead(prefetch)  # checks the value before any work
        if in_memory and cache_dir is not None:
            raise ValueError("in_memory=True reads everything once; a disk cache (cache_dir) does not apply")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA device")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.augment = Augment(out_h=h, out_w=w, train=train, scale=scale, ratio=ratio,
                               flip_p=flip_p if train else 0.0, eval_crop_ratio=eval_crop_ratio, max_pixels=max_pixels,
                               strict=strict)
        self.endpoint = storage_endpoint(endpoint)
        if ca_bundle is not None:  # every client of this endpoint (listing, metadata, shards) trusts it too
            trust(self.endpoint, ca_bundle)
        if transport is not None and max_in_flight is not None and max_in_flight != transport.max_in_flight:
            raise ValueError(f"max_in_flight={max_in_flight} but the transport has "
                             f"max_in_flight={transport.max_in_flight}: give one of them")
        in_flight = {} if max_in_flight is None else {"max_in_flight": max_in_flight}
        self.transport = transport or Transport(ca_bundle=ca_bundle, http_version=http_version, **in_flight)
        self.max_in_flight = self.transport.max_in_flight
        self._tokens = token_source(credentials, self.endpoint)
        self.source: SampleSource = open_source(source, SourceOptions(self.endpoint, self._tokens, classes, labels))
        if in_memory:
            self.source = MemorySource.load(self.source, endpoint=self.endpoint, credentials=self._tokens,
                                            max_in_flight=self.max_in_flight)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.sampler = EpochSampler(len(self.source), batch_size=batch_size,
                                    shuffle=train if shuffle is None else shuffle, seed=seed,
                                    drop_last=train if drop_last is None else drop_last, shard=shard,
                                    num_shards=num_shards, block_size=block_size, window=shuffle_window,
                                    group_starts=self.source.groups())
        if self.sampler.mode == "block" and not self.source.coalesces:
            log.warning("shuffle='block' on %s reads one object per sample anyway (no fewer GETs), and runs of a "
                        "class-sorted listing make batches of few classes; it is meant for packed shards",
                        self.source.url)
        if feed is not None and num_shards != 1:
            raise ValueError("a Loader with a feed reads the feed's batches: it cannot also be sharded (num_shards)")
        self.feed = feed
        self.coalesce_gap = coalesce_gap
        self.cache = None
        if cache_dir is not None:
            from hivedata.loader.sample_cache import SampleCache

            self.cache = SampleCache(self.source, cache_dir, cache_size)
        self.backend = resolve_backend(backend, self.device)
        if workers is not None and workers < 0:
            raise ValueError(f"workers must be a count of threads (or None: the usable CPUs), not {workers}")
        cpus = usable_cpus() if not workers else UsableCpus(int(workers), "workers argument")
        self.workers = cpus.count
        # the threads and GETs this loader may use, and what set them (LoaderDataset adds its worker's share)
        self.budget: dict[str, Any] = {"threads": self.workers, "max_in_flight": self.transport.max_in_flight,
                                       "max_connections": self.transport.max_connections, "cpu_source": cpus.source}
        mean_size = int(np.mean(self.source.sizes)) if len(self.source) else 0
        slot_bytes = batch_size * (h * w * 3 + mean_size)  # decoded images + encoded bytes of one batch
        self.readahead = ReadAhead(prefetch, max_depth=max(2, min(AUTO_MAX, READAHEAD_BYTES // slot_bytes - 2)))
        self.in_memory = in_memory
        self.dtype, self.channels_last, self.normalize = dtype, channels_last, normalize
        self._mean = torch.tensor(mean, dtype=torch.float32)
        self._std = torch.tensor(std, dtype=torch.float32)
        self._epoch = 0
        self._position = 0  # batches of this epoch already yielded
        self._pipeline: Pipeline | None = None
        self._decode: DecodeStrategy | None = None
        self._ring: Ring | None = None
        self._in_flight: dict[int, tuple[int, np.ndarray, ReadPlan, np.ndarray, list[int]]] = {}
        self._pid = os.getpid()
        self._stats = {"batches": 0, "samples": 0, "wait_s": 0.0, "ready_on_arrival": 0, "slots_busy_sum": 0}
        self._t_start: float | None = None

    @property
    def prefetch(self) -> int:
        """Batches prepared ahead now (grows with prefetch="auto")."""
        return self.readahead.depth

    @property
    def index(self) -> SampleSource:
        """The source (its older name)."""
        return self.source

    # -- sizes and state --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads."""
        return self._epoch

    @property
    def data_epoch(self) -> int:
        """The data epoch: the feed's (with coordinated coverage, the swarm's), else the epoch read next."""
        return self.feed.epoch if self.feed is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Reads `epoch` next, from its first batch (an epoch also advances by itself when it completes)."""
        self._epoch, self._position = int(epoch), 0

    def epoch_samples(self) -> int:
        """Samples this loader yields in an epoch (its shard's batches; the short last one when it keeps it)."""
        s = self.sampler
        total = s.total_batches()
        n = len(self) * s.batch_size
        tail = s.n % s.batch_size
        if not s.drop_last and tail and (total - 1) % s.num_shards == s.shard:
            n -= s.batch_size - tail
        return n

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: resuming from it yields exactly the remaining batches of the epoch (with a
        feed: the feed's state, e.g. the swarm's data epoch; the feed decides what is read next)."""
        state = {"epoch": self._epoch, "position": self._position, "seed": self.seed,
                 "num_samples": len(self.source), "batch_size": self.batch_size, "shard": self.sampler.shard,
                 "num_shards": self.sampler.num_shards, "order": self._order_name()}
        if self.feed is not None:
            state |= {"epoch": self.feed.epoch, "position": 0, "feed": self.feed.state_dict()}
        return state

    def _order_name(self) -> str:
        return self.feed.describe() if self.feed is not None else self.sampler.describe()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state_dict(); refuses one taken on another dataset, batch size, seed, order or sharding."""
        order = state.get("order", "global" if self.sampler.mode == "global" else "none")  # older states: no key
        if (self.feed is None) != ("feed" not in state):
            raise ValueError(f"loader state has order {order!r}, this loader has {self._order_name()!r}: a state "
                             f"taken with a feed (coordinated coverage) resumes only with one, and one without only "
                             f"without (train.py: the same --coverage)")
        if order != self._order_name():
            raise ValueError(f"loader state has order {order!r}, this loader has {self._order_name()!r}")
        for key, mine in (("num_samples", len(self.source)), ("batch_size", self.batch_size), ("seed", self.seed),
                          ("shard", self.sampler.shard), ("num_shards", self.sampler.num_shards)):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"loader state has {key}={state[key]}, this loader has {mine}")
        if not 0 <= int(state["position"]) <= len(self):
            raise ValueError(f"loader state position {state['position']} is outside 0..{len(self)}")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])
        if self.feed is not None:
            self.feed.load_state_dict(state["feed"])

    def stats(self) -> dict[str, Any]:
        """Per-stage figures: fetch (objects, bytes, retries, latency p50/p99), decode time, slot use, bad images
        skipped and unreadable samples replaced (missing), and the thread/GET budget it runs under ("budget")."""
        out: dict[str, Any] = dict(self._stats)
        out |= self._decode.stats() if self._decode is not None else {"fallback_decoded": 0, "python_decode_s": 0.0}
        if self._pipeline is not None:
            out |= self._pipeline.stats()
        out |= self.failures.stats()
        out["backend"] = self.backend
        out["slots"] = len(self._ring) if self._ring else self.prefetch + 2
        out["prefetch"] = self.prefetch
        out["budget"] = dict(self.budget)
        # mean share of the ring holding batches in flight when the consumer asked for the next one
        out["slot_occupancy"] = out.pop("slots_busy_sum") / max(1, out["batches"]) / out["slots"]
        if self._t_start is not None and out["samples"]:
            out["images_per_s"] = out["samples"] / (time.perf_counter() - self._t_start)
        if self.cache is not None:
            out["cache"] = self.cache.stats()
        return out

    # -- machinery --------------------------------------------------------------------------------------
    def _setup(self) -> None:
        if os.getpid() != self._pid:  # forked: rebuild everything that holds threads
            self._pipeline = self._decode = None
            self._pid = os.getpid()
        if self._decode is None:
            self._decode = make_strategy(self.backend, DecodeSettings(self.augment, self.device, self.workers,
                                                                       self.batch_size, self.seed))
        if self._pipeline is None:
            self._pipeline = Pipeline(endpoint=self.endpoint, augment=self.augment, decode=self._decode.fused,
                                      threads=self.workers, transport=self.transport, tokens=self._tokens)
        if self._ring is None:
            pin = self.device.type == "cuda"
            self._ring = Ring(self.prefetch + 2, self.batch_size, self.augment.out_h, self.augment.out_w, pin=pin)

    def _submit(self, batch_no: int, k: int, indices: np.ndarray, epoch: int | np.ndarray) -> None:
        """Plans batch `batch_no` (samples `indices` of data epoch `epoch`, one or per sample) into slot k and hands
        it to the pipeline."""
        slot = self._ring.slots[k]
        plan = self.source.plan(indices, max_gap=self.coalesce_gap)
        arena = plan.arena if plan.arena is not None else slot.ensure_arena(plan.arena_size)
        if self.cache is not None:  # cache hits land in the arena now and need no GET
            present = self.cache.fill(indices, arena, plan.offsets, plan.sizes)
            if present.any():
                plan = self.source.plan(indices, present, max_gap=self.coalesce_gap)
        plan = self.source.prefill(plan, arena)
        epochs = epoch.tolist() if isinstance(epoch, np.ndarray) else [epoch] * len(indices)
        seeds = [_native.sample_seed(self.seed, e, i) for e, i in zip(epochs, indices.tolist(), strict=True)]
        self._in_flight[batch_no] = (k, indices, plan, arena, seeds)
        self._pipeline.submit(batch_no, plan, seeds, arena, slot.images.numpy() if self._decode.fused else None)

    def _finish(self, r: BatchResult) -> tuple[int, np.ndarray]:
        """Decodes (if not fused), caches and repairs batch r in its slot; returns (slot, labels)."""
        k, indices, plan, arena, seeds = self._in_flight.pop(r.batch_id)
        nbytes, failed = list(r.nbytes), list(r.failed)
        if self.cache is not None:
            self.cache.store(plan, indices, arena, nbytes, failed)
        images = self._ring.slots[k].images.numpy()
        names = [self.source.describe(i) for i in indices.tolist()] if failed or not self._decode.fused else []
        failed = self._decode.finish(FetchedBatch(arena, plan.offsets, nbytes, seeds, names, images, failed))
        labels = self.source.labels[indices].astype(np.int64)
        if failed:
            self.failures.apply(failed, images, labels, lambda j: names[j])
        return k, labels

    def _arrival_s(self) -> float:
        """How long one batch takes to arrive: the fetch latency p99 plus its decode time on the workers."""
        st = self._pipeline.stats()
        decode = st["decode_s"] / max(1, st["decoded"]) * self.batch_size / max(1, self.workers)
        return st["fetch_latency_p99_s"] + decode

    def _batch_stream(self, epoch: int, start: int) -> tuple[Iterator[tuple[np.ndarray, Any]], int]:
        """This iteration's batches as (indices, data epoch), produced lazily, and at most how many there are."""
        if self.feed is not None:
            return self.feed.batches(), len(self)
        return ((indices, epoch) for indices in self.sampler.batches(epoch, start)), len(self) - start

    def _drain(self) -> None:
        if self._pipeline is not None:
            self._pipeline.drain()
        self._in_flight.clear()
        if self._ring is not None:
            self._ring.reset()

    # -- iteration --------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._setup()
        self._drain()
        epoch, start = self._epoch, (self._position if self.feed is None else 0)  # a feed knows where it stands
        stream, total = self._batch_stream(epoch, start)
        if start == 0 or self.failures.epoch != epoch:  # an epoch starts (or resumes here): a fresh budget
            self.failures.start_epoch(epoch, self.epoch_samples())
        ring = self._ring
        done: dict[int, BatchResult] = {}
        submitted = 0
        finished = False
        if self._t_start is None:
            self._t_start = time.perf_counter()
        b = 0
        try:
            while b < total:
                while submitted < total and submitted <= b + self.prefetch:  # look ahead, lazily
                    k = ring.acquire()
                    if k is None:
                        break
                    nxt = next(stream, None)
                    if nxt is None:  # a feed ran dry: this iteration ends with what was submitted
                        ring.release(k)
                        total = submitted
                        break
                    self._submit(submitted, k, *nxt)
                    submitted += 1
                if b >= total:
                    break
                t0 = time.perf_counter()
                self._stats["slots_busy_sum"] += len(self._in_flight)
                if b in done:
                    self._stats["ready_on_arrival"] += 1
                while b not in done:
                    r = self._pipeline.poll()
                    if r is None:
                        raise HivedataError("the pipeline lost a batch (nothing outstanding)")
                    done[r.batch_id] = r
                waited = time.perf_counter() - t0
                self._stats["wait_s"] += waited
                if waited > 1e-3 and self.readahead.auto:
                    ring.grow(self.readahead.waited(self._arrival_s()) + 2)
                k, labels = self._finish(done.pop(b))
                n = len(labels)
                images = to_device(ring.slots[k].images[:n], self.device, dtype=self.dtype,
                                   channels_last=self.channels_last, normalize=self.normalize, mean=self._mean,
                                   std=self._std, slot=ring.slots[k])
                ring.release(k)
                labels_t = torch.from_numpy(labels)
                if self.device.type != "cpu":
                    labels_t = labels_t.to(self.device, non_blocking=True)
                self._position = start + b + 1
                self._stats["batches"] += 1
                self._stats["samples"] += n
                self.readahead.consumed()
                if self.feed is not None:
                    self.feed.delivered(n)
                b += 1
                yield images, labels_t
            finished = True
            self.failures.end_epoch()
            self._epoch, self._position = (epoch + 1 if self.feed is None else self.feed.epoch), 0
            if self.cache is not None:  # the next epoch finds this one's samples in the cache
                self.cache.flush()
        finally:
            if not finished:
                self._drain()
                if self.feed is not None:  # batches read ahead but not consumed are handed out again
                    self.feed.rewind()

    def close(self) -> None:
        """Stops the pipeline's threads and frees the slots (and closes the feed, if any)."""
        self._drain()
        if self.feed is not None:
            self.feed.close()
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        if self._decode is not None:
            self._decode.close()
            self._decode = None
        if self.cache is not None:
            self.cache.close()
        self._ring = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
