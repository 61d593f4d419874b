"""The Trainer's parts against real services: the swarm and data factories on a real fake-gcs-server, a Trainer
run on parts built beforehand, and SwarmOptimizers with real hivemind DHTs on loopback (group sizes, cancelling)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import hivemind
import pytest
import torch
from hivemind.averaging.control import AveragingStage
from torch import nn

from hivedata.tools.synthetic import SyntheticSpec
from hivedata.train.config import fill_defaults, parse_args
from hivedata.train.parts import build_data, build_parts, build_swarm
from hivedata.train.swarm import PeerRegistry, fetch_announced, peer_seed
from hivedata.train.swarm_optimizer import SwarmOptimizer, leave_swarm
from tests.support.buckets import dataset_bucket

pytestmark = pytest.mark.slow
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
SPEC = SyntheticSpec(num_classes=3, train_per_class=16, val_per_class=4, seed=5, min_short_side=48,
                     max_short_side=64)


def flags(bucket: str, run_id: str, *extra: str):
    """A tiny CPU configuration of train.py on the test bucket."""
    args = parse_args(["--bucket", bucket, "--run_id", run_id, "--arch", "resnet18", "--image_size", "32",
                       "--batch_size", "8", "--target_batch_size", "16", "--epochs", "0.5", "--warmup_epochs", "0.1",
                       "--matchmaking_time", "1", "--averaging_timeout", "10", "--val_batches", "1",
                       "--num_workers", "1", "--backend", "native", "--device", "cpu", "--no_progress", *extra])
    return fill_defaults(args, embedded=True)


@pytest.fixture(scope="module")
def data_bucket(gcs_emulator) -> str:
    return dataset_bucket(gcs_emulator, "trainer-parts", SPEC)


def test_swarm_factory_registers_announces_and_leaves(data_bucket):
    args = flags(data_bucket, "swarm-parts", "--announce_gcs_path", f"gs://{data_bucket}/swarm-parts/announce")
    swarm = build_swarm(args, loopback=True)
    reader = PeerRegistry(data_bucket, "swarm-parts")
    try:
        assert swarm.dht.is_alive() and swarm.peer_id == str(swarm.dht.peer_id)
        assert swarm.maddrs and all(m.startswith("/ip4/127.0.0.1/") for m in swarm.maddrs)
        assert reader.live_peers() == swarm.maddrs
        assert fetch_announced(args.announce_gcs_path) == swarm.maddrs
    finally:
        swarm.close()
    assert not swarm.dht.is_alive() and reader.live_peers() == []


def test_data_factory_reads_in_the_peers_order_or_the_resumed_one(data_bucket):
    args = flags(data_bucket, "data-parts")
    data = build_data(args, device=torch.device("cpu"), peer_id="peer-a")
    try:
        assert data.seed == peer_seed("peer-a", args.seed) == data.train.state_dict()["seed"]
        assert len(data.train.index) == 48 and len(data.val.index) == 12
        assert data.val.index.classes == data.train.index.classes
        images, labels = next(iter(data.train))
        assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)
    finally:
        data.close()
    resumed = build_data(args, device=torch.device("cpu"), peer_id="peer-b", resume_state={"loader": {"seed": 11}})
    try:
        assert resumed.seed == 11 == resumed.train.state_dict()["seed"]
    finally:
        resumed.close()


def test_a_trainer_runs_on_parts_built_beforehand(data_bucket, tmp_path):
    from hivedata.train.trainer import Trainer

    args = flags(data_bucket, "given-parts", "--checkpoint_dir", str(tmp_path / "ck"))
    parts = build_parts(args, loopback=True)
    trainer = Trainer(args, parts=parts)
    try:
        assert trainer.opt is parts.learner.opt and trainer.train_loader is parts.data.train
        summary = trainer.run()  # 0.5 passes over 48 samples: 2 global epochs of 16
        assert summary["global_epoch"] == trainer.total_global_epochs == 2
        assert summary["group_sizes"] == [(0, 1), (1, 1)]
        assert parts.checkpoints.store.latest_step() == 2
    finally:
        trainer.close()
    assert not parts.swarm.dht.is_alive() and PeerRegistry(data_bucket, "given-parts").live_peers() == []


def test_metrics_rows_come_every_log_every_steps_and_at_each_global_epoch(data_bucket, tmp_path):
    from hivedata.train.metrics import read_metrics
    from hivedata.train.trainer import Trainer

    args = flags(data_bucket, "log-every", "--metrics", str(tmp_path / "m.jsonl"), "--log_every", "3",
                 "--epochs", "1")
    trainer = Trainer(args, loopback=True)
    try:
        summary = trainer.run()  # 1 pass over 48 samples in steps of 8: 6 steps, 3 global epochs of 16
    finally:
        trainer.close()
    rows = read_metrics(str(tmp_path / "m.jsonl"))
    steps = [r["step"] for r in rows]
    epoch_rows = [r for r in rows if r.get("averaged_with") is not None]
    assert summary["global_epoch"] == 3 and len(epoch_rows) == 3  # every global epoch has its row
    assert all(r["step"] % 3 == 0 or r.get("averaged_with") is not None or r["step"] == steps[-1] for r in rows)
    assert len(rows) < 6 and all(r["loss"] > 0 and r["samples_per_s"] > 0 for r in rows)


# -- SwarmOptimizer with real averagers --------------------------------------------------------------------------
def tiny_optimizer(dht: hivemind.DHT, run_id: str, **kwargs) -> tuple[nn.Module, SwarmOptimizer]:
    model = nn.Linear(6, 3)
    opt = SwarmOptimizer(dht=dht, run_id=run_id, params=model.parameters(), batch_size_per_step=4,
                         optimizer=lambda params: torch.optim.SGD(params, lr=0.1), verbose=False, **kwargs)
    return model, opt


def _peer(initial_peers: list[str], out: mp.Queue, go, delayed: bool = False) -> None:
    """One peer in its own process: peers in one process -- or forked from one that used hivemind -- share
    hivemind's process-wide signing key, and their progress reports would look like one peer's. It trains once
    both peers are up, until it has recorded a round with both (or a deadline): on a loaded machine the second
    peer can take longer to start than the first takes for several rounds alone."""
    mp.set_start_method("fork", force=True)  # a spawned child defaults to spawn; hivemind forks its helpers
    dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=initial_peers)
    out.put([str(m) for m in dht.get_visible_maddrs()])
    overlap = dict(delay_optimizer_step=True, delay_grad_averaging=True, offload_optimizer=True) if delayed else {}
    model, opt = tiny_optimizer(dht, "pair", target_batch_size=64, matchmaking_time=2, averaging_timeout=15, **overlap)
    try:
        go.wait(timeout=120)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not (opt.local_epoch >= 2 and any(n == 2 for _, n in opt.group_sizes)):
            nn.functional.mse_loss(model(torch.randn(4, 6)), torch.zeros(4, 3)).backward()
            opt.step()
            opt.zero_grad()
            time.sleep(0.1)
        out.put(opt.group_sizes)
    finally:
        leave_swarm(opt, dht)


@pytest.mark.parametrize("delayed", [False, True], ids=["in-step", "delayed-updates"])
def test_two_peers_record_their_rounds_as_groups_of_two(delayed):
    """With delayed updates the round finishes after the step that began it: its size is read when it is done."""
    ctx = mp.get_context("spawn")
    queues, go = [ctx.Queue(), ctx.Queue()], ctx.Event()
    first = ctx.Process(target=_peer, args=([], queues[0], go, delayed))
    first.start()
    second = ctx.Process(target=_peer, args=(queues[0].get(timeout=60), queues[1], go, delayed))
    second.start()
    try:
        queues[1].get(timeout=60)  # the second peer's addresses
        go.set()
        sizes = [q.get(timeout=240) for q in queues]
    finally:
        for p in (first, second):
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    for got in sizes:  # an epoch a peer caught up on by downloading the state has no round of its own
        assert any(size == 2 for _, size in got) and all(size in (1, 2) for _, size in got), got


def test_a_cancelled_round_stops_matchmaking_at_once():
    """hivemind's cancel() could leave the averager matchmaking (and polling the DHT) until the round's deadline."""
    dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    _, opt = tiny_optimizer(dht, "cancel", target_batch_size=16, matchmaking_time=1, averaging_timeout=30)
    stop = threading.Event()

    def busy() -> None:  # a training process's other threads: the main thread waits for the GIL
        x = 0
        while not stop.is_set():
            x += sum(range(1000))

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    waited = []
    try:
        for _ in range(15):
            control = opt.grad_averager.schedule_step(timeout=20)
            time.sleep(0.3)
            assert control.stage == AveragingStage.LOOKING_FOR_GROUP
            start = time.monotonic()
            control.cancel()
            while control.stage != AveragingStage.FINISHED and time.monotonic() - start < 5:
                time.sleep(0.01)
            waited.append(time.monotonic() - start)
    finally:
        stop.set()
        leave_swarm(opt, dht)
    assert max(waited) < 2, [round(w, 2) for w in waited]
