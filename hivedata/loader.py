"""hivedata.Loader: training-ready batches streamed from a bucket (or memory) onto the device."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from . import _native
from .auth import TokenSource
from .backends.base import DEFAULT_MAX_PIXELS, Augment, BatchDecoder
from .errors import HivedataError, NotJpegError
from .gcs_paths import storage_endpoint
from .index import Index, load_index
from .read_plan import DEFAULT_MAX_GAP, ReadPlan, plan_ranges, plan_whole_objects
from .ring import Ring, to_device
from .sampler import EpochSampler
from .shard_index import ShardIndex, load_existing_shards, load_shard_index

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
BACKENDS = ("auto", "native", "pillow", "dali")
SKIPPED_NAMES_KEPT = 100


def _dali_available() -> bool:
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
        return "dali" if device.type == "cuda" and _dali_available() else "native"
    return backend


class Loader:
    """Batches of (images, labels) from a gs:// prefix or an Index, decoded and augmented natively.

    Sources: gs://bucket/prefix (ILSVRC class folders, one GET per image), gs://.../<name>.index.npz
    (shards written by `python -m hivedata pack`), gs://.../folder/*.tar (any WebDataset shards: their
    headers are read once and the index cached locally), or an Index / ShardIndex.

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
      workers             decode threads (default: all cores); max_in_flight: concurrent GETs.
      prefetch            batches prepared ahead; the ring holds prefetch + 2 slots.
      on_error            "skip" (a bad sample is replaced by a copy of a good one from the same batch and
                          counted in stats()), "raise", or a callable(exc) that raises to stop or returns to skip.
      dtype / channels_last / normalize / mean / std   the output format (uint8 when normalize=False).
      classes, labels     class map and labels file for validation sets (see hivedata.index.load_index).
      in_memory           read every object once into RAM, then decode from there.
      shard, num_shards   keep every num_shards-th batch (DataLoader workers, data-parallel ranks).
    """

    def __init__(self, source: str | Index, *, batch_size: int, train: bool, image_size: int | tuple[int, int] = 224,
                 backend: str = "auto", device: str | torch.device = "cpu", seed: int = 0,
                 shuffle: bool | str | None = None, drop_last: bool | None = None, workers: int | None = None,
                 prefetch: int = 2, on_error: str | Callable[[BaseException], Any] = "skip",
                 classes: list[str] | None = None, labels: str | None = None, endpoint: str | None = None,
                 credentials: Any = "auto", dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 normalize: bool = True, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5, eval_crop_ratio: float = 0.875,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_in_flight: int = 64, in_memory: bool = False,
                 shard: int = 0, num_shards: int = 1, block_size: int = 64, shuffle_window: int | None = None,
                 coalesce_gap: int = DEFAULT_MAX_GAP, cache_dir: str | os.PathLike | None = None,
                 cache_size: int | str = "20GB") -> None:
        if on_error not in ("skip", "raise") and not callable(on_error):
            raise ValueError(f"on_error must be 'skip', 'raise' or a callable, not {on_error!r}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA device")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.augment = Augment(out_h=h, out_w=w, train=train, scale=scale, ratio=ratio,
                               flip_p=flip_p if train else 0.0, eval_crop_ratio=eval_crop_ratio, max_pixels=max_pixels)
        self.endpoint = storage_endpoint(endpoint)
        self._tokens = TokenSource(credentials, endpoint=self.endpoint)
        if isinstance(source, (Index, ShardIndex)):
            self.index = source
        elif isinstance(source, str) and source.endswith(".index.npz"):  # packed shards (hivedata pack)
            self.index = load_shard_index(source, endpoint=self.endpoint, credentials=self._tokens)
        elif isinstance(source, str) and source.endswith("/*.tar"):  # any WebDataset shards: indexed once, cached
            self.index = load_existing_shards(source[:-len("*.tar")], endpoint=self.endpoint,
                                              credentials=self._tokens, classes=classes)
        else:
            self.index = load_index(source, classes=classes, labels=labels, endpoint=endpoint,
                                    credentials=self._tokens)
        if in_memory and isinstance(self.index, ShardIndex):
            raise ValueError("in_memory=True reads whole objects; it does not apply to a shard index")
        if in_memory and cache_dir is not None:
            raise ValueError("in_memory=True reads everything once; a disk cache (cache_dir) does not apply")
        self.batch_size, self.train, self.seed = batch_size, train, seed
        shards = self.index.shard if isinstance(self.index, ShardIndex) else None
        groups = np.flatnonzero(np.diff(shards)) + 1 if shards is not None and len(shards) else None
        self.sampler = EpochSampler(len(self.index), batch_size=batch_size,
                                    shuffle=train if shuffle is None else shuffle, seed=seed,
                                    drop_last=train if drop_last is None else drop_last,
                                    shard=shard, num_shards=num_shards, block_size=block_size,
                                    window=shuffle_window,
                                    group_starts=None if groups is None else np.insert(groups, 0, 0))
        self.coalesce_gap = coalesce_gap
        if self.sampler.mode == "block" and not isinstance(self.index, ShardIndex):
            log.warning("shuffle='block' on %s reads one object per sample anyway (no fewer GETs), and runs of a "
                        "class-sorted listing make batches of few classes; it is meant for packed shards",
                        self.index.url)
        self.cache = None
        if cache_dir is not None:
            from .sample_cache import SampleCache

            self.cache = SampleCache(self.index, self.endpoint, cache_dir, cache_size)
        self.backend = resolve_backend(backend, self.device)
        self.workers = workers or os.cpu_count() or 1
        self.prefetch, self.on_error, self.in_memory = prefetch, on_error, in_memory
        self.max_in_flight = max_in_flight
        self.dtype, self.channels_last, self.normalize = dtype, channels_last, normalize
        self._mean = torch.tensor(mean, dtype=torch.float32)
        self._std = torch.tensor(std, dtype=torch.float32)
        self._epoch = 0
        self._position = 0  # batches of this epoch already yielded
        self._pipeline = None
        self._decoder: BatchDecoder | None = None
        self._fallback: BatchDecoder | None = None
        self._ring: Ring | None = None
        self._memory: tuple[np.ndarray, np.ndarray] | None = None  # (arena, offsets) when in_memory
        self._slot_bytes: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # slot -> where its samples' bytes are
        self._slot_plan: dict[int, ReadPlan] = {}  # slot -> how its bytes were read (for the cache)
        self._pid = os.getpid()
        self._stats = {"batches": 0, "samples": 0, "skipped": 0, "fallback_decoded": 0, "wait_s": 0.0,
                       "python_decode_s": 0.0, "ready_on_arrival": 0, "slots_busy_sum": 0}
        self._skipped_names: deque[str] = deque(maxlen=SKIPPED_NAMES_KEPT)
        self._t_start: float | None = None

    # -- sizes and state --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Reads `epoch` next, from its first batch (an epoch also advances by itself when it completes)."""
        self._epoch, self._position = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: resuming from it yields exactly the remaining batches of the epoch."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed, "num_samples": len(self.index),
                "batch_size": self.batch_size, "shard": self.sampler.shard, "num_shards": self.sampler.num_shards,
                "order": self.sampler.describe()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state_dict(); refuses one taken on another dataset, batch size, seed, order or sharding."""
        order = state.get("order", "global" if self.sampler.mode == "global" else "none")  # older states: no key
        if order != self.sampler.describe():
            raise ValueError(f"loader state has order {order!r}, this loader has {self.sampler.describe()!r}")
        for key, mine in (("num_samples", len(self.index)), ("batch_size", self.batch_size), ("seed", self.seed),
                          ("shard", self.sampler.shard), ("num_shards", self.sampler.num_shards)):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"loader state has {key}={state[key]}, this loader has {mine}")
        if not 0 <= int(state["position"]) <= len(self):
            raise ValueError(f"loader state position {state['position']} is outside 0..{len(self)}")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])

    def stats(self) -> dict[str, Any]:
        """Per-stage figures: fetch (objects, bytes, retries, latency p50/p99), decode time, slot use, skips."""
        out: dict[str, Any] = dict(self._stats)
        if self._pipeline is not None:
            native = self._pipeline.stats()
            native["batches_submitted"] = native.pop("batches")  # not the batches handed out (ours)
            out.update(native)
        out["skipped_names"] = list(self._skipped_names)
        out["backend"] = self.backend
        out["slots"] = len(self._ring) if self._ring else self.prefetch + 2
        # mean share of the ring holding batches in flight when the consumer asked for the next one
        out["slot_occupancy"] = out.pop("slots_busy_sum") / max(1, out["batches"]) / out["slots"]
        if self._decoder is not None and hasattr(self._decoder, "simd"):
            out["pillow_simd"] = self._decoder.simd
        if self._t_start is not None and out["samples"]:
            out["images_per_s"] = out["samples"] / (time.perf_counter() - self._t_start)
        if self.cache is not None:
            out["cache"] = self.cache.stats()
        return out

    # -- machinery --------------------------------------------------------------------------------------
    def _setup(self) -> None:
        if os.getpid() != self._pid:  # forked: rebuild everything that holds threads
            self._pipeline = self._decoder = self._fallback = None
            self._pid = os.getpid()
        if self._pipeline is None:
            a = self.augment
            self._pipeline = _native.Pipeline(
                endpoint=self.endpoint, max_in_flight=self.max_in_flight, max_connections=self.max_in_flight,
                threads=self.workers, decode=self.backend == "native", out_h=a.out_h, out_w=a.out_w, train=a.train,
                scale=a.scale, ratio=a.ratio, flip_p=a.flip_p, eval_crop_ratio=a.eval_crop_ratio,
                max_pixels=a.max_pixels)
        if self._ring is None:
            pin = self.device.type == "cuda"
            self._ring = Ring(self.prefetch + 2, self.batch_size, self.augment.out_h, self.augment.out_w, pin=pin)
        if self._decoder is None and self.backend != "native":
            self._decoder = self._make_decoder(self.backend)
        if self.in_memory and self._memory is None:
            self._load_into_memory()

    def _make_decoder(self, name: str) -> BatchDecoder:
        if name == "pillow":
            from .backends.pillow_backend import PillowDecoder

            return PillowDecoder(self.augment, threads=self.workers)
        from .backends.dali_backend import DaliDecoder

        return DaliDecoder(self.augment, batch_size=self.batch_size, device=self.device.type, threads=self.workers,
                           seed=self.seed)

    def _load_into_memory(self) -> None:
        from .fetch import Fetcher

        with Fetcher(self.index.bucket, endpoint=self.endpoint, credentials=self._tokens,
                     max_in_flight=self.max_in_flight) as f:
            batch = f.fetch_batch(self.index.names(), self.index.sizes)
        self._memory = (batch.arena, batch.offsets)

    def _plan(self, indices: np.ndarray, present: np.ndarray | None = None) -> ReadPlan:
        idx = self.index
        if isinstance(idx, ShardIndex):  # members of shards: ranged GETs, neighbours coalesced
            return plan_ranges(idx.shard[indices], idx.starts[indices], idx.sizes[indices],
                               max_gap=self.coalesce_gap, present=present)
        return plan_whole_objects(idx.sizes[indices], present)

    def _submit(self, batch_no: int, k: int, indices: np.ndarray, epoch: int) -> None:
        slot = self._ring.slots[k]
        idx = self.index
        sizes = idx.sizes[indices]
        spans: list = []
        if self._memory is not None:
            arena, offsets = self._memory[0], self._memory[1][indices]
        else:
            plan = self._plan(indices)
            arena = slot.ensure_arena(plan.arena_size)
            if self.cache is not None:  # cache hits land in the arena now and need no GET
                present = self.cache.fill(indices, arena, plan.offsets, sizes)
                if present.any():
                    plan = self._plan(indices, present)
            offsets, spans = plan.offsets, plan.spans
            self._slot_plan[k] = plan
        self._slot_bytes[k] = (arena, offsets)
        seeds = [_native.sample_seed(self.seed, epoch, int(i)) for i in indices]
        out = slot.images.numpy() if self.backend == "native" else None
        self._pipeline.set_token(self._tokens.token())
        starts = idx.starts[indices].tolist() if isinstance(idx, ShardIndex) else []  # shard members: ranged GETs
        self._pipeline.submit(batch_no, idx.bucket, [idx.name(int(i)) for i in indices],
                              idx.generations[indices].tolist(), seeds, offsets.tolist(), sizes.tolist(),
                              self._memory is not None, arena, out, starts, spans)

    def _drain(self) -> None:
        if self._pipeline is not None and self._pipeline.outstanding:
            self._pipeline.cancel_all()
            while self._pipeline.outstanding:
                self._pipeline.poll(timeout=1.0)
        if self._ring is not None:
            self._ring.reset()

    def _decode_in_python(self, k: int, indices: np.ndarray, epoch: int, nbytes: list[int],
                          failed: list) -> list:
        """pillow/dali backends: decode the fetched arena into the slot; returns the failures."""
        slot = self._ring.slots[k]
        bad = {i for i, _ in failed}
        good = [i for i in range(len(indices)) if i not in bad]
        arena, offsets = self._slot_bytes[k]
        views = [memoryview(arena)[int(offsets[i]):int(offsets[i]) + nbytes[i]] for i in good]
        seeds = [_native.sample_seed(self.seed, epoch, int(indices[i])) for i in good]
        names = [self.index.name(int(indices[i])) for i in good]
        t0 = time.perf_counter()
        out = slot.images.numpy()
        if len(good) == len(indices):
            errs = self._decoder.decode(views, seeds, out[:len(good)], names)
            mapped = list(range(len(good)))
        else:  # decode the good ones into a scratch array, then place them
            scratch = np.empty((len(good),) + out.shape[1:], dtype=np.uint8)
            errs = self._decoder.decode(views, seeds, scratch, names)
            out[good] = scratch
            mapped = good
        self._stats["python_decode_s"] += time.perf_counter() - t0
        return list(failed) + [(mapped[j], e) for j, e in enumerate(errs) if e is not None]

    def _fallback_decode(self, k: int, i: int, index: int, epoch: int, nbytes: int) -> bool:
        """Native backend: a non-JPEG sample gets one try with Pillow, with the same crop."""
        if self._fallback is None:
            from .backends.pillow_backend import PillowDecoder

            self._fallback = PillowDecoder(self.augment, threads=1)
        arena, offsets = self._slot_bytes[k]
        off = int(offsets[i])
        view = memoryview(arena)[off:off + nbytes]
        errs = self._fallback.decode([view], [_native.sample_seed(self.seed, epoch, index)],
                                     self._ring.slots[k].images.numpy()[i:i + 1], [self.index.name(index)])
        return errs[0] is None

    def _handle_failures(self, k: int, indices: np.ndarray, labels: np.ndarray, epoch: int, nbytes: list[int],
                         failed: list) -> None:
        bad = []
        for i, exc in failed:
            if isinstance(exc, NotJpegError) and self.backend == "native" and nbytes[i] > 0 and \
                    self._fallback_decode(k, i, int(indices[i]), epoch, nbytes[i]):
                self._stats["fallback_decoded"] += 1
                continue
            if self.on_error == "raise":
                raise exc
            if callable(self.on_error):
                self.on_error(exc)
            bad.append(i)
            self._stats["skipped"] += 1
            self._skipped_names.append(f"{getattr(exc, 'object', None) or self.index.name(int(indices[i]))}: {exc}")
        if not bad:
            return
        good = [i for i in range(len(indices)) if i not in set(bad)]
        if not good:
            raise HivedataError(f"every sample of a batch failed to load; the first: {failed[0][1]}")
        images = self._ring.slots[k].images.numpy()
        for n, i in enumerate(bad):  # replace with good samples of the same batch, deterministically
            src = good[n % len(good)]
            images[i] = images[src]
            labels[i] = labels[src]

    # -- iteration --------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._setup()
        self._drain()
        epoch, start = self._epoch, self._position
        batches = list(self.sampler.batches(epoch, start))
        ring = self._ring
        in_slot: dict[int, tuple[int, np.ndarray]] = {}  # batch number -> (slot, indices)
        done: dict[int, tuple] = {}
        submitted = 0
        finished = False
        if self._t_start is None:
            self._t_start = time.perf_counter()
        try:
            for b in range(len(batches)):
                while submitted < len(batches) and submitted <= b + self.prefetch:
                    k = ring.acquire()
                    if k is None:
                        break
                    ind = batches[submitted]
                    self._submit(submitted, k, ind, epoch)
                    in_slot[submitted] = (k, ind)
                    submitted += 1
                t0 = time.perf_counter()
                self._stats["slots_busy_sum"] += len(in_slot)
                if b in done:
                    self._stats["ready_on_arrival"] += 1
                while b not in done:
                    r = self._pipeline.poll()
                    if r is None:
                        raise HivedataError("the pipeline lost a batch (nothing outstanding)")
                    done[r[0]] = r
                self._stats["wait_s"] += time.perf_counter() - t0
                _, nbytes, failed, _decode_s = done.pop(b)
                k, ind = in_slot.pop(b)
                if self.cache is not None:
                    self.cache.store(self._slot_plan[k], ind, self._slot_bytes[k][0], nbytes, failed)
                if self.backend != "native":
                    failed = self._decode_in_python(k, ind, epoch, nbytes, failed)
                labels = self.index.labels[ind].astype(np.int64)
                if failed:
                    self._handle_failures(k, ind, labels, epoch, nbytes, failed)
                n = len(ind)
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
                yield images, labels_t
            finished = True
            self._epoch, self._position = epoch + 1, 0
            if self.cache is not None:  # the next epoch finds this one's samples in the cache
                self.cache.flush()
        finally:
            if not finished:
                self._drain()

    def close(self) -> None:
        """Stops the pipeline's threads and frees the slots."""
        self._drain()
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None
        if self.cache is not None:
            self.cache.close()
        self._ring = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
