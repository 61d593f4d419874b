"""A simulated swarm: real Loaders (peers with their own seeds) read through a counting proxy in front of the
emulator, and `plan`'s per-epoch GET and byte predictions must match what they actually sent.

Tolerances: per-object reads are exact (one GET per sample read; at most 3% more for retried GETs). The
plan counts the reads a Loader plans, not the transport's hedged second GETs (at most 2% more, taken only when
a GET is slow: on a loaded machine, many are), so the peers here do not hedge. For shards the plan models
the order (it never runs the Loader's code): at this small scale its
expected counts were within 5% of the Loader's over single seeds in simulation (hivedata.tools.plan
docstrings), so 10% is allowed for GETs and bytes.
"""

from __future__ import annotations

import threading

import pytest

from hivedata.gcs.transport import Transport
from hivedata.loader.loader import Loader
from hivedata.sources.prefix import load_index
from hivedata.sources.shards import load_shard_index
from hivedata.tools.pack import pack
from hivedata.tools.plan import layout_of, make_plan
from hivedata.tools.synthetic import SyntheticSpec
from hivedata.tools.synthetic_store import upload_dataset
from tests.support.fault_proxy import FaultProxy

SPEC = SyntheticSpec(num_classes=4, train_per_class=60, val_per_class=0, seed=31, min_short_side=48,
                     max_short_side=96, special_fraction=0.0)
PEERS = (101, 202, 303)  # one seed per peer, as train.py gives each peer its own
EPOCHS = 2
BATCH, BLOCK = 16, 8
EXACT, MODELLED = 0.03, 0.10


@pytest.fixture(scope="module")
def data(gcs_emulator) -> str:
    name = "swarm-plan"
    gcs_emulator.create_bucket(name)
    upload_dataset(name, SPEC, train_prefix="train", val_prefix="val", progress=False)
    pack(f"gs://{name}/train", f"gs://{name}/packed", shard_size=192 * 1024, progress=False, log=lambda s: None)
    return name


def run_swarm(source: object, endpoint: str, **kw) -> None:
    """PEERS loaders at once (threads), each reading EPOCHS epochs in its own order."""
    errors: list[BaseException] = []

    def peer(seed: int) -> None:
        try:
            with Loader(source, batch_size=BATCH, train=True, image_size=32, backend="native", workers=1, seed=seed,
                        endpoint=endpoint, transport=Transport(hedge_budget=0), **kw) as ld:
                for epoch in range(EPOCHS):
                    ld.set_epoch(epoch)
                    for _ in ld:
                        pass
                assert ld.stats()["skipped"] == 0 and ld.stats()["missing"] == 0
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=peer, args=(s,)) for s in PEERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]


def media_reads(proxy: FaultProxy, under: str) -> tuple[int, int]:
    """(GETs, body bytes) of object reads (alt=media) of objects named `under`..., as the proxy relayed them."""
    hits = [x for x in proxy.exchanges
            if x.method == "GET" and "alt=media" in x.target and f"/o/{under}" in x.target and x.status in (200, 206)]
    return len(hits), sum(x.body_bytes for x in hits)


@pytest.mark.parametrize("strategy", ["per-object reads", "shards, global shuffle", "shards, block shuffle"])
def test_plan_predicts_what_a_swarm_reads(data, gcs_emulator, strategy):
    name = data
    objects = load_index(f"gs://{name}/train")
    shards = load_shard_index(f"gs://{name}/packed/train.index.npz")
    # the peers get the opened source (as the plan does); each reads through the proxy (endpoint=)
    source, under, kw = {
        "per-object reads": (objects, "train/", dict(shuffle=True)),
        "shards, global shuffle": (shards, "packed/train-", dict(shuffle=True)),
        "shards, block shuffle": (shards, "packed/train-", dict(shuffle="block", block_size=BLOCK)),
    }[strategy]
    plan = make_plan(layout_of(source), peers=len(PEERS), images_per_s=100.0, batch_size=BATCH, block_size=BLOCK)
    reads = next(ld.reads for ld in plan.loads if ld.reads.strategy == strategy)
    want_gets = reads.gets * len(PEERS) * EPOCHS
    want_bytes = reads.bytes * len(PEERS) * EPOCHS
    with FaultProxy(gcs_emulator.url) as proxy:
        run_swarm(source, proxy.url, **kw)
        gets, nbytes = media_reads(proxy, under)
    print(f"{strategy}: GETs {gets} (plan {want_gets:.1f}), bytes {nbytes} (plan {want_bytes:.0f})")
    if strategy == "per-object reads":
        assert want_gets <= gets <= want_gets * (1 + EXACT), (gets, want_gets)
        assert abs(nbytes / want_bytes - 1) <= EXACT, (nbytes, want_bytes)
    else:
        assert abs(gets / want_gets - 1) <= MODELLED, (gets, want_gets)
        assert abs(nbytes / want_bytes - 1) <= MODELLED, (nbytes, want_bytes)
    if strategy == "shards, block shuffle":  # and the point of it: far fewer GETs than samples read
        assert gets * 4 <= reads.samples * len(PEERS) * EPOCHS
