"""One collaborative training peer: hivemind DHT + Optimizer around a ResNet fed by hivedata loaders."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hivedata.errors import HivedataError
from hivedata.train.join import AloneWatch
from hivedata.train.metrics import MetricsLog
from hivedata.train.parts import TrainerParts, bn_buffers, build_parts, pick_device
from hivedata.train.step_log import RunningLoss, default_log_every
from hivedata.train.swarm_optimizer import SwarmOptimizer

if TYPE_CHECKING:
    from hivedata.loader.loader import Loader
    from hivedata.sources import SampleSource

__all__ = ["METRIC_FIELDS", "SwarmOptimizer", "Trainer", "bn_buffers", "evaluate", "pick_device"]

log = logging.getLogger("hivedata.train")

EPOCH_LOG_EVERY = 10  # "global epoch N: averaged with K peers" every N epochs, and whenever K changes
METRIC_FIELDS = ["step", "time", "loss", "samples_per_s", "global_epoch", "peers", "lr", "averaged_with", "val_top1",
                 "val_top5", "loader_images_per_s", "loader_skipped", "loader_retries", "loader_wait_s"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Loader, max_batches: int | None) -> tuple[float, float]:
    """Top-1 and top-5 accuracy over at most max_batches validation batches (bf16 autocast on CUDA).

    The counts stay on the device until the end: one host sync per validation, not one per batch.
    """
    was_training = model.training
    model.eval()
    correct1 = correct5 = torch.zeros((), dtype=torch.int64)
    total = 0
    for i, (images, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        with torch.autocast("cuda", dtype=torch.bfloat16) if images.is_cuda else contextlib.nullcontext():
            logits = model(images)
        top5 = logits.topk(min(5, model.fc.out_features), dim=1).indices
        correct1 = correct1.to(top5.device) + (top5[:, 0] == labels).sum()
        correct5 = correct5.to(top5.device) + (top5 == labels[:, None]).any(dim=1).sum()
        total += len(labels)
    loader.set_epoch(0)  # validation always reads the same batches
    model.train(was_training)
    return int(correct1) / max(total, 1), int(correct5) / max(total, 1)


class Trainer:
    """One peer's training loop over its parts (hivedata.train.parts), built from train.py's flags unless given."""

    def __init__(self, args: argparse.Namespace, *, loopback: bool = False, parts: TrainerParts | None = None,
                 sources: tuple[SampleSource, SampleSource] | None = None) -> None:
        self.args = args
        self.parts = parts if parts is not None else build_parts(args, loopback=loopback, sources=sources)
        self.device = self.parts.device
        swarm = self.parts.swarm
        self.dht, self.peer_id, self.registry = swarm.dht, swarm.peer_id, swarm.registry
        self.store, self.resume_state = self.parts.checkpoints.store, self.parts.checkpoints.resume_state
        self.train_loader, self.val_loader = self.parts.data.train, self.parts.data.val
        learner = self.parts.learner
        self.model, self.forward, self.opt = learner.model, learner.forward, learner.opt
        self.total_global_epochs = learner.total_global_epochs
        self.metrics = MetricsLog(args.metrics, fields=METRIC_FIELDS) if args.metrics else None
        self.best_top1 = 0.0
        self.last_top1: float | None = None
        self.stop_reason: str | None = None  # set by request_stop(): leave at the next step boundary
        self.alone = AloneWatch(self.registry.live_peers if self.registry is not None else None)

    # -- state ------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """--resume from disk first; then pull the swarm's state if it is at least as far along as ours."""
        state, self.resume_state = self.resume_state, None
        self.parts.checkpoints.resume_state = None  # loaded once; do not keep a second copy of the weights
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
                 "data_epoch": self.train_loader.data_epoch,
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
        except HivedataError:  # the data stopped us (an outage past --max_missing): keep what was trained
            log.warning("the data could not be read at global epoch %d: writing a checkpoint before leaving",
                        self.opt.local_epoch)
            try:
                self.checkpoint()
            except Exception as e:  # e.g. a gs:// checkpoint dir in the same outage: the data error is the news
                log.error("could not write the checkpoint: %s", e)
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
        logged_group = None  # the group size last logged: an epoch's line is logged when it changes
        log_every = default_log_every(self.device, args.log_every)
        running = RunningLoss()
        self.model.train()
        while not done:
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
                running.add(loss, len(labels))
                if self._should_stop(start):
                    done = True
                if step % log_every and self.opt.local_epoch == epoch_seen and not done:
                    continue  # no host sync on this step: the loss stays on the device
                mean_loss, rate = running.take()
                row = {"step": step, "time": round(time.time() - start, 3), "loss": mean_loss,
                       "samples_per_s": rate, "global_epoch": self.opt.local_epoch,
                       "peers": self.opt.tracker.global_progress.num_peers,
                       "lr": self.opt.opt.param_groups[0]["lr"]}
                bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['samples_per_s']:.0f}", peers=row["peers"],
                                lr=f"{row['lr']:.3g}", refresh=False)
                if self.opt.local_epoch != epoch_seen:
                    epoch_seen = self.opt.local_epoch
                    bar.update(max(0, min(epoch_seen, bar.total) - bar.n))
                    row["averaged_with"] = self.opt.last_group_size
                    self.alone.epoch_ended(self.opt.last_group_size, epoch_seen, row["peers"])
                    if self.opt.last_group_size != logged_group or epoch_seen % EPOCH_LOG_EVERY == 0:
                        logged_group = self.opt.last_group_size
                        with_whom = (f"averaged with {logged_group} peers" if logged_group > 1
                                     else "stepped alone (no other peer averaged)")
                        log.info("global epoch %d: %s, loss %.3f, lr %.4f", epoch_seen, with_whom, row["loss"],
                                 row["lr"])
                    if epoch_seen % args.val_every == 0 or epoch_seen >= self.total_global_epochs:
                        row.update(self.validate())
                        self.checkpoint()
                        validated_at = epoch_seen
                if self.metrics is not None:
                    st = self.train_loader.stats()
                    row.update({f"loader_{k}": st.get(k) for k in ("images_per_s", "skipped", "missing", "retries",
                                                                     "hedges", "wait_s")})
                    self.metrics.write(row)
                if done or self._should_stop(start):  # again: a validation may just have reached the target
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
                "peer_id": self.peer_id, "stopped_by": self.stop_reason, "data_epoch": self.train_loader.data_epoch}

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
        """Leaves the swarm and stops every thread and process (in the order of TrainerParts.close)."""
        self.parts.close()
