"""A coverage reader for the coordinated-coverage tests: one peer (its own hivemind DHT on loopback) reading blocks it
claims, recording every event as a JSON line. Run in a thread (read_coverage) or as a process (python -m, so a test
can SIGKILL it): it prints its DHT's multiaddrs as the first line of stdout."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@dataclass
class Reading:
    """What one reader did: claim events (event, epoch, block, time) and the batches it read (epoch, index, time)."""

    events: list[tuple[str, int, int, float]] = field(default_factory=list)
    samples: list[tuple[int, int, float]] = field(default_factory=list)

    def blocks(self, event: str, epoch: int | None = None) -> set[tuple[int, int]]:
        """(epoch, block) of every `event`, in one epoch or all."""
        return {(e, b) for ev, e, b, _ in self.events if ev == event and (epoch is None or e == epoch)}


def read_coverage(dht: Any, *, run_id: str, n: int, block_size: int, batch_size: int, claim_ttl: float,
                  settle_s: float = 0.1, seed: int = 0, until_epoch: int = 1, delay_s: float = 0.0,
                  max_s: float = 60.0, stop: threading.Event | None = None, out: TextIO | None = None) -> Reading:
    """Reads batches from claimed blocks until the swarm's data epoch reaches until_epoch (or max_s or stop)."""
    from hivedata.train.claims import coverage_feed

    reading = Reading()
    lock = threading.Lock()

    def record(kind: str, payload: dict) -> None:
        if out is not None:
            with lock:
                out.write(json.dumps({"kind": kind, **payload}) + "\n")
                out.flush()

    def listener(event: str, epoch: int, block: int) -> None:
        t = time.time()
        reading.events.append((event, epoch, block, t))
        record("event", {"event": event, "epoch": epoch, "block": block, "t": t})

    feed = coverage_feed(dht, run_id, str(dht.peer_id), n=n, batch_size=batch_size, block_size=block_size, seed=seed,
                         claim_ttl=claim_ttl, settle_s=settle_s, listener=listener)
    deadline = time.monotonic() + max_s
    try:
        while feed.epoch < until_epoch and time.monotonic() < deadline and not (stop and stop.is_set()):
            batch = feed.next_batch()
            if batch is None:
                break
            indices, epochs = batch
            t = time.time()
            reading.samples += [(int(e), int(i), t) for e, i in zip(epochs, indices, strict=True)]
            record("batch", {"epochs": epochs.tolist(), "indices": indices.tolist(), "t": t})
            feed.delivered(len(indices))
            if delay_s:
                time.sleep(delay_s)
    finally:
        feed.close()
    return reading


def main(argv: list[str] | None = None) -> int:
    """A reader process: joins --initial_peer, reads, writes JSON lines to --out."""
    import hivemind

    p = argparse.ArgumentParser()
    p.add_argument("--initial_peer", action="append", default=[])
    p.add_argument("--run_id", required=True)
    p.add_argument("--out", required=True)
    for name in ("n", "block_size", "batch_size"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--claim_ttl", type=float, required=True)
    p.add_argument("--delay_s", type=float, default=0.0)
    p.add_argument("--max_s", type=float, default=60.0)
    args = p.parse_args(argv)
    dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=args.initial_peer)
    print(json.dumps([str(m) for m in dht.get_visible_maddrs()]), flush=True)
    try:
        with open(args.out, "w") as out:
            read_coverage(dht, run_id=args.run_id, n=args.n, block_size=args.block_size, batch_size=args.batch_size,
                          claim_ttl=args.claim_ttl, delay_s=args.delay_s, max_s=args.max_s, out=out)
    finally:
        dht.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
