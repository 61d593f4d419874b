"""SwarmCoverage's claim logic on an in-memory board with the DHT's rule (per block, the latest expiration wins);
the real DHT is in tests/integration/test_coverage_swarm.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from hivedata.train.claims import CLAIMED, COMPLETE, DONE, FREE, OPEN, SwarmCoverage

TTL, SETTLE = 0.6, 0.02


class MemoryBoard:
    """A ClaimBoard in a dict; `dead` peers' writes are dropped (a killed peer writes nothing)."""

    def __init__(self) -> None:
        self.entries: dict[int, dict[int, tuple[str, str, float]]] = {}
        self.epoch_states: dict[int, str] = {}
        self.dead: set[str] = set()
        self.on_put: Callable[[tuple], None] | None = None
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.time()

    def blocks(self, epoch):
        with self.lock:
            return {b: (p, s) for b, (p, s, x) in self.entries.get(epoch, {}).items() if x >= self.now()}

    def put_many(self, entries):
        for e, b, peer, state, exp in entries:
            if peer in self.dead:
                continue
            with self.lock:
                old = self.entries.setdefault(e, {}).get(b)
                if old is None or old[2] < self.now() or exp > old[2]:
                    self.entries[e][b] = (peer, state, exp)
            if self.on_put is not None:
                self.on_put((e, b, peer, state, exp))

    def epochs(self):
        return dict(self.epoch_states)

    def put_epoch(self, epoch, state):
        self.epoch_states[epoch] = state


def coverage(board, peer, n_blocks=6, **kw) -> SwarmCoverage:
    return SwarmCoverage(board, n_blocks, peer, claim_ttl=TTL, settle_s=SETTLE, **kw)


def test_claims_are_exclusive_renewed_while_held_and_done_when_finished():
    board = MemoryBoard()
    a, b = coverage(board, "A", n_blocks=20), coverage(board, "B", n_blocks=20)
    try:
        got_a = {a.next_block() for _ in range(3)}
        got_b = {b.next_block() for _ in range(3)}
        assert not got_a & got_b
        time.sleep(2 * TTL)  # longer than a claim lives: renewals keep them
        live = board.blocks(0)
        assert all(live[blk] == ("A", CLAIMED) for _, blk in got_a)
        assert all(live[blk] == ("B", CLAIMED) for _, blk in got_b)
        for e, blk in got_a:
            a.finished(e, blk)
        deadline = time.monotonic() + 5
        while a.stats["done"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(board.blocks(0)[blk] == ("A", DONE) for _, blk in got_a)
        assert a.stats["lost"] == b.stats["lost"] == 0
    finally:
        a.close()
        b.close()


def test_a_killed_peers_blocks_are_reclaimed_after_the_ttl_before_any_newer_block():
    board = MemoryBoard()
    k = coverage(board, "K", ahead=4)
    a = coverage(board, "A", ahead=1)
    try:
        held = {k.next_block()}
        deadline = time.monotonic() + 5
        while len(k._held) < 4 and time.monotonic() < deadline:  # K's worker claims a round of 4
            time.sleep(0.01)
        held |= set(k._held)
        assert len(held) == 4 and all(e == 0 for e, _ in held)
        board.dead.add("K")  # K is killed: no renewal, no release
        t_kill = time.time()
        claimed: list[tuple[tuple[int, int], float]] = []
        while a.epoch == 0 and time.time() - t_kill < 10 * TTL:
            blk = a.next_block()
            claimed.append((blk, time.time()))
            a.finished(*blk)
        assert a.epoch >= 1  # epoch 0 completed: every block done (A alone read later epochs meanwhile)
        firsts = [blk for blk, _ in claimed]
        assert set(firsts[:2]) == {(0, b) for b in range(6)} - held  # the free ones of epoch 0 first
        retaken = {blk: t for blk, t in claimed if blk in held}
        assert set(retaken) == held
        assert all(TTL * 0.6 <= t - t_kill <= TTL + 2.0 for t in retaken.values())  # after the TTL, not before
        assert a.stats["older_epoch_claims"] >= 1  # some came after epoch 1 was opened, and still went first
        first_retaken = min(firsts.index(blk) for blk in held)
        assert all(e == 0 for e, _ in firsts[first_retaken:first_retaken + 4])
        assert board.epoch_states.get(0) == COMPLETE and all(s == DONE for _, s in board.blocks(0).values())
    finally:
        a.close()
        k.close()


def test_a_race_lost_at_the_read_back_is_not_read():
    board = MemoryBoard()
    raced: list[int] = []

    def rival(entry):  # another peer stores a later claim on A's first pick, just after A's store
        e, b, peer, state, exp = entry
        if peer == "A" and state == CLAIMED and not raced:
            raced.append(b)
            board.put_many([(e, b, "R", CLAIMED, exp + 0.01)])

    board.on_put = rival
    a = coverage(board, "A", ahead=1)
    try:
        got = a.next_block()
        assert raced and got[1] != raced[0]
        assert a.stats["races_lost"] == 1 and board.blocks(0)[raced[0]] == ("R", CLAIMED)
    finally:
        a.close()


def test_a_peer_that_leaves_gives_its_claims_back_at_once():
    board = MemoryBoard()
    a = coverage(board, "A", n_blocks=4, ahead=4)
    a.next_block()
    deadline = time.monotonic() + 5
    while len(a._held) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    a.close()
    assert {s for _, s in board.blocks(0).values()} == {FREE} and a.stats["released"] == 4
    b = coverage(board, "B", n_blocks=4, ahead=4)
    try:
        t0 = time.monotonic()
        got = {b.next_block() for _ in range(4)}
        assert got == {(0, i) for i in range(4)} and time.monotonic() - t0 < TTL  # no wait for an expiry
    finally:
        b.close()


def test_a_joiner_starts_at_the_swarms_epoch_and_a_resumed_peer_restores_done_marks():
    board = MemoryBoard()
    board.epoch_states = {0: COMPLETE, 1: COMPLETE, 2: OPEN}
    j = coverage(board, "J")
    try:
        assert j.next_block()[0] == 2 and j.epoch == 2
    finally:
        j.close()
    fresh = MemoryBoard()  # a swarm that restarted whole: the DHT forgot everything
    r = coverage(fresh, "R", n_blocks=4, ahead=1)
    try:
        r.load_state_dict({"epoch": 5, "done": {5: [0, 2], 4: [1]}})
        got = {r.next_block() for _ in range(2)}
        assert got == {(5, 1), (5, 3)}  # only what the checkpoint did not record done
        assert fresh.blocks(5)[0] == ("R", DONE) and 4 not in fresh.entries
        assert r.state_dict() == {"epoch": 5, "done": {5: [0, 2]}}
    finally:
        r.close()


def test_bad_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="claim_ttl"):
        SwarmCoverage(MemoryBoard(), 4, "A", claim_ttl=0.1, settle_s=0.5)
