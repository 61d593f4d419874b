"""A peer that steps alone while others are registered is told, once, what to check (ports, NAT, client mode)."""

from __future__ import annotations

import logging

from hivedata.train.join import AloneWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_warns_once_after_enough_epochs_and_time_alone_with_others_registered(caplog):
    clock = Clock()
    watch = AloneWatch(lambda: ["/ip4/10.0.0.2/tcp/31337/p2p/Qm"], epochs=3, min_s=60, clock=clock)
    caplog.set_level(logging.WARNING, "hivedata.train.join")
    fired = []
    for epoch in range(1, 10):
        clock.now += 30
        fired.append(watch.epoch_ended(1, epoch))
    assert fired.index(True) == 2 and fired.count(True) == 1  # the 3rd epoch alone is 60 s alone: once only
    (record,) = caplog.records
    assert "--announce_maddr" in record.message and "--client_mode" in record.message
    assert "1 other peer address(es) are registered" in record.message


def test_no_warning_when_alone_with_nobody_registered_or_when_a_round_had_peers():
    clock = Clock()
    nobody = AloneWatch(lambda: [], epochs=1, min_s=0, clock=clock)
    assert not any(nobody.epoch_ended(1, e) for e in range(5))
    no_registry = AloneWatch(None, epochs=1, min_s=0, clock=clock)
    assert not any(no_registry.epoch_ended(1, e) for e in range(5))
    watch = AloneWatch(lambda: ["/ip4/10.0.0.2/tcp/1"], epochs=3, min_s=0, clock=clock)
    sizes = [1, 1, 2, 1, 1, 2, 1, 1]  # never 3 epochs alone in a row
    assert not any(watch.epoch_ended(n, e) for e, n in enumerate(sizes))


def test_a_peer_that_just_registered_gets_time_to_start():
    clock = Clock()
    watch = AloneWatch(lambda: ["/ip4/10.0.0.2/tcp/1"], epochs=2, min_s=120, clock=clock)
    results = []
    for epoch in range(6):
        clock.now += 10
        results.append(watch.epoch_ended(1, epoch))
    assert not any(results)  # 6 epochs, but only 50 s alone


def test_an_unreadable_registry_never_stops_training():
    def broken() -> list[str]:
        raise OSError("registry unreachable")

    watch = AloneWatch(broken, epochs=1, min_s=0, clock=Clock())
    assert not watch.epoch_ended(1, 1)
