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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
REACHABILITY_HINT = ("check that the other peers' --host_port is open to this machine (firewall, cloud security "
                     "group); a peer behind NAT must announce a reachable address with --announce_maddr "
                     "/ip4/<public ip>/tcp/<port> (and forward that port); a machine that can only connect out "
                     "runs with --client_mode")


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
        log.warning("none of the %d known peer address(es) answered (a crashed or restarted swarm, or they are not "
                    "reachable from here): starting a new swarm; later peers will find this one. If the other peers "
                    "are running: %s", len(peers), REACHABILITY_HINT)
        return make_dht([])
    if not live:
        return make_dht([])
    try:
        return make_dht(live)
    except Exception as e:  # hivemind's P2PDaemonError: the addresses answered but no peer could be joined
        if client_mode or "bootstrap" not in str(e).lower():
            raise
        log.warning("could not join any of %d initial peer(s) (%s): starting a new swarm; later peers will find "
                    "this one. If the other peers are running: %s", len(live), str(e).splitlines()[0][:200],
                    REACHABILITY_HINT)
        return make_dht([])


class AloneWatch:
    """Warns once when this peer keeps stepping alone although the registry lists other live peers.

    Registered peers are running. If none averages with this one for `epochs` global epochs in a row and at
    least `min_s` seconds (a peer that just registered may still be building its index), the peers probably
    cannot reach each other (ports, NAT): say so, with what to check, instead of training alone in silence.
    """

    def __init__(self, live_peers: Callable[[], list[str]] | None, *, epochs: int = 3, min_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.live_peers, self.epochs, self.min_s, self.clock = live_peers, epochs, min_s, clock
        self.alone_for, self.alone_since = 0, None
        self.warned = False

    def epoch_ended(self, group_size: int, epoch: int, training_peers: int = 1) -> bool:
        """Records one global epoch's group size (and the peers hivemind sees training); True when it warned."""
        if group_size > 1:
            self.alone_for, self.alone_since = 0, None
            return False
        self.alone_for += 1
        if self.alone_since is None:
            self.alone_since = self.clock()
        if (self.warned or self.live_peers is None or self.alone_for < self.epochs
                or self.clock() - self.alone_since < self.min_s):
            return False
        try:
            others = self.live_peers()
        except Exception as e:  # the registry is advisory here: never stop training over it
            log.debug("could not read the peer registry: %r", e)
            return False
        if not others:
            return False
        self.warned = True
        seen = (f"hivemind sees {training_peers} peers training, but no round included this one" if training_peers > 1
                else "none of them has been seen training through the DHT")
        log.warning("global epoch %d: %d other peer address(es) are registered for this run, but this peer has "
                    "stepped alone for %d global epochs (%.0f s): %s. If they are running, the peers cannot reach "
                    "each other: %s", epoch, len(others), self.alone_for, self.clock() - self.alone_since, seen,
                    REACHABILITY_HINT)
        return True
