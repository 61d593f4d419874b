"""Peer discovery against a real fake-gcs-server and real hivemind DHTs on loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from hivedata.train.swarm import PeerRegistry, announce, fetch_announced, initial_peers, peer_seed, visible_maddrs

RUN = "run1"
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@contextlib.contextmanager
def dht_node(**kwargs) -> Iterator:
    """A started hivemind DHT on loopback, always shut down."""
    import hivemind

    dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK, **kwargs)
    try:
        yield dht
    finally:
        dht.shutdown()


def entry(peer_id: str, maddrs: list[str], age_s: float = 0.0, **extra) -> bytes:
    body = {"peer_id": peer_id, "maddrs": maddrs, "updated": time.time() - age_s, "client_mode": False}
    return json.dumps({**body, **extra}).encode()


def wait_for(cond, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    return cond()


def blob(bucket: str, name: str):
    from google.cloud import storage

    return storage.Client().bucket(bucket).blob(name)


def test_second_peer_joins_first_through_registry(emulator, bucket):
    from hivemind.utils import get_dht_time

    with dht_node() as dht1:
        maddrs = visible_maddrs(dht1)
        assert maddrs and all("/ip4/127.0.0.1/" in m for m in maddrs)  # loopback only: kept so local tests work
        reg = PeerRegistry(bucket, RUN, peer_id=str(dht1.peer_id), maddrs=maddrs, heartbeat_s=0.5)
        reg.start()
        try:
            reader = PeerRegistry(bucket, RUN)
            peers = initial_peers(explicit=[], registry=reader, fetch_gcs_path=None, wait_s=10)
            assert peers == maddrs
            assert reg.live_peers() == []  # our own entry is not a peer to join

            name = f"{RUN}/peers/{dht1.peer_id}"
            first = json.loads(blob(bucket, name).download_as_bytes())
            assert first["peer_id"] == str(dht1.peer_id) and first["client_mode"] is False
            assert wait_for(lambda: json.loads(blob(bucket, name).download_as_bytes())["updated"] > first["updated"], 5)

            with dht_node(initial_peers=peers) as dht2:
                assert dht1.store("swarm-key", "hello", expiration_time=get_dht_time() + 60)
                got = wait_for(lambda: dht2.get("swarm-key", latest=True), 10)
                assert got is not None and got.value == "hello"
        finally:
            reg.stop()
        assert not blob(bucket, name).exists()  # stop() deleted the entry
        assert reader.live_peers() == []


def test_stale_malformed_and_client_entries_are_skipped(emulator, bucket, caplog):
    p = f"{RUN}/peers/"
    emulator.upload(bucket, p + "fresh", entry("fresh", ["/ip4/10.0.0.1/tcp/1/p2p/fresh"]))
    emulator.upload(bucket, p + "stale", entry("stale", ["/ip4/10.0.0.2/tcp/1/p2p/stale"], age_s=3600))
    emulator.upload(bucket, p + "client", entry("client", ["/ip4/10.0.0.3/tcp/1/p2p/c"], client_mode=True))
    emulator.upload(bucket, p + "garbage", b"{not json")
    emulator.upload(bucket, p + "nomaddrs", json.dumps({"peer_id": "nomaddrs", "updated": time.time()}).encode())
    emulator.upload(bucket, "otherrun/peers/x", entry("x", ["/ip4/10.0.0.9/tcp/1/p2p/x"]))
    with caplog.at_level(logging.WARNING, logger="hivedata.train.swarm"):
        got = PeerRegistry(bucket, RUN, heartbeat_s=30).live_peers()
    assert got == ["/ip4/10.0.0.1/tcp/1/p2p/fresh"]
    assert f"gs://{bucket}/{p}garbage" in caplog.text and f"gs://{bucket}/{p}nomaddrs" in caplog.text
    assert PeerRegistry(bucket, RUN).live_peers(max_age_s=7200) == ["/ip4/10.0.0.1/tcp/1/p2p/fresh",
                                                                    "/ip4/10.0.0.2/tcp/1/p2p/stale"]


def test_heartbeat_survives_gcs_errors(emulator, bucket, caplog):
    missing = bucket + "-late"  # the bucket does not exist yet: every beat fails until it does
    reg = PeerRegistry(missing, RUN, peer_id="p1", maddrs=["/ip4/10.0.0.1/tcp/1/p2p/p1"], heartbeat_s=0.3)
    with caplog.at_level(logging.WARNING, logger="hivedata.train.swarm"):
        reg.start()
        try:
            time.sleep(0.8)
            assert reg._thread is not None and reg._thread.is_alive()
            assert "heartbeat" in caplog.text
            emulator.create_bucket(missing)
            assert wait_for(lambda: PeerRegistry(missing, RUN).live_peers(), 10) == ["/ip4/10.0.0.1/tcp/1/p2p/p1"]
        finally:
            reg.stop()
    assert PeerRegistry(missing, RUN).live_peers() == []


def test_reader_sees_a_peer_while_it_heartbeats(emulator, bucket):
    # each heartbeat replaces the object; readers fetch by name, so a rewrite mid-read never hides the peer
    reg = PeerRegistry(bucket, RUN, peer_id="busy", maddrs=["/ip4/10.0.0.1/tcp/1/p2p/busy"], heartbeat_s=0.02)
    reg.start()
    try:
        reader = PeerRegistry(bucket, RUN, heartbeat_s=30)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert reader.live_peers() == ["/ip4/10.0.0.1/tcp/1/p2p/busy"]
    finally:
        reg.stop()


def test_client_mode_registry_only_reads(emulator, bucket):
    emulator.upload(bucket, f"{RUN}/peers/other", entry("other", ["/ip4/10.0.0.1/tcp/1/p2p/other"]))
    reg = PeerRegistry(bucket, RUN, peer_id="me", maddrs=["/ip4/10.0.0.5/tcp/1/p2p/me"], client_mode=True)
    reg.start()
    reg.stop()
    assert not blob(bucket, f"{RUN}/peers/me").exists()
    assert reg.live_peers() == ["/ip4/10.0.0.1/tcp/1/p2p/other"]
    with pytest.raises(ValueError):
        PeerRegistry(bucket, RUN).start()  # a reachable peer must say who it is


def test_legacy_announce_fetch_round_trip(emulator, bucket):
    maddrs = ["/ip4/10.0.0.1/tcp/31337/p2p/A", "/ip4/10.0.0.2/tcp/31337/p2p/A"]
    announce(f"gs://{bucket}/swarm/peers.txt", maddrs)
    assert fetch_announced(f"gs://{bucket}/swarm/peers.txt") == maddrs
    assert fetch_announced(f"{bucket}/swarm/peers.txt") == maddrs
    assert blob(bucket, "swarm/peers.txt").download_as_text() == "".join(m + "\n" for m in maddrs)
    assert fetch_announced(f"gs://{bucket}/swarm/missing.txt") == []
    with pytest.raises(ValueError):
        announce(f"gs://{bucket}", maddrs)


def test_initial_peers_union_is_deduplicated_and_ordered(emulator, bucket):
    emulator.upload(bucket, f"{RUN}/peers/r", entry("r", ["/ip4/10.0.0.2/tcp/1/p2p/r", "/ip4/10.0.0.1/tcp/1/p2p/e"]))
    announce(f"gs://{bucket}/peers.txt", ["/ip4/10.0.0.3/tcp/1/p2p/l", "/ip4/10.0.0.2/tcp/1/p2p/r"])
    got = initial_peers(explicit=["/ip4/10.0.0.1/tcp/1/p2p/e"], registry=PeerRegistry(bucket, RUN),
                        fetch_gcs_path=f"gs://{bucket}/peers.txt")
    assert got == ["/ip4/10.0.0.1/tcp/1/p2p/e", "/ip4/10.0.0.2/tcp/1/p2p/r", "/ip4/10.0.0.3/tcp/1/p2p/l"]
    # an unreadable source is logged, not fatal: the others still count
    got = initial_peers(explicit=["/ip4/10.0.0.1/tcp/1/p2p/e"], registry=PeerRegistry(bucket + "-none", RUN),
                        fetch_gcs_path=None)
    assert got == ["/ip4/10.0.0.1/tcp/1/p2p/e"]


def test_initial_peers_waits_for_a_peer_then_gives_up(emulator, bucket):
    reader = PeerRegistry(bucket, RUN)
    t0 = time.monotonic()
    assert initial_peers(explicit=[], registry=reader, fetch_gcs_path=None, wait_s=1.2) == []
    assert 1.1 < time.monotonic() - t0 < 5

    late = threading.Timer(1.0, emulator.upload,
                           args=(bucket, f"{RUN}/peers/late", entry("late", ["/ip4/10.0.0.7/tcp/1/p2p/late"])))
    late.start()
    try:
        t0 = time.monotonic()
        assert initial_peers(explicit=[], registry=reader, fetch_gcs_path=None, wait_s=15) == [
            "/ip4/10.0.0.7/tcp/1/p2p/late"]
        assert time.monotonic() - t0 < 10
    finally:
        late.cancel()
        late.join()


class FakeDHT:
    def __init__(self, maddrs: list[str]) -> None:
        self.maddrs = maddrs

    def get_visible_maddrs(self) -> list[str]:
        return self.maddrs


def test_visible_maddrs_prefers_non_loopback():
    lo, pub = "/ip4/127.0.0.1/tcp/5/p2p/X", "/ip4/192.0.2.2/tcp/5/p2p/X"
    assert visible_maddrs(FakeDHT([lo, pub, "/ip6/::1/tcp/5/p2p/X"])) == [pub]
    assert visible_maddrs(FakeDHT([lo])) == [lo]
    assert visible_maddrs(FakeDHT(["/dns4/peer.example/tcp/5/p2p/X", lo])) == ["/dns4/peer.example/tcp/5/p2p/X"]


def test_peer_seed_is_stable_and_distinct():
    assert peer_seed("12D3KooWA", 0) == peer_seed("12D3KooWA", 0) == 2697595529729899525  # pinned: sha256-based
    assert peer_seed("12D3KooWA", 1) == 7451033468791081739
    seeds = {peer_seed(f"12D3KooW{i}", s) for i in range(50) for s in (0, 1)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**63 for s in seeds)
