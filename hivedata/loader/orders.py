"""Sample orders: each is one seeded permutation per epoch plus a describe() string that state_dict keeps.

An order is any object with `mode`, `order(epoch) -> np.ndarray` and `describe() -> str`; the built-in ones
are index order, a global permutation, and block shuffle (runs of neighbours permuted, shuffled within a
window), chosen by name with make_order().
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import numpy as np

SHUFFLES = ("none", "global", "block")


class SampleOrder(Protocol):
    """The order samples 0..n-1 are read in, per epoch."""

    mode: str

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order: a permutation of 0..n-1."""
        ...

    def describe(self) -> str:
        """The order's parameters as one string (a resume refuses a different one)."""
        ...


def shuffle_mode(shuffle: bool | str) -> str:
    """True -> 'global', False -> 'none'; a name is checked and returned."""
    if shuffle is True:
        return "global"
    if shuffle is False:
        return "none"
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be a bool or one of {SHUFFLES}, not {shuffle!r}")
    return shuffle


def run_starts(n: int, block_size: int, group_starts: np.ndarray | None = None) -> np.ndarray:
    """Where each run of at most block_size consecutive samples starts; runs never cross a group (shard)."""
    groups = np.asarray(group_starts if group_starts is not None and len(group_starts) else [0], dtype=np.int64)
    if groups[0] != 0 or np.any(np.diff(groups) <= 0) or groups[-1] >= n:
        raise ValueError("group_starts must rise strictly from 0 and stay below the dataset size")
    ends = np.append(groups[1:], n)
    return np.concatenate([np.arange(a, b, block_size, dtype=np.int64) for a, b in zip(groups, ends, strict=True)])


class IndexOrder:
    """Samples in index order, every epoch."""

    mode = "none"

    def __init__(self, n: int) -> None:
        self.n = n

    def order(self, epoch: int) -> np.ndarray:
        """0..n-1."""
        return np.arange(self.n, dtype=np.int64)

    def describe(self) -> str:
        """'none'"""
        return self.mode


class GlobalOrder:
    """A full permutation drawn from (seed, epoch)."""

    mode = "global"

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def order(self, epoch: int) -> np.ndarray:
        """A seeded permutation of 0..n-1."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.n).astype(np.int64)

    def describe(self) -> str:
        """'global'"""
        return self.mode


class BlockOrder:
    """Runs of block_size consecutive samples (never crossing a group) permuted, then samples shuffled within
    windows of `window` positions: a batch holds a few runs, so its reads coalesce."""

    mode = "block"

    def __init__(self, n: int, seed: int, block_size: int, window: int,
                 group_starts: np.ndarray | None = None) -> None:
        self.n, self.seed, self.block_size, self.window = n, seed, block_size, window
        self.runs = run_starts(n, block_size, group_starts)

    def order(self, epoch: int) -> np.ndarray:
        """The permuted runs, shuffled within each window."""
        rng = np.random.default_rng([self.seed, epoch])
        runs = self.runs
        lengths = np.diff(np.append(runs, self.n))
        picked = rng.permutation(len(runs))
        # positions of every sample of the permuted runs, without a Python loop over runs
        first = np.repeat(runs[picked], lengths[picked])
        within = np.arange(self.n, dtype=np.int64) - np.repeat(np.cumsum(lengths[picked]) - lengths[picked],
                                                               lengths[picked])
        order = first + within
        for a in range(0, self.n, self.window):  # shuffle within each window (n / window steps)
            rng.shuffle(order[a:a + self.window])
        return order

    def describe(self) -> str:
        """'block:<size>:<window>:<hash of the runs>' (shards regrouped: another order)."""
        runs = hashlib.sha256(self.runs.tobytes()).hexdigest()[:12]
        return f"block:{self.block_size}:{self.window}:{runs}"


def make_order(shuffle: bool | str, n: int, *, seed: int, block_size: int, window: int,
               group_starts: np.ndarray | None = None) -> SampleOrder:
    """The order a Loader's shuffle setting names."""
    mode = shuffle_mode(shuffle)
    if mode == "global":
        return GlobalOrder(n, seed)
    if mode == "block":
        return BlockOrder(n, seed, block_size, window, group_starts)
    return IndexOrder(n)
