"""The disk cache's in-memory index: 64-bit key hash -> (run file, record offset), about 16 bytes an entry.

Entries of files loaded long ago sit in two sorted int64 arrays (hashes, locations); entries added since,
in a dict, folded into the arrays once it holds a quarter as many (plus 64 Ki), so building the index of
N entries costs O(N log N) and a lookup is one dict probe and one binary search. A location is
file number << 40 | record offset. When one key is in several runs (it was written again), the run whose
name sorts last wins: names start with the time they were written. Not thread safe: DiskCache locks.
"""

from __future__ import annotations

import numpy as np

from hivedata.loader.run_format import RunTable

_OFF_BITS = 40
_OFF_MASK = (1 << _OFF_BITS) - 1
_MERGE_MIN = 1 << 16


class RunIndex:
    """Which run file and offset holds each key hash; files can be dropped (evicted) as a whole."""

    def __init__(self) -> None:
        self.names: list[str] = []  # by file number
        self.data_end: list[int] = []  # where each file's records end
        self.alive = bytearray()
        self.by_name: dict[str, int] = {}
        self._hashes = np.zeros(0, np.int64)  # sorted
        self._locs = np.zeros(0, np.int64)  # -1: forgotten
        self._recent: dict[int, int] = {}

    def __len__(self) -> int:
        """Entries held (including those of dropped files not yet folded away)."""
        return len(self._hashes) + len(self._recent)

    def add(self, name: str, table: RunTable) -> int:
        """Adds the entries of run file NAME (a no-op when known); its file number."""
        if (fid := self.by_name.get(name)) is not None:
            return fid
        fid = len(self.names)
        self.names.append(name)
        self.data_end.append(table.data_end)
        self.alive.append(1)
        self.by_name[name] = fid
        hashes, locs = table.hashes, (fid << _OFF_BITS) | table.offsets
        older = np.ones(len(hashes), dtype=bool)  # rows whose key an older run holds in the arrays (or none does)
        if len(self._hashes) and len(hashes):
            i = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
            for j in np.flatnonzero(self._hashes[i] == hashes).tolist():
                older[j] = self._loses_to(int(self._locs[i[j]]), name)
        recent = self._recent
        for h, loc, ok in zip(hashes.tolist(), locs.tolist(), older.tolist(), strict=True):
            prev = recent.get(h)
            if ok and (prev is None or self._loses_to(prev, name)):
                recent[h] = loc
        if len(recent) > _MERGE_MIN + len(self._hashes) // 4:
            self._fold()
        return fid

    def add_many(self, runs: list[tuple[str, RunTable]]) -> None:
        """Adds the entries of several run files at once (sorted in bulk: what loading a whole directory does)."""
        runs = [(name, t) for name, t in runs if name not in self.by_name]
        if sum(len(t.hashes) for _, t in runs) < _MERGE_MIN:
            for name, table in runs:
                self.add(name, table)
            return
        self._fold()
        hashes, locs = [self._hashes], [self._locs]
        for name, table in runs:
            fid = len(self.names)
            self.names.append(name)
            self.data_end.append(table.data_end)
            self.alive.append(1)
            self.by_name[name] = fid
            hashes.append(table.hashes)
            locs.append((fid << _OFF_BITS) | table.offsets)
        h, loc = np.concatenate(hashes), np.concatenate(locs)
        keep = loc >= 0
        keep[keep] = np.frombuffer(bytes(self.alive), np.uint8)[loc[keep] >> _OFF_BITS] == 1
        h, loc = h[keep], loc[keep]
        rank = np.empty(len(self.names), np.int64)
        rank[sorted(range(len(self.names)), key=self.names.__getitem__)] = np.arange(len(self.names))
        order = np.lexsort((rank[loc >> _OFF_BITS], h))  # by hash, then by run name; stable within a run
        h, loc = h[order], loc[order]
        last = np.ones(len(h), dtype=bool)
        last[:-1] = h[1:] != h[:-1]
        self._hashes, self._locs = h[last], loc[last]

    def _loses_to(self, loc: int, name: str) -> bool:
        """True when the entry at LOC is older than one in run NAME (or gone)."""
        return loc < 0 or not self.alive[loc >> _OFF_BITS] or self.names[loc >> _OFF_BITS] <= name

    def lookup(self, h: int) -> tuple[int, int] | None:
        """(file number, record offset) of key hash H, or None."""
        loc = self._recent.get(h)
        if loc is None:
            i = int(self._hashes.searchsorted(h))
            if i == len(self._hashes) or self._hashes[i] != h:
                return None
            loc = int(self._locs[i])
        if loc < 0 or not self.alive[loc >> _OFF_BITS]:
            return None
        return loc >> _OFF_BITS, loc & _OFF_MASK

    def forget(self, h: int, fid: int, offset: int) -> None:
        """Drops key hash H if it still points at (FID, OFFSET) (a damaged entry; a newer one is kept)."""
        loc = (fid << _OFF_BITS) | offset
        if self._recent.get(h) == loc:
            del self._recent[h]
            return
        i = int(self._hashes.searchsorted(h))
        if i < len(self._hashes) and self._hashes[i] == h and self._locs[i] == loc:
            self._locs[i] = -1

    def drop(self, fid: int) -> None:
        """Forgets every entry of file FID (evicted or vanished)."""
        self.alive[fid] = 0

    def drop_all(self) -> None:
        """Forgets everything."""
        for fid in range(len(self.alive)):
            self.alive[fid] = 0
        self._hashes, self._locs, self._recent = np.zeros(0, np.int64), np.zeros(0, np.int64), {}

    def alive_names(self) -> dict[str, int]:
        """Name -> file number of the files not dropped."""
        return {n: f for n, f in self.by_name.items() if self.alive[f]}

    def _fold(self) -> None:
        """Moves the dict's entries into the sorted arrays, leaving out forgotten and dropped ones."""
        rh = np.fromiter(self._recent.keys(), np.int64, len(self._recent))
        rl = np.fromiter(self._recent.values(), np.int64, len(self._recent))
        h, loc = np.concatenate([self._hashes, rh]), np.concatenate([self._locs, rl])
        order = np.argsort(h, kind="stable")  # a key in both: the dict's entry (newer) comes last
        h, loc = h[order], loc[order]
        last = np.ones(len(h), dtype=bool)
        last[:-1] = h[1:] != h[:-1]
        keep = last & (loc >= 0)
        keep[keep] = np.frombuffer(bytes(self.alive), np.uint8)[loc[keep] >> _OFF_BITS] == 1
        self._hashes, self._locs, self._recent = h[keep], loc[keep], {}
