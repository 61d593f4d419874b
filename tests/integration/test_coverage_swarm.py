"""Coordinated coverage across real hivemind DHTs on loopback: peers claim blocks of a data epoch through the DHT.

Three peers read one data epoch once (duplicates <= 1%); a peer SIGKILLed mid-epoch has its unfinished blocks read
by the others within the claim TTL; a peer joining mid-epoch reads only blocks nobody had claimed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivedata.loader.coverage import EpochBlocks
from tests.support.coverage_peer import LOOPBACK, Reading, read_coverage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TTL = 3.0
SLACK_S = 4.0  # after the TTL: a survivor's next claim round (and a loaded 2-core machine)


@contextlib.contextmanager
def dhts(count: int) -> Iterator[list]:
    """`count` hivemind DHTs on loopback, the later ones joined to the first; always shut down."""
    import hivemind

    nodes = [hivemind.DHT(start=True, host_maddrs=LOOPBACK)]
    try:
        first = [str(m) for m in nodes[0].get_visible_maddrs()]
        nodes += [hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=first) for _ in range(count - 1)]
        yield nodes
    finally:
        for node in nodes:
            node.shutdown()


def run_readers(nodes: list, run_id: str, **kw) -> list[Reading]:
    """One coverage reader per DHT, in threads, until the swarm's data epoch 0 is complete."""
    out: list[Reading | BaseException | None] = [None] * len(nodes)

    def go(i: int) -> None:
        try:
            out[i] = read_coverage(nodes[i], run_id=run_id, claim_ttl=TTL, **kw)
        except BaseException as e:  # reported by the test, not lost in a thread
            out[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    for r in out:
        if not isinstance(r, Reading):
            raise AssertionError(f"a reader failed: {r!r}")
    return out


def epoch_reads(readings: list[Reading], epoch: int = 0) -> list[int]:
    """Every sample index read in one data epoch, by any reader (with repeats)."""
    return [i for r in readings for e, i, _ in r.samples if e == epoch]


def test_three_peers_read_one_data_epoch_once():
    n = 1500
    with dhts(3) as nodes:
        readings = run_readers(nodes, "cov3", n=n, block_size=16, batch_size=24, delay_s=0.01)
    reads = epoch_reads(readings)
    assert set(reads) == set(range(n))  # every sample of the dataset
    duplicates = len(reads) - n
    assert duplicates <= 0.01 * n, f"{duplicates} samples read twice in data epoch 0"
    per_peer = [len(r.blocks("claimed", 0)) for r in readings]
    assert all(k > 0 for k in per_peer)  # the work was shared
    owners = Counter(b for r in readings for b in r.blocks("claimed", 0))
    assert sum(c - 1 for c in owners.values()) <= 1  # a block confirmed by two peers: a race the read-back missed


def start_reader_process(initial: list[str], out: Path, **kw) -> subprocess.Popen:
    """A coverage reader in its own process group (SIGKILL takes its hivemind children with it)."""
    cmd = [sys.executable, "-m", "tests.support.coverage_peer", "--run_id", "covkill", "--out", str(out),
           "--claim_ttl", str(TTL)]
    for m in initial:
        cmd += ["--initial_peer", m]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def test_a_killed_peers_claimed_blocks_are_read_by_the_others_within_the_ttl(tmp_path):
    n, block, batch = 1200, 16, 8
    out = tmp_path / "killed.jsonl"
    with dhts(2) as nodes:
        first = [str(m) for m in nodes[0].get_visible_maddrs()]
        proc = start_reader_process(first, out, n=n, block_size=block, batch_size=batch, delay_s=0.2, max_s=120)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(x["kind"] == "batch" for x in lines(out)) < 3:
                assert proc.poll() is None, "the reader process died"
                time.sleep(0.1)
            survivors: list[Reading] = []
            thread = threading.Thread(target=lambda: survivors.extend(
                run_readers(nodes, "covkill", n=n, block_size=block, batch_size=batch, delay_s=0.02)))
            thread.start()
            time.sleep(1.0)  # the survivors read while the peer holds its claims
            os.killpg(proc.pid, signal.SIGKILL)
            t_kill = time.time()
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        thread.join(timeout=90)
        assert not thread.is_alive() and len(survivors) == 2
    killed = lines(out)
    claimed = {(x["epoch"], x["block"]) for x in killed if x["kind"] == "event" and x["event"] == "claimed"}
    delivered = Counter((e, i) for x in killed if x["kind"] == "batch" for e, i in zip(x["epochs"], x["indices"],
                                                                                          strict=True))
    blocks = EpochBlocks(n, block, seed=0)
    unfinished = {(e, b) for e, b in claimed
                  if not all((e, int(i)) in delivered for i in blocks.samples(e, b))}
    assert unfinished and all(e == 0 for e, _ in unfinished)  # killed holding claims in data epoch 0
    retaken: dict[tuple[int, int], float] = {}
    for r in survivors:
        for ev, e, b, t in r.events:
            if ev == "claimed" and (e, b) in unfinished:
                retaken[(e, b)] = min(t, retaken.get((e, b), t))
    assert set(retaken) == unfinished  # every one read by a survivor ...
    late = {k: round(t - t_kill, 2) for k, t in retaken.items() if not 0 <= t - t_kill <= TTL + SLACK_S}
    assert not late, f"claimed too early or too late after the kill (s): {late}"  # ... after the kill, within the TTL
    reads = epoch_reads(survivors) + [i for (e, i), c in delivered.items() if e == 0 for _ in range(c)]
    assert set(reads) == set(range(n))  # epoch 0 whole, across all three


def test_a_joiner_mid_epoch_reads_only_unclaimed_blocks():
    n, block, batch = 1440, 16, 16
    with dhts(3) as nodes:
        early: list[Reading] = []
        stop_early = threading.Thread(target=lambda: early.extend(
            run_readers(nodes[:2], "covjoin", n=n, block_size=block, batch_size=batch, delay_s=0.1)))
        stop_early.start()
        deadline = time.monotonic() + 30
        joined_at = None
        while time.monotonic() < deadline:  # join once about a third of the epoch is claimed
            board = nodes[2].get(f"covjoin_cov_{EpochBlocks(n, block, 0).tag()}_0", latest=True)
            if board is not None and len(board.value) >= 30:
                joined_at = time.time()
                break
            time.sleep(0.1)
        assert joined_at is not None
        claimed_before = {int(b) for b in board.value}
        joiner = run_readers(nodes[2:], "covjoin", n=n, block_size=block, batch_size=batch, delay_s=0.1)[0]
        stop_early.join(timeout=90)
    mine = joiner.blocks("claimed", 0)
    theirs = set().union(*(r.blocks("claimed", 0) for r in early))
    assert mine, "the joiner found no free block in data epoch 0"
    assert not mine & theirs  # no block the others had claimed (before or after it joined)
    assert not {b for _, b in mine} & claimed_before
    reads = epoch_reads(early + [joiner])
    assert set(reads) == set(range(n)) and len(reads) - n <= 0.01 * n


def test_train_py_coverage_swarm_wires_the_training_loader_to_the_dht(gcs_emulator):
    """build_data with --coverage swarm: two peers' Loaders (real emulator bucket, real DHTs) read data epoch 0
    between them, every block ends done in the DHT, and the loader state records the swarm's data epoch."""
    import torch

    from hivedata.tools.synthetic import SyntheticSpec
    from hivedata.train.claims import DHTClaimBoard
    from hivedata.train.config import fill_defaults, parse_args
    from hivedata.train.parts import build_data
    from tests.support.buckets import dataset_bucket

    bucket = dataset_bucket(gcs_emulator, "coverage-parts", SyntheticSpec(num_classes=3, train_per_class=16,
                                                                          val_per_class=2, seed=3))
    args = fill_defaults(parse_args(["--bucket", bucket, "--run_id", "covparts", "--image_size", "32", "--batch_size",
                                     "8", "--num_workers", "1", "--backend", "native", "--device", "cpu",
                                     "--coverage", "swarm", "--claim_ttl", "5", "--seed", "4"]), embedded=True)
    with dhts(2) as nodes:
        datas = [build_data(args, device=torch.device("cpu"), peer_id=str(d.peer_id), dht=d) for d in nodes]
        batches = [0, 0]
        errors: list[BaseException] = []

        def train(i: int) -> None:
            loader = datas[i].train
            try:
                while loader.data_epoch < 1:
                    for images, _labels in loader:
                        assert images.shape == (8, 3, 32, 32)
                        batches[i] += 1
                        if loader.data_epoch >= 1:
                            break
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=90)
            assert not errors, errors
            feed = datas[0].train.feed
            board = DHTClaimBoard(nodes[0], "covparts", feed.blocks.tag()).blocks(0)
            assert len(board) == feed.blocks.n_blocks == 6 and {s for _, s in board.values()} == {"done"}
            assert sum(batches) >= 6 and all(datas[i].seed == 4 for i in range(2))
            state = datas[0].train.state_dict()
            assert state["feed"]["epoch"] >= 1 and state["order"].startswith("swarm:48:8:4:")
        finally:
            for data in datas:
                data.close()
