"""One collaborative training peer: hivemind DHT + Optimizer around a ResNet fed by hivedata loaders."""

from __future__ import annotations

import argparse
import logging
import math
import time
from typing import Any

import hivemind
import torch
import torch.nn.functional as F
from hivemind.compression import Float16Compression
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hivedata.loader.loader import Loader
from hivedata.train.checkpoint import CheckpointStore
from hivedata.train.metrics import MetricsLog
from hivedata.train.models import build_model, param_groups
from hivedata.train.optim import optimizer_factory
from hivedata.train.schedule import scheduler_factory
from hivedata.train.swarm import PeerRegistry, announce, initial_peers, peer_seed, visible_maddrs

log = logging.getLogger("hivedata.train")

METRIC_FIELDS = ["step", "time", "loss", "samples_per_s", "global_epoch", "peers", "lr", "averaged_with", "val_top1",
                 "val_top5", "loader_images_per_s", "loader_skipped", "loader_retries", "loader_wait_s"]


class SwarmOptimizer(hivemind.Optimizer):
    """hivemind.Optimizer that remembers how many peers each gradient-averaging round included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_group_size = 1
        self.group_sizes: list[tuple[int, int]] = []  # (global epoch, peers averaged with)

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control):  # noqa: ANN001
        super()._average_gradients_and_load_into_optimizer(maybe_step_control)
        size = 1
        if maybe_step_control is not None and maybe_step_control.done():
            try:
                size = len(maybe_step_control.result(0))
            except BaseException:  # averaging failed: the step used local gradients
                size = 1
        self.last_group_size = size
        self.group_sizes.append((self.local_epoch, size))


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


def bn_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """BatchNorm running statistics, averaged across peers as hivemind extra_tensors."""
    return [b for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Loader, max_batches: int | None) -> tuple[float, float]:
    """Top-1 and top-5 accuracy over at most max_batches validation batches."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    for i, (images, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        top5 = model(images).topk(min(5, model.fc.out_features), dim=1).indices
        correct1 += int((top5[:, 0] == labels).sum())
        correct5 += int((top5 == labels[:, None]).any(dim=1).sum())
        total += len(labels)
    loader.set_epoch(0)  # validation always reads the same batches
    model.train(was_training)
    return correct1 / max(total, 1), correct5 / max(total, 1)


class Trainer:
    """Builds the swarm, model, optimizer and loaders from train.py's flags, then runs the loop."""

    def __init__(self, args: argparse.Namespace, *, loopback: bool = False) -> None:
        self.args = args
        self.device = pick_device(args.device)
        torch.manual_seed(args.seed)
        host = "127.0.0.1" if loopback else "0.0.0.0"
        registry_reader = PeerRegistry(args.bucket, args.run_id) if args.bucket else None
        peers = initial_peers(explicit=args.initial_peer, registry=registry_reader,
                              fetch_gcs_path=args.fetch_gcs_path)
        self.dht = hivemind.DHT(start=True, initial_peers=peers, host_maddrs=[f"/ip4/{host}/tcp/{args.host_port}"],
                                announce_maddrs=args.announce_maddr or None, client_mode=args.client_mode,
                                identity_path=args.identity_path)
        self.peer_id = str(self.dht.peer_id)
        maddrs = visible_maddrs(self.dht)
        log.info("peer %s joined with %d initial peers; reachable at %s", self.peer_id, len(peers), maddrs)
        self.registry = None
        if args.bucket and not args.client_mode:
            self.registry = PeerRegistry(args.bucket, args.run_id, peer_id=self.peer_id, maddrs=maddrs)
            self.registry.start()
        if args.announce_gcs_path:
            announce(args.announce_gcs_path, maddrs)

        self.store = CheckpointStore(args.checkpoint_dir) if args.checkpoint_dir else None
        self.resume_state = self.store.load("latest") if args.resume and self.store is not None else None
        if args.resume and self.resume_state is None:
            log.warning("--resume: no loadable checkpoint in %s; starting fresh", args.checkpoint_dir)
        # a resumed peer continues the data order it was in (its seed), even if its peer id changed
        data_seed = (int(self.resume_state["loader"]["seed"]) if self.resume_state is not None
                     else peer_seed(self.peer_id, args.seed))
        self.train_loader = Loader(f"gs://{args.bucket}/{args.train_prefix}", batch_size=args.batch_size, train=True,
                                   image_size=args.image_size, backend=args.backend, device=str(self.device),
                                   seed=data_seed, workers=args.num_workers, shuffle=args.shuffle,
                                   block_size=args.block_size, cache_dir=args.cache_dir, cache_size=args.cache_size,
                                   channels_last=self.device.type == "cuda")
        self.val_loader = Loader(f"gs://{args.bucket}/{args.val_prefix}", batch_size=args.batch_size, train=False,
                                 image_size=args.image_size, backend=args.backend, device=str(self.device),
                                 classes=self.train_loader.index.classes, labels=args.val_labels,
                                 workers=args.num_workers, channels_last=self.device.type == "cuda")
        num_classes = len(self.train_loader.index.classes)
        model = build_model(args.arch, num_classes).to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model) if args.compile and self.device.type == "cuda" else model

        samples = len(self.train_loader.index)
        self.total_global_epochs = max(1, math.ceil(args.epochs * samples / args.target_batch_size))
        warmup = args.warmup_epochs * samples / args.target_batch_size
        self.opt = SwarmOptimizer(
            dht=self.dht, run_id=args.run_id, params=param_groups(model, args.weight_decay),
            optimizer=optimizer_factory(args.optimizer, lr=args.lr, weight_decay=args.weight_decay),
            scheduler=scheduler_factory(warmup_epochs=warmup, total_epochs=self.total_global_epochs,
                                        decay=args.lr_decay),
            batch_size_per_step=args.batch_size, target_batch_size=args.target_batch_size,
            matchmaking_time=args.matchmaking_time, averaging_timeout=args.averaging_timeout,
            grad_compression=Float16Compression(),
            state_averaging_compression=Float16Compression(),
            extra_tensors=bn_buffers(model), client_mode=args.client_mode, verbose=False)
        self.metrics = MetricsLog(args.metrics, fields=METRIC_FIELDS) if args.metrics else None
        self.best_top1 = 0.0
        self.last_top1: float | None = None
        self.stop_reason: str | None = None  # set by request_stop(): leave at the next step boundary

    # -- state ------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """--resume from disk first; then pull the swarm's state if it is at least as far along as ours."""
        state, self.resume_state = self.resume_state, None
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.train_loader.load_state_dict(state["loader"])
            self.best_top1 = state.get("best_top1", 0.0)
            log.info("resumed from disk at global epoch %d (checkpoint of peer %s)", self.opt.local_epoch,
                     state.get("peer_id", "?"))
        # hivemind refuses ("cowardly") a peer state older than ours, so a resumed peer keeps its own
        self.opt.load_state_from_peers()

    def checkpoint(self) -> None:
        """Writes model, optimizer (with its global epoch), loader position and flags atomically."""
        if self.store is None:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "local_epoch": self.opt.local_epoch, "loader": self.train_loader.state_dict(),
                 "args": vars(self.args), "peer_id": self.peer_id, "best_top1": self.best_top1,
                 "val_top1": self.last_top1}
        self.store.save(state, step=self.opt.local_epoch, metric=self.last_top1)

    # -- loop -------------------------------------------------------------------------------------------
    def wait_for_peers(self, timeout_s: float = 180.0) -> None:
        """Local multi-peer runs: wait until the other peers have registered, so all of them train together."""
        if self.args.wait_peers <= 1 or self.registry is None:
            return
        deadline = time.time() + timeout_s
        while len(self.registry.live_peers()) < self.args.wait_peers - 1 and time.time() < deadline:
            time.sleep(0.5)
        log.info("%d other peers registered", len(self.registry.live_peers()))

    def run(self) -> dict[str, Any]:
        """Trains until the schedule ends, --max_minutes pass or --target_accuracy is reached."""
        self.wait_for_peers()
        self.restore()
        # a progress bar over global epochs on a terminal (tqdm turns itself off when stderr is not one)
        bar = tqdm(total=self.total_global_epochs, initial=self.opt.local_epoch, unit="epoch", desc="global epoch",
                   dynamic_ncols=True, disable=None if self.args.progress else True)
        try:
            with logging_redirect_tqdm():
                return self._loop(bar)
        except KeyboardInterrupt:
            log.warning("interrupted at global epoch %d: writing a checkpoint before leaving", self.opt.local_epoch)
            self.checkpoint()
            raise
        finally:
            bar.close()

    def _loop(self, bar: tqdm) -> dict[str, Any]:
        args = self.args
        start = time.time()
        step = 0
        epoch_seen = self.opt.local_epoch
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else None
        done = False
        validated_at = None
        self.model.train()
        while not done:
            t_batch = time.perf_counter()
            for images, labels in self.train_loader:
                if autocast is not None:
                    with autocast:
                        loss = F.cross_entropy(self.forward(images), labels, label_smoothing=args.label_smoothing)
                else:
                    loss = F.cross_entropy(self.forward(images), labels, label_smoothing=args.label_smoothing)
                loss.backward()
                self.opt.step()
                self.opt.zero_grad()
                step += 1
                now = time.perf_counter()
                row = {"step": step, "time": round(time.time() - start, 3), "loss": loss.item(),
                       "samples_per_s": len(labels) / max(now - t_batch, 1e-9), "global_epoch": self.opt.local_epoch,
                       "peers": self.opt.tracker.global_progress.num_peers,
                       "lr": self.opt.opt.param_groups[0]["lr"]}
                t_batch = now
                bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['samples_per_s']:.0f}", peers=row["peers"],
                                lr=f"{row['lr']:.3g}", refresh=False)
                if self.opt.local_epoch != epoch_seen:
                    epoch_seen = self.opt.local_epoch
                    bar.update(max(0, min(epoch_seen, bar.total) - bar.n))
                    row["averaged_with"] = self.opt.last_group_size
                    log.info("global epoch %d: averaged with %d peers, loss %.3f, lr %.4f", epoch_seen,
                             self.opt.last_group_size, row["loss"], row["lr"])
                    if epoch_seen % args.val_every == 0 or epoch_seen >= self.total_global_epochs:
                        row.update(self.validate())
                        self.checkpoint()
                        validated_at = epoch_seen
                if self.metrics is not None:
                    st = self.train_loader.stats()
                    row.update({f"loader_{k}": st.get(k) for k in ("images_per_s", "skipped", "retries", "wait_s")})
                    self.metrics.write(row)
                if self._should_stop(start):
                    done = True
                    break
        if self.stop_reason is not None:  # e.g. SIGTERM on a preempted VM: save now, skip validation
            log.warning("%s at global epoch %d: writing a checkpoint before leaving", self.stop_reason,
                        self.opt.local_epoch)
            self.checkpoint()
        elif validated_at != self.opt.local_epoch:
            self.validate()
            self.checkpoint()
        return {"global_epoch": self.opt.local_epoch, "val_top1": self.last_top1, "best_top1": self.best_top1,
                "minutes": (time.time() - start) / 60, "group_sizes": list(self.opt.group_sizes),
                "peer_id": self.peer_id, "stopped_by": self.stop_reason}

    def request_stop(self, reason: str) -> None:
        """Asks the loop to checkpoint and leave after the current step (a signal handler may call it)."""
        self.stop_reason = reason

    def validate(self) -> dict[str, float]:
        """Runs validation, remembers the best, returns the metrics row fields."""
        top1, top5 = evaluate(self.model, self.val_loader, self.args.val_batches)
        self.last_top1 = top1
        self.best_top1 = max(self.best_top1, top1)
        log.info("global epoch %d: validation top-1 %.3f top-5 %.3f", self.opt.local_epoch, top1, top5)
        return {"val_top1": top1, "val_top5": top5}

    def _should_stop(self, start: float) -> bool:
        args = self.args
        if self.stop_reason is not None:
            return True
        if self.opt.local_epoch >= self.total_global_epochs:
            return True
        if args.max_minutes is not None and time.time() - start > args.max_minutes * 60:
            return True
        return args.target_accuracy is not None and (self.last_top1 or 0) >= args.target_accuracy

    def close(self) -> None:
        """Leaves the swarm and stops every thread."""
        if self.registry is not None:
            self.registry.stop()
        self.train_loader.close()
        self.val_loader.close()
        self.opt.shutdown()
        self.dht.shutdown()
