"""Joining a swarm: initial peers that do not answer are dropped, and when none answers the peer starts a new one.

A registry entry outlives a crashed or preempted peer for up to three heartbeats, and an ``--initial_peer`` may
name a machine that is gone. Handing such addresses to hivemind makes ``DHT(initial_peers=...)`` fail with
"failed to connect to bootstrap peers", so after a crash or a whole-swarm restart nobody could rejoin. Each
candidate is probed with a TCP connect first (in parallel, a short timeout); if hivemind still cannot
bootstrap from those that answered, the peer starts a new swarm with a one-line warning, and later peers find
it through the registry.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0


def tcp_endpoint(maddr: str) -> tuple[str, int] | None:
    """(host, port) of a /ip4|/ip6|/dns|/dns4|/dns6 .../tcp/PORT multiaddr; None for anything else (udp, quic)."""
    parts = maddr.strip().split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6", "dns", "dns4", "dns6") or parts[3] != "tcp":
        return None
    try:
        port = int(parts[4])
    except ValueError:
        return None
    return (parts[2], port) if 0 < port < 65536 else None


def answers(maddr: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the multiaddr succeeds within timeout_s (non-TCP addresses: assumed yes)."""
    endpoint = tcp_endpoint(maddr)
    if endpoint is None:
        return True
    try:
        with socket.create_connection(endpoint, timeout=timeout_s):
            return True
    except OSError:
        return False


def answering(maddrs: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """The multiaddrs that answer, in their order; those that do not are logged once."""
    if not maddrs:
        return []
    with ThreadPoolExecutor(min(16, len(maddrs))) as pool:
        ok = list(pool.map(lambda m: answers(m, timeout_s), maddrs))
    dead = [m for m, alive in zip(maddrs, ok, strict=True) if not alive]
    if dead:
        log.info("dropping %d initial peer address(es) that did not answer within %g s: %s", len(dead), timeout_s,
                 ", ".join(dead[:4]) + (" ..." if len(dead) > 4 else ""))
    return [m for m, alive in zip(maddrs, ok, strict=True) if alive]


def start_dht(peers: list[str], make_dht: Callable[[list[str]], Any], *, client_mode: bool = False,
              timeout_s: float = PROBE_TIMEOUT_S) -> Any:
    """make_dht(initial_peers) with the peers that answer; a new swarm (no initial peers) when none can be joined.

    A client-mode peer cannot start a swarm (nobody could reach it): it raises instead, naming what it tried.
    """
    live = answering(peers, timeout_s)
    if client_mode and peers and not live:
        raise RuntimeError(f"client-mode peer: none of the {len(peers)} known peer address(es) answered "
                           f"({', '.join(peers[:3])}{' ...' if len(peers) > 3 else ''}); a client-mode peer "
                           "cannot start a swarm: start a reachable peer first")
    if peers and not live:
        log.warning("none of the %d known peer address(es) answered (a crashed or restarted swarm?): starting a new "
                    "swarm; later peers will find this one", len(peers))
        return make_dht([])
    if not live:
        return make_dht([])
    try:
        return make_dht(live)
    except Exception as e:  # hivemind's P2PDaemonError: the addresses answered but no peer could be joined
        if client_mode or "bootstrap" not in str(e).lower():
            raise
        log.warning("could not join any of %d initial peer(s) (%s): starting a new swarm; later peers will find "
                    "this one", len(live), str(e).splitlines()[0][:200])
        return make_dht([])
