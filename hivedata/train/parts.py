"""What a Trainer is built from, each part made by its own factory from train.py's flags.

- :func:`build_swarm`: the hivemind DHT, this peer's heartbeat in the bucket's peer registry, the legacy announce;
- :func:`build_checkpoints`: the checkpoint store and the state ``--resume`` found in it;
- :func:`build_data`: the train and validation loaders, reading in this peer's (or the resumed run's) order;
- :func:`build_learner`: the model (compiled on CUDA with ``--compile``) and its SwarmOptimizer with the schedule.

:func:`build_parts` makes all four in that order (and closes what it made if a later one fails);
:meth:`TrainerParts.close` takes them down in the order that leaves the swarm cleanly.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hivemind
import torch
from hivemind.compression import Float16Compression
from hivemind.optim.grad_averager import GradientAverager

from hivedata import lifeline
from hivedata.train.checkpoint import CheckpointStore
from hivedata.train.join import start_dht
from hivedata.train.models import build_model, param_groups
from hivedata.train.optim import optimizer_factory
from hivedata.train.overlap import from_args as overlap_settings
from hivedata.train.quiet import quiet_hivemind
from hivedata.train.schedule import scheduler_factory
from hivedata.train.swarm import PeerRegistry, announce, initial_peers, peer_seed, visible_maddrs
from hivedata.train.swarm_optimizer import SwarmOptimizer, leave_swarm

if TYPE_CHECKING:
    from hivedata.loader.coverage import BlockFeed
    from hivedata.loader.loader import Loader
    from hivedata.sources import SampleSource

log = logging.getLogger("hivedata.train")


@dataclass
class Swarm:
    """This peer in the swarm: its DHT, id and reachable addresses, and its registry heartbeat (None: none)."""

    dht: hivemind.DHT
    peer_id: str
    maddrs: list[str]
    registry: PeerRegistry | None = None

    def close(self) -> None:
        """Leaves the registry, then stops the DHT (when no optimizer was built on it)."""
        if self.registry is not None:
            self.registry.stop()
        self.dht.shutdown()


@dataclass
class Checkpoints:
    """Where checkpoints go (None: nowhere) and the state --resume loaded from there (None: a fresh start)."""

    store: CheckpointStore | None
    resume_state: dict[str, Any] | None


@dataclass
class Data:
    """The training and validation loaders, and the seed of the training order."""

    train: Loader
    val: Loader
    seed: int

    def close(self) -> None:
        """Stops both loaders' threads."""
        self.train.close()
        self.val.close()


@dataclass
class Learner:
    """The model, what the loop calls to run it (compiled or not), its optimizer and the schedule's length."""

    model: torch.nn.Module
    forward: Callable[..., torch.Tensor]
    opt: SwarmOptimizer
    total_global_epochs: int


@dataclass
class TrainerParts:
    """Everything a Trainer runs on."""

    device: torch.device
    swarm: Swarm
    checkpoints: Checkpoints
    data: Data
    learner: Learner

    def close(self) -> None:
        """Leaves the registry, stops the loaders, then the optimizer and the DHT (see leave_swarm)."""
        if self.swarm.registry is not None:
            self.swarm.registry.stop()
        self.data.close()
        leave_swarm(self.learner.opt, self.swarm.dht)


def pick_device(name: str | None) -> torch.device:
    """The requested device, or the best available one."""
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise SystemExit("--device mps: MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def build_swarm(args: argparse.Namespace, *, loopback: bool = False) -> Swarm:
    """Joins the swarm (peers from --initial_peer, the registry, --fetch_gcs_path), registers and announces."""
    host = "127.0.0.1" if loopback else "0.0.0.0"
    reader = PeerRegistry(args.bucket, args.run_id) if args.bucket else None
    peers = initial_peers(explicit=args.initial_peer, registry=reader, fetch_gcs_path=args.fetch_gcs_path)
    lifeline.install()  # hivemind's DHT and averager processes die with this one, even on SIGKILL
    quiet_hivemind()  # before the DHT process starts: it inherits the log filter
    dht = start_dht(peers, lambda initial: hivemind.DHT(
        start=True, initial_peers=initial, host_maddrs=[f"/ip4/{host}/tcp/{args.host_port}"],
        announce_maddrs=args.announce_maddr or None, client_mode=args.client_mode, identity_path=args.identity_path),
        client_mode=args.client_mode)
    swarm = Swarm(dht=dht, peer_id=str(dht.peer_id), maddrs=visible_maddrs(dht))
    log.info("peer %s joined with %d initial peers; reachable at %s", swarm.peer_id, len(peers), swarm.maddrs)
    try:
        if args.bucket and not args.client_mode:
            swarm.registry = PeerRegistry(args.bucket, args.run_id, peer_id=swarm.peer_id, maddrs=swarm.maddrs)
            swarm.registry.start()
        if args.announce_gcs_path:
            announce(args.announce_gcs_path, swarm.maddrs)
    except BaseException:
        swarm.close()
        raise
    return swarm


def build_checkpoints(args: argparse.Namespace) -> Checkpoints:
    """The store in --checkpoint_dir, and with --resume its latest loadable state (a warning if there is none)."""
    store = CheckpointStore(args.checkpoint_dir) if args.checkpoint_dir else None
    state = store.load("latest") if args.resume and store is not None else None
    if args.resume and state is None:
        log.warning("--resume: no loadable checkpoint in %s; starting fresh", args.checkpoint_dir)
    return Checkpoints(store=store, resume_state=state)


def data_seed(resume_state: dict[str, Any] | None, peer_id: str, base_seed: int) -> int:
    """A resumed peer keeps the data order it was in (its seed), even if its peer id changed; else its own."""
    if resume_state is not None:
        return int(resume_state["loader"]["seed"])
    return peer_seed(peer_id, base_seed)


def open_train_source(args: argparse.Namespace) -> SampleSource:
    """The source gs://<bucket>/<train_prefix> names (listed, or its shard index read)."""
    from hivedata.gcs.paths import storage_endpoint
    from hivedata.sources import SourceOptions, open_source

    return open_source(f"gs://{args.bucket}/{args.train_prefix}", SourceOptions(storage_endpoint(None), "auto"))


def open_val_source(args: argparse.Namespace, classes: list[str]) -> SampleSource:
    """The source gs://<bucket>/<val_prefix> names, labelled with the training classes (and --val_labels)."""
    from hivedata.gcs.paths import storage_endpoint
    from hivedata.sources import SourceOptions, open_source

    return open_source(f"gs://{args.bucket}/{args.val_prefix}",
                       SourceOptions(storage_endpoint(None), "auto", classes=classes, labels=args.val_labels))


def coverage_block(args: argparse.Namespace, train_samples: int) -> int:
    """--coverage_block, or by default 1024 samples (1/32 of a smaller dataset, at least a batch)."""
    return args.coverage_block or min(1024, max(args.batch_size, train_samples // 32))


def swarm_feed(args: argparse.Namespace, dht: hivemind.DHT, peer_id: str, source: SampleSource) -> BlockFeed:
    """--coverage swarm: batches from blocks of the run's global order (--seed) this peer claims in the DHT."""
    from hivedata.train.claims import coverage_feed

    return coverage_feed(dht, args.run_id, peer_id, n=len(source), batch_size=args.batch_size,
                         block_size=coverage_block(args, len(source)), seed=args.seed,
                         group_starts=source.groups(), claim_ttl=args.claim_ttl)


def build_data(args: argparse.Namespace, *, device: torch.device, peer_id: str,
               resume_state: dict[str, Any] | None = None,
               sources: tuple[SampleSource, SampleSource] | None = None, dht: hivemind.DHT | None = None) -> Data:
    """The loaders of gs://<bucket>/<train_prefix> and <val_prefix> (validation uses the training classes).

    `sources`: (train, val) already opened (train.py opens them to check the flags before joining the swarm).
    `dht`: the swarm's DHT, where --coverage swarm claims its blocks.
    """
    from hivedata.loader.loader import Loader

    feed = None
    train_source: str | SampleSource = sources[0] if sources is not None else f"gs://{args.bucket}/{args.train_prefix}"
    if args.coverage == "swarm":
        if dht is None:
            raise ValueError("--coverage swarm claims blocks in the swarm's DHT: build_data needs dht=")
        seed = args.seed  # one order for the whole swarm (crops too: a sample's crop depends on its data epoch)
        if isinstance(train_source, str):
            train_source = open_train_source(args)
        feed = swarm_feed(args, dht, peer_id, train_source)
    else:
        seed = data_seed(resume_state, peer_id, args.seed)
    channels_last = device.type == "cuda"
    train = Loader(train_source, batch_size=args.batch_size, train=True,
                   image_size=args.image_size, backend=args.backend, device=str(device), seed=seed,
                   workers=args.num_workers, shuffle=args.shuffle, block_size=args.block_size,
                   cache_dir=args.cache_dir, cache_size=args.cache_size, channels_last=channels_last,
                   max_missing=args.max_missing, http_version=args.http_version,
                   strict=args.strict_decode, feed=feed)
    try:
        val_source = sources[1] if sources is not None else f"gs://{args.bucket}/{args.val_prefix}"
        val = Loader(val_source, batch_size=args.batch_size, train=False,
                     image_size=args.image_size, backend=args.backend, device=str(device),
                     classes=train.index.classes, labels=args.val_labels, workers=args.num_workers,
                     channels_last=channels_last, max_missing=args.max_missing, http_version=args.http_version,
                     strict=args.strict_decode)
    except BaseException:
        train.close()
        raise
    return Data(train=train, val=val, seed=seed)


def bn_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """BatchNorm running statistics, averaged across peers as hivemind extra_tensors."""
    return [b for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]


def schedule_length(args: argparse.Namespace, train_samples: int) -> tuple[int, float]:
    """(global epochs in --epochs passes over the data, warmup in global epochs): one is target_batch_size."""
    total = max(1, math.ceil(args.epochs * train_samples / args.target_batch_size))
    return total, args.warmup_epochs * train_samples / args.target_batch_size


def build_learner(args: argparse.Namespace, *, dht: hivemind.DHT, device: torch.device, num_classes: int,
                  train_samples: int, model: torch.nn.Module | None = None) -> Learner:
    """--arch on the device (or the given model), and a SwarmOptimizer over it with the warmup+decay schedule."""
    if model is None:
        model = build_model(args.arch, num_classes)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if args.compile and device.type == "cuda" else model
    total, warmup = schedule_length(args, train_samples)
    overlap = overlap_settings(args, device)
    # hivemind: a leader's answer may take at most request_timeout, which must stay below the matchmaking time;
    # averager_opts reaches only the state averager (hivemind 1.1.12), so the gradient averager gets it here
    request_timeout = min(3.0, args.matchmaking_time / 2)
    opt = SwarmOptimizer(
        dht=dht, run_id=args.run_id, params=param_groups(model, args.weight_decay),
        optimizer=optimizer_factory(args.optimizer, lr=args.lr, weight_decay=args.weight_decay),
        scheduler=scheduler_factory(warmup_epochs=warmup, total_epochs=total, decay=args.lr_decay),
        batch_size_per_step=args.batch_size, target_batch_size=args.target_batch_size,
        matchmaking_time=args.matchmaking_time, averaging_timeout=args.averaging_timeout,
        grad_compression=Float16Compression(), state_averaging_compression=Float16Compression(),
        extra_tensors=bn_buffers(model), client_mode=args.client_mode, verbose=False, **overlap.kwargs(),
        averager_opts=dict(request_timeout=request_timeout),
        grad_averager_factory=functools.partial(GradientAverager, request_timeout=request_timeout))
    log.info("averaging: %s", overlap.describe())
    return Learner(model=model, forward=forward, opt=opt, total_global_epochs=total)


def build_parts(args: argparse.Namespace, *, loopback: bool = False,
                sources: tuple[SampleSource, SampleSource] | None = None) -> TrainerParts:
    """All parts from the flags: swarm, checkpoints, data, then model and optimizer (seeded by --seed).

    `sources`: the (train, val) data sources when already opened, else opened from the flags.
    """
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    swarm = build_swarm(args, loopback=loopback)
    data = None
    try:
        checkpoints = build_checkpoints(args)
        data = build_data(args, device=device, peer_id=swarm.peer_id, resume_state=checkpoints.resume_state,
                          sources=sources, dht=swarm.dht)
        learner = build_learner(args, dht=swarm.dht, device=device, num_classes=len(data.train.index.classes),
                                train_samples=len(data.train.index))
    except BaseException:
        if data is not None:
            data.close()
        swarm.close()
        raise
    return TrainerParts(device=device, swarm=swarm, checkpoints=checkpoints, data=data, learner=learner)
