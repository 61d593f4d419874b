"""A dead registry entry (a crashed peer, a restarted swarm) never stops a new peer from starting (issue 14)."""

from __future__ import annotations

import json
import logging
import socket
import time

import hivemind
import pytest
from hivemind.utils.timed_storage import get_dht_time

from hivedata.gcs.storage import storage_client
from hivedata.train.join import answering, start_dht, tcp_endpoint
from hivedata.train.swarm import PeerRegistry

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def _dead_maddrs() -> list[str]:
    """The multiaddrs of a real DHT that has shut down (its port is closed now)."""
    dht = hivemind.DHT(start=True, host_maddrs=LOOPBACK)
    maddrs = [str(m) for m in dht.get_visible_maddrs()]
    dht.shutdown()
    for m in maddrs:  # wait until its port refuses connections
        host, port = tcp_endpoint(m)
        for _ in range(50):
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                time.sleep(0.1)
            except OSError:
                break
    return maddrs


def _register(bucket: str, run_id: str, peer_id: str, maddrs: list[str]) -> None:
    body = {"peer_id": peer_id, "maddrs": maddrs, "updated": time.time(), "client_mode": False}
    storage_client().bucket(bucket).blob(f"{run_id}/peers/{peer_id}").upload_from_string(json.dumps(body))


def test_tcp_endpoints_of_multiaddrs():
    assert tcp_endpoint("/ip4/10.0.0.1/tcp/31337/p2p/QmX") == ("10.0.0.1", 31337)
    assert tcp_endpoint("/dns4/peer.example/tcp/443") == ("peer.example", 443)
    assert tcp_endpoint("/ip4/10.0.0.1/udp/31337/quic") is None
    assert tcp_endpoint("/ip4/10.0.0.1/tcp/0") is None and tcp_endpoint("garbage") is None


def test_a_peer_starts_when_every_registered_peer_is_dead(emulator, bucket, caplog):
    dead = _dead_maddrs()
    _register(bucket, "crashed-run", "ghost", dead)
    reader = PeerRegistry(bucket, "crashed-run")
    assert reader.live_peers() == dead  # fresh heartbeat: the registry alone cannot tell it is dead
    caplog.set_level(logging.WARNING, logger="hivedata.train.join")
    t0 = time.perf_counter()
    dht = start_dht(reader.live_peers(), lambda peers: hivemind.DHT(start=True, initial_peers=peers,
                                                                    host_maddrs=LOOPBACK))
    try:
        assert dht.is_alive() and time.perf_counter() - t0 < 30
        assert "starting a new swarm" in caplog.text
        # a later peer joins the new swarm through it
        second = start_dht([str(m) for m in dht.get_visible_maddrs()] + dead,
                           lambda peers: hivemind.DHT(start=True, initial_peers=peers, host_maddrs=LOOPBACK))
        try:
            assert second.is_alive()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not dht.store("k", "v", get_dht_time() + 60):
                time.sleep(0.2)
            assert second.get("k", latest=True) is not None  # the two are one swarm
        finally:
            second.shutdown()
    finally:
        dht.shutdown()


def test_only_the_answering_peers_are_kept():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        live = f"/ip4/127.0.0.1/tcp/{server.getsockname()[1]}/p2p/QmLive"
        dead = _dead_maddrs()
        quic = "/ip4/127.0.0.1/udp/9/quic"  # not probed: kept
        assert answering(dead + [live, quic], timeout_s=1.0) == [live, quic]


def test_a_client_mode_peer_with_no_answering_peer_says_so():
    with pytest.raises(RuntimeError, match="client-mode peer: none of the 1 known"):
        start_dht(_dead_maddrs()[:1], lambda peers: pytest.fail("must not start a DHT"), client_mode=True)
