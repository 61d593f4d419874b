"""Coordinated coverage through the hivemind DHT: the peers of a run claim blocks of a data epoch, renew their
claims while they read them and mark them done, so one data epoch reads the dataset once across the swarm.

DHT layout (hivemind's store with subkeys; for one key and subkey the entry with the latest expiration wins):

  ``{run_id}_cov_{tag}_{epoch}``  subkey block -> [peer_id, "claimed" | "done" | "free"]
      claimed: expires ``claim_ttl`` after its last renewal (a peer renews every ttl/3 while it reads the block);
      done: kept a week; free: a claim given back by a peer that left (it outlives the claim by a millisecond).
  ``{run_id}_cov_{tag}_epochs``   subkey epoch -> "open" | "complete"

``tag`` names the block layout (dataset size, block size, seed): peers that split the data differently never read
each other's claims. A claim is stored, then read back after ``settle_s``: when two peers raced for a block, both
read the same winner (the later expiration), and the loser picks another. A killed peer stops renewing; its blocks
are free again ``claim_ttl`` later and the others read them first (older epochs before newer ones). The swarm's
data epoch is the lowest epoch with a block not done.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import numpy as np

from hivedata.loader.coverage import BlockFeed, EpochBlocks, choose_block

log = logging.getLogger(__name__)

CLAIMED, DONE, FREE = "claimed", "done", "free"
OPEN, COMPLETE = "open", "complete"
DONE_TTL_S = 7 * 24 * 3600.0  # how long done marks and epoch states stay in the DHT
Entry = tuple[int, int, str, str, float]  # (epoch, block, peer_id, state, expiration)


class ClaimBoard(Protocol):
    """Where claims live (the DHT; a test may use memory): per epoch, block -> (peer, state) until it expires."""

    def now(self) -> float:
        """The board's clock (DHT time)."""
        ...

    def blocks(self, epoch: int) -> dict[int, tuple[str, str]]:
        """Live entries of an epoch: block -> (peer_id, state)."""
        ...

    def put_many(self, entries: list[Entry]) -> None:
        """Stores entries; one is ignored where the board holds a later expiration for its block."""
        ...

    def epochs(self) -> dict[int, str]:
        """epoch -> "open" | "complete", for the epochs the swarm started."""
        ...

    def put_epoch(self, epoch: int, state: str) -> None:
        """Records an epoch's state (for DONE_TTL_S)."""
        ...


async def _store_many(_dht: Any, node: Any, keys: list, values: list, expirations: list, subkeys: list) -> None:
    await node.store_many(keys, values, expirations, subkeys=subkeys)


class DHTClaimBoard:
    """A ClaimBoard in a hivemind DHT (keys as in the module's docstring); every call waits at most timeout_s."""

    def __init__(self, dht: Any, run_id: str, tag: str, *, timeout_s: float = 30.0) -> None:
        self.dht, self.prefix, self.timeout_s = dht, f"{run_id}_cov_{tag}", timeout_s

    def now(self) -> float:
        """hivemind's DHT time."""
        from hivemind.utils import get_dht_time

        return get_dht_time()

    def _get(self, key: str) -> dict[Any, Any]:
        found = self.dht.get(key, latest=True, return_future=True).result(timeout=self.timeout_s)
        if found is None or not isinstance(found.value, dict):
            return {}
        now = self.now()
        return {sub: item.value for sub, item in found.value.items() if item.expiration_time >= now}

    def blocks(self, epoch: int) -> dict[int, tuple[str, str]]:
        """Live entries of an epoch (malformed ones skipped)."""
        out = {}
        for sub, value in self._get(f"{self.prefix}_{epoch}").items():
            if isinstance(sub, int) and isinstance(value, (list, tuple)) and len(value) == 2:
                out[sub] = (str(value[0]), str(value[1]))
        return out

    def put_many(self, entries: list[Entry]) -> None:
        """One store_many for all the entries."""
        if not entries:
            return
        keys = [f"{self.prefix}_{e}" for e, *_ in entries]
        values = [[peer, state] for _, _, peer, state, _ in entries]
        coro = partial(_store_many, keys=keys, values=values, expirations=[x for *_, x in entries],
                       subkeys=[b for _, b, *_ in entries])
        self.dht.run_coroutine(coro, return_future=True).result(timeout=self.timeout_s)

    def epochs(self) -> dict[int, str]:
        """The swarm's epochs and their states."""
        found = self._get(f"{self.prefix}_epochs")
        return {e: s for e, s in found.items() if isinstance(e, int) and isinstance(s, str)}

    def put_epoch(self, epoch: int, state: str) -> None:
        """One store."""
        self.dht.store(f"{self.prefix}_epochs", state, self.now() + DONE_TTL_S, subkey=epoch,
                       return_future=True).result(timeout=self.timeout_s)


class SwarmCoverage:
    """This peer's claims on a board: a BlockSource for hivedata.loader.coverage.BlockFeed.

    A worker thread keeps at least `ahead` confirmed claims ready (claimed `ahead` at a time, one read-back each),
    renews every held claim each claim_ttl/3, marks finished blocks done and, on close(), gives back the claims not
    finished. Blocks are chosen from the lowest epoch that has a free one (a killed peer's expired claims before any
    new block), then the next epoch is opened.
    `listener(event, epoch, block)` hears "claimed", "lost" (a claim another peer took over), "done", "released".
    """

    def __init__(self, board: ClaimBoard, n_blocks: int, peer_id: str, *, claim_ttl: float = 60.0,
                 settle_s: float = 0.5, ahead: int = 4, first_epoch: int = 0, wait_s: float = 300.0,
                 listener: Callable[[str, int, int], None] | None = None) -> None:
        if n_blocks <= 0 or claim_ttl <= 0 or settle_s < 0 or ahead < 1:
            raise ValueError(f"SwarmCoverage: need n_blocks > 0, claim_ttl > 0, settle_s >= 0, ahead >= 1; got "
                             f"{n_blocks}, {claim_ttl}, {settle_s}, {ahead}")
        if settle_s * 3 >= claim_ttl:
            raise ValueError(f"SwarmCoverage: claim_ttl ({claim_ttl} s) must be well above settle_s ({settle_s} s)")
        self.board, self.n_blocks, self.peer_id = board, n_blocks, peer_id
        self.claim_ttl, self.settle_s, self.ahead, self.wait_s = claim_ttl, settle_s, ahead, wait_s
        self.listener = listener
        self.epoch = int(first_epoch)  # the swarm's data epoch, as this peer last saw it
        self._cur = self.epoch  # the highest epoch this peer claims in
        self._cursor: dict[int, int] = {}
        self._held: dict[tuple[int, int], float] = {}  # claimed, not finished -> expiration of our last store
        self._ready: queue.Queue[tuple[int, int]] = queue.Queue()
        self._finished: queue.Queue[tuple[int, int]] = queue.Queue()
        self._republish: list[Entry] = []
        self._done_seen: dict[int, set[int]] = {}
        self._mine: dict[int, int] = {}  # blocks this peer read, per epoch (for the log line)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._rng = np.random.default_rng()  # each peer its own start: peers spread out
        self._renewed_at = 0.0
        self.stats = {"claims": 0, "races_lost": 0, "lost": 0, "done": 0, "released": 0, "older_epoch_claims": 0}

    # -- BlockSource ----------------------------------------------------------------------------------------
    def next_block(self) -> tuple[int, int] | None:
        """The next claimed (epoch, block); waits for the worker (at most wait_s, then raises)."""
        self._start()
        self._wake.set()
        deadline = time.monotonic() + self.wait_s
        while True:
            if self._error is not None:
                raise RuntimeError(f"coverage claims failed: {self._error}") from self._error
            try:
                return self._ready.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no block of the data could be claimed in {self.wait_s:g} s "
                                       f"(is the DHT reachable?)") from None

    def finished(self, epoch: int, block: int) -> None:
        """Marks the block done (in the worker, so the training thread never waits on the DHT)."""
        self._finished.put((epoch, block))
        self._wake.set()

    def state_dict(self) -> dict[str, Any]:
        """The swarm's data epoch and the blocks this peer saw done in it and later (a checkpoint's record)."""
        with self._lock:
            done = {e: sorted(b) for e, b in self._done_seen.items() if e >= self.epoch}
        return {"epoch": self.epoch, "done": done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed peer starts at the recorded data epoch and tells the swarm the blocks recorded done (a swarm
        that restarted whole has lost them from the DHT)."""
        first = int(state["epoch"])
        with self._lock:
            self.epoch = max(self.epoch, first)
            self._cur = max(self._cur, self.epoch)
            exp = self.board.now() + DONE_TTL_S
            self._republish = [(int(e), int(b), self.peer_id, DONE, exp) for e, blocks in state.get("done", {}).items()
                               if int(e) >= self.epoch for b in blocks]

    def close(self) -> None:
        """Stops the worker: done marks are flushed and the claims not finished are given back."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    # -- the worker -------------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="hivedata-coverage", daemon=True)
            self._thread.start()

    def _emit(self, event: str, epoch: int, block: int) -> None:
        if self.listener is not None:
            self.listener(event, epoch, block)

    def _run(self) -> None:
        failing_since: float | None = None
        patience = max(60.0, 2 * self.claim_ttl)  # DHT trouble this long in a row stops the feed with the error
        self._join()
        while not self._stop.is_set():
            self._wake.clear()
            try:
                busy = self._step()
                failing_since = None
                if busy:
                    continue
            except Exception as e:  # a DHT hiccup: retried
                now = time.monotonic()
                failing_since = failing_since or now
                log.warning("coverage claims: %s (failing for %.0f s; retrying)", e, now - failing_since)
                if now - failing_since > patience:
                    self._error = e
                    return
            self._wake.wait(timeout=min(0.5, self.claim_ttl / 6))
        try:
            self._flush_done()
            self._release()
        except Exception as e:  # leaving: the claims expire by themselves
            log.warning("coverage claims: could not give back claims on leaving (they expire in %g s): %s",
                        self.claim_ttl, e)

    def _join(self) -> None:
        """Reads where the swarm is: the lowest epoch not complete, the highest one opened."""
        try:
            states = self.board.epochs()
        except Exception as e:
            log.warning("coverage claims: could not read the swarm's epochs (%s); starting at %d", e, self.epoch)
            return
        with self._lock:
            while states.get(self.epoch) == COMPLETE:
                self.epoch += 1
            self._cur = max([self.epoch, self._cur] + [e for e in states if e >= self.epoch])

    def _step(self) -> bool:
        """One round: done marks, renewals when due, and a round of claims when fewer than `ahead` are ready.
        True when it claimed (the next round follows at once)."""
        if self._republish:
            self.board.put_many(self._republish)
            self._republish = []
        self._flush_done()
        if self.board.now() - self._renewed_at >= self.claim_ttl / 3:
            self._renew()
        if self._ready.qsize() >= self.ahead or self._stop.is_set():
            return False
        for claimed in self._claim_round(self.ahead):
            self._ready.put(claimed)
            self._emit("claimed", *claimed)
        return True

    def _flush_done(self) -> None:
        entries = []
        exp = self.board.now() + DONE_TTL_S
        while True:
            try:
                e, b = self._finished.get_nowait()
            except queue.Empty:
                break
            self._held.pop((e, b), None)
            entries.append((e, b, self.peer_id, DONE, exp))
        self.board.put_many(entries)
        for e, b, *_ in entries:
            self.stats["done"] += 1
            self._mine[e] = self._mine.get(e, 0) + 1
            with self._lock:
                self._done_seen.setdefault(e, set()).add(b)
            self._emit("done", e, b)

    def _renew(self) -> None:
        """Renews the claims still ours; a claim another peer took over (ours had expired) is counted lost."""
        self._renewed_at = self.board.now()
        exp = self._renewed_at + self.claim_ttl
        renew = []
        for epoch in sorted({e for e, _ in self._held}):
            snap = self.board.blocks(epoch)
            for (e, b) in [k for k in self._held if k[0] == epoch]:
                if snap.get(b, (self.peer_id, CLAIMED)) == (self.peer_id, CLAIMED):
                    renew.append((e, b, self.peer_id, CLAIMED, exp))
                    self._held[(e, b)] = exp
                elif snap.get(b, ("", ""))[1] != DONE:
                    self.stats["lost"] += 1
                    log.warning("coverage claims: block %d of data epoch %d was taken over by peer %s (this peer "
                                "did not renew its claim within %g s); both read it", b, e, snap[b][0], self.claim_ttl)
                    self._emit("lost", e, b)
        self.board.put_many(renew)

    def _claim_round(self, want: int) -> list[tuple[int, int]]:
        """Claims up to `want` blocks in one epoch: the lowest with a free block first; opens the next epoch when
        none is free."""
        while not self._stop.is_set():
            for epoch in range(self.epoch, self._cur + 1):
                got = self._claim_in(epoch, want)
                if got:
                    return got
            with self._lock:
                self._cur += 1
            self.board.put_epoch(self._cur, OPEN)
            log.debug("coverage claims: every block up to data epoch %d is claimed; opening %d", self._cur - 1,
                      self._cur)
        return []

    def _claim_in(self, epoch: int, want: int) -> list[tuple[int, int]]:
        """Up to `want` confirmed claims in one epoch (stored together, read back once after settle_s); none when
        it has no free block (an epoch all done completes)."""
        for _ in range(8):  # races lost in a row before trying the next epoch
            snap = self.board.blocks(epoch)
            done = {b for b, (_, s) in snap.items() if s == DONE}
            with self._lock:
                self._done_seen.setdefault(epoch, set()).update(done)
            if len(done) >= self.n_blocks:
                if epoch == self.epoch:
                    self.board.put_epoch(epoch, COMPLETE)
                    with self._lock:
                        self.epoch += 1
                        self._done_seen = {e: b for e, b in self._done_seen.items() if e >= self.epoch}
                    log.info("data epoch %d is complete: the swarm read each of its %d blocks (this peer %d)", epoch,
                             self.n_blocks, self._mine.pop(epoch, 0))
                return []
            taken = np.zeros(self.n_blocks, dtype=bool)
            for b, (_, s) in snap.items():
                if s != FREE and 0 <= b < self.n_blocks:
                    taken[b] = True
            for e, b in self._held:
                if e == epoch:
                    taken[b] = True
            picked: list[int] = []
            cursor = self._cursor.get(epoch)
            while len(picked) < want and (block := choose_block(taken, cursor, self._rng)) is not None:
                taken[block] = True
                picked.append(block)
                cursor = block
            if not picked:
                return []
            exp = self.board.now() + self.claim_ttl
            self.board.put_many([(epoch, b, self.peer_id, CLAIMED, exp) for b in picked])
            time.sleep(self.settle_s)
            now = self.board.blocks(epoch)
            won = [b for b in picked if now.get(b) == (self.peer_id, CLAIMED)]
            self.stats["races_lost"] += len(picked) - len(won)
            self.stats["claims"] += len(won)
            if epoch < self._cur:
                self.stats["older_epoch_claims"] += len(won)
            for b in won:
                self._held[(epoch, b)] = exp
            if won:
                self._cursor[epoch] = won[-1]
                return [(epoch, b) for b in won]
            self._cursor.pop(epoch, None)  # another peer is here: jump elsewhere
        return []

    def _release(self) -> None:
        """Gives back the claims not finished (a 'free' entry just outliving each claim)."""
        entries = [(e, b, self.peer_id, FREE, exp + 1e-3) for (e, b), exp in self._held.items()]
        self.board.put_many(entries)
        for e, b, *_ in entries:
            self.stats["released"] += 1
            self._emit("released", e, b)
        self._held.clear()


def coverage_feed(dht: Any, run_id: str, peer_id: str, *, n: int, batch_size: int, block_size: int, seed: int,
                  group_starts: np.ndarray | None = None, claim_ttl: float = 60.0, settle_s: float = 0.5,
                  ahead: int = 4, listener: Callable[[str, int, int], None] | None = None) -> BlockFeed:
    """A BlockFeed over the blocks of n samples (shard runs when group_starts is given) that this peer claims in
    the run's DHT: what a Loader's `feed=` takes for coordinated coverage."""
    blocks = EpochBlocks(n, block_size, seed, group_starts)
    board = DHTClaimBoard(dht, run_id, blocks.tag())
    claims = SwarmCoverage(board, blocks.n_blocks, peer_id, claim_ttl=claim_ttl, settle_s=settle_s, ahead=ahead,
                           listener=listener)
    return BlockFeed(blocks, batch_size, claims)
