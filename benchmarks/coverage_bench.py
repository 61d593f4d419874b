"""Coordinated coverage against per-peer orders, same run: how much of the dataset a swarm reads in one pass-worth of
samples, and what claiming blocks through the DHT costs.

per-peer: what train.py does without --coverage swarm. Each of P peers reads its own seeded permutation (its seed
  derives from its peer id); together they read n samples (n/P each), and the bench counts the distinct samples.
swarm: P peers, each with its own hivemind DHT on loopback, claim blocks (hivedata.train.claims) and read until the
  swarm's data epoch 0 is complete; the bench counts distinct samples, repeats, and the claim rate (a peer reading
  as fast as it can is limited by its claims only).

    python benchmarks/coverage_bench.py --peers 3 --n 6000 --block 32
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter

from hivedata.loader.orders import GlobalOrder
from hivedata.train.swarm import peer_seed

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def per_peer(n: int, peers: int, seed: int) -> Counter:
    """Samples read when each peer reads n/peers of its own permutation."""
    reads: Counter = Counter()
    for p in range(peers):
        order = GlobalOrder(n, peer_seed(f"peer-{p}", seed)).order(0)
        reads.update(order[:n // peers].tolist())
    return reads


def swarm(n: int, peers: int, block: int, batch: int, ttl: float, settle: float, seed: int) -> tuple[Counter, float,
                                                                                                     list[dict]]:
    """Samples read in data epoch 0 by `peers` claiming readers; wall seconds; each peer's claim stats."""
    import hivemind

    from hivedata.train.claims import coverage_feed

    nodes = [hivemind.DHT(start=True, host_maddrs=LOOPBACK)]
    first = [str(m) for m in nodes[0].get_visible_maddrs()]
    nodes += [hivemind.DHT(start=True, host_maddrs=LOOPBACK, initial_peers=first) for _ in range(peers - 1)]
    reads: Counter = Counter()
    stats: list[dict] = []
    lock = threading.Lock()

    def read(dht) -> None:
        feed = coverage_feed(dht, "bench", str(dht.peer_id), n=n, batch_size=batch, block_size=block, seed=seed,
                             claim_ttl=ttl, settle_s=settle)
        try:
            while feed.epoch < 1:
                indices, epochs = feed.next_batch()
                with lock:
                    reads.update(indices[epochs == 0].tolist())
                feed.delivered(len(indices))
        finally:
            feed.close()
            stats.append(dict(feed.source.stats))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=read, args=(d,)) for d in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for d in nodes:
        d.shutdown()
    return reads, wall, stats


def row(name: str, reads: Counter, n: int, extra: str = "") -> str:
    total = sum(reads.values())
    distinct = len(reads)
    repeats = total - distinct
    return (f"| {name} | {total} | {distinct / n:.1%} | {(n - distinct) / n:.1%} | {repeats / n:.2%} | "
            f"{extra} |")


def main() -> None:
    """Prints one table: per-peer orders vs coordinated coverage."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=3)
    p.add_argument("--n", type=int, default=6000, help="dataset size")
    p.add_argument("--block", type=int, default=32, help="samples per block")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--claim_ttl", type=float, default=10.0)
    p.add_argument("--settle_s", type=float, default=0.5, help="the read-back delay (train.py's default: 0.5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    base = per_peer(args.n, args.peers, args.seed)
    reads, wall, stats = swarm(args.n, args.peers, args.block, args.batch, args.claim_ttl, args.settle_s, args.seed)
    blocks = -(-args.n // args.block)
    claims = sum(s["claims"] for s in stats)
    print(f"{args.peers} peers, {args.n} samples, blocks of {args.block} ({blocks} per data epoch), "
          f"settle {args.settle_s} s, loopback DHTs")
    print("| order | samples read | distinct (of the dataset) | never read | read again | cost |")
    print("|---|---|---|---|---|---|")
    print(row("per-peer (today's default)", base, args.n, "none"))
    rate = claims / wall / args.peers
    print(row("swarm (--coverage swarm)", reads, args.n,
              f"{wall:.1f} s for the epoch, {rate:.1f} blocks/s per peer ({rate * args.block:.0f} samples/s), "
              f"races lost {sum(s['races_lost'] for s in stats)}"))


if __name__ == "__main__":
    main()
