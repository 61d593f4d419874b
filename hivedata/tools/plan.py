"""`python -m hivedata plan`: what a swarm of peers will ask of the bucket, per read strategy.

For per-object reads (one GET per image), packed shards with a global shuffle (one ranged GET per sample,
bar the odd neighbours that share a batch) and packed shards with block shuffle (runs of --block_size
neighbours, a batch's samples coalesced into a few ranged GETs), it prints the GETs/s the swarm sends
the bucket, the egress per hour, how long the bucket needs to ramp up to that rate, GET (Class B) operations
and their cost per epoch, and whether each strategy fits; then a one-line verdict.

The GET counts model the Loader (hivedata/loader/orders.py, hivedata/sources/read_plan.py): with block
shuffle an epoch is the runs in a seeded order cut into batches (the shuffle window is a batch, the
Loader's default), and a batch reads each run piece it holds as one coalesced GET; pieces of neighbouring
runs of one shard that land in the same batch share a GET too. Every peer reads the whole dataset per epoch
in its own order (train.py seeds each peer apart). Bucket ramp-up follows the GCS request-rate guidance:
about 5,000 object reads/s per bucket to start, a doubling at most every 20 minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hivedata.sources.read_plan import DEFAULT_MAX_GAP, DEFAULT_MAX_SPAN
from hivedata.sources.tar_layout import BLOCK, padded

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_MEAN_BYTES = 110_000  # ~140 GB of training JPEGs / 1.28 M
DEFAULT_SHARD_BYTES = 256 * 10**6  # `python -m hivedata pack` default
# Tar overhead between one image's bytes and the next one's in a shard `pack` writes: the image's padding
# to 512 bytes (half a block on average), the .cls member (header + one data block), the next .jpg header.
MEMBER_GAP = BLOCK // 2 + 3 * BLOCK
# An assumption, dated: the GCS list price of Class B operations (object GETs) in Standard storage,
# USD 0.0004 per 1,000 = 0.004 per 10,000 (cloud.google.com/storage/pricing, as read 2025-01). Pass
# --price-per-10k-ops for your storage class, region and date.
CLASS_B_USD_PER_10K = 0.004
CLASS_B_PRICE_DATE = "2025-01"
INITIAL_READS_PER_S = 5000  # GCS request-rate guidance: a bucket's initial read capacity
DOUBLING_MINUTES = 20  # ... which may double at most this often


@dataclass(frozen=True)
class Layout:
    """What the plan needs of a dataset: samples, their bytes, and how they lie in shards.

    `shard_counts` are samples per shard (real ones, or as `pack` would write them); `gaps` the bytes between
    one sample's end and the next one's start in the same shard (len n - shards; empty for a guess, then
    `mean_gap` holds the guess).
    """

    n: int
    total_bytes: int
    shard_counts: np.ndarray
    gaps: np.ndarray
    mean_gap: float
    packed: bool  # True: real shards; False: shards as `pack` would write them
    what: str  # where the figures come from, for people

    @property
    def mean_size(self) -> float:
        """Mean bytes of a sample."""
        return self.total_bytes / self.n

    def small_gaps(self, coalesce_gap: int) -> tuple[float, float]:
        """(share of neighbour gaps a ranged read bridges (<= coalesce_gap), mean bytes of those gaps)."""
        if not len(self.gaps):
            return (1.0, self.mean_gap) if self.mean_gap <= coalesce_gap else (0.0, 0.0)
        small = self.gaps[self.gaps <= coalesce_gap]
        return len(small) / len(self.gaps), float(small.mean()) if len(small) else 0.0


def _guessed_counts(n: int, footprint: float, shard_bytes: int) -> np.ndarray:
    """Samples per shard when n samples of `footprint` bytes each are packed into shards of shard_bytes."""
    per = max(1, int(shard_bytes // footprint))
    counts = np.full(n // per, per, dtype=np.int64)
    return np.append(counts, n % per) if n % per else counts


def imagenet_layout(shard_bytes: int = DEFAULT_SHARD_BYTES, n: int = IMAGENET_TRAIN_IMAGES,
                    mean_bytes: int = IMAGENET_MEAN_BYTES) -> Layout:
    """ImageNet-1k training set defaults (1,281,167 images of ~110 KB), packed into shard_bytes shards."""
    counts = _guessed_counts(n, mean_bytes + MEMBER_GAP, shard_bytes)
    return Layout(n, n * mean_bytes, counts, np.zeros(0), float(MEMBER_GAP), False,
                  f"ImageNet defaults: {n:,} images, {mean_bytes / 1e3:.0f} KB mean (no --source given)")


def layout_of(source: object, shard_bytes: int = DEFAULT_SHARD_BYTES) -> Layout:
    """The layout of a SampleSource: its real shards (a shard index), or objects as `pack` would shard them."""
    sizes = np.asarray(source.sizes, dtype=np.int64)  # type: ignore[attr-defined]
    n = len(sizes)
    if n == 0:
        raise ValueError(f"plan: {source.url} holds no samples")  # type: ignore[attr-defined]
    url = source.url  # type: ignore[attr-defined]
    if getattr(source, "coalesces", False) and hasattr(source, "starts") and hasattr(source, "shard"):
        shard = np.asarray(source.shard)
        starts = np.asarray(source.starts, dtype=np.int64)
        same = shard[1:] == shard[:-1]
        gaps = (starts[1:] - (starts[:-1] + sizes[:-1]))[same]
        counts = np.bincount(shard, minlength=int(shard.max()) + 1)
        counts = counts[counts > 0]
        what = f"{url}: {n:,} samples in {len(counts):,} shards, {sizes.mean() / 1e3:.1f} KB mean"
        return Layout(n, int(sizes.sum()), counts, gaps, float(gaps.mean()) if len(gaps) else 0.0, True, what)
    mean_pad = float(np.mean([padded(int(z)) - int(z) for z in sizes[:100_000]]))
    gap = mean_pad + 3 * BLOCK
    counts = _guessed_counts(n, float(sizes.mean()) + gap, shard_bytes)
    what = (f"{url}: {n:,} objects, {sizes.mean() / 1e3:.1f} KB mean (shard figures: as `pack` would write "
            f"{len(counts):,} shards of {shard_bytes / 1e6:,.0f} MB)")
    return Layout(n, int(sizes.sum()), counts, np.zeros(0), gap, False, what)


@dataclass(frozen=True)
class Reads:
    """One peer's reads in one epoch with one strategy."""

    strategy: str
    samples: int  # samples read (the dropped tail excluded)
    gets: float
    bytes: float

    @property
    def samples_per_get(self) -> float:
        """Samples one GET brings, on average."""
        return self.samples / self.gets

    @property
    def bytes_per_sample(self) -> float:
        """Bytes read per sample (tar gaps included)."""
        return self.bytes / self.samples


def epoch_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches of an epoch (the Loader's count for training: the short tail dropped)."""
    return n // batch_size if drop_last else -(-n // batch_size)


def per_object_reads(layout: Layout, batch_size: int, drop_last: bool = True) -> Reads:
    """One whole-object GET per sample."""
    samples = min(layout.n, epoch_batches(layout.n, batch_size, drop_last) * batch_size)
    return Reads("per-object reads", samples, float(samples), samples * layout.mean_size)


def _reach(layout: Layout, coalesce_gap: int) -> int:
    """How many samples apart (1: neighbours) two samples of a shard may be and still share one ranged GET."""
    bridged, gap = layout.small_gaps(coalesce_gap)
    if bridged == 0:
        return 0
    footprint = layout.mean_size + layout.mean_gap  # one skipped sample and the tar bytes around it
    return 1 + max(0, int((coalesce_gap - gap) // footprint))


def global_shuffle_reads(layout: Layout, batch_size: int, coalesce_gap: int = DEFAULT_MAX_GAP,
                         drop_last: bool = True) -> Reads:
    """A ranged GET per sample, bar samples of a shard close enough to share one that land in one batch.

    Two samples k apart in a shard (k <= the reach of coalesce_gap) share a GET when both are in a batch and
    none of the k - 1 between them is: per pair and epoch about batches x (B/n)^2 x (1 - B/n)^(k-1).
    """
    n, batch = layout.n, batch_size
    batches = epoch_batches(n, batch, drop_last)
    samples = min(n, batches * batch)
    bridged, gap = layout.small_gaps(coalesce_gap)
    footprint = layout.mean_size + layout.mean_gap
    counts = np.asarray(layout.shard_counts, dtype=np.int64)
    links = link_bytes = 0.0
    both = batches * batch * (batch - 1) / (n * (n - 1)) if n > 1 else 0.0
    for k in range(1, _reach(layout, coalesce_gap) + 1):
        pairs = float(np.clip(counts - k, 0, None).sum())
        p = pairs * both * (1 - batch / n) ** (k - 1) * (bridged if k == 1 else 1.0)
        links += p
        link_bytes += p * ((k - 1) * footprint + gap)
    return Reads("shards, global shuffle", samples, samples - links, samples * layout.mean_size + link_bytes)


def run_lengths(shard_counts: np.ndarray, block_size: int) -> np.ndarray:
    """Lengths of the runs block shuffle cuts shards into (at most block_size, never crossing a shard)."""
    return np.concatenate([np.minimum(block_size, c - np.arange(0, c, block_size)) for c in
                           np.asarray(shard_counts, dtype=np.int64).tolist()])


def block_pieces(layout: Layout, batch_size: int, block_size: int, coalesce_gap: int = DEFAULT_MAX_GAP,
                 drop_last: bool = True, trials: int = 8, seed: int = 0) -> tuple[float, float, float]:
    """(run pieces, links, bytes of the links) per epoch: averaged over `trials` random run orders.

    Block shuffle lays the runs end to end in a random order and cuts batches out of that sequence, so a
    batch holds the pieces of the runs it overlaps. A link joins two pieces of one shard in one batch that
    lie close enough for one GET (typically the end of run r and the start of run r + 1).
    """
    counts = np.asarray(layout.shard_counts, dtype=np.int64)
    lengths = run_lengths(counts, block_size)
    shard_of = np.repeat(np.arange(len(counts)), -(-counts // block_size))
    first = np.concatenate([s + np.arange(0, c, block_size) for s, c in
                            zip((np.cumsum(counts) - counts).tolist(), counts.tolist(), strict=True)])
    cut = epoch_batches(layout.n, batch_size, drop_last) * batch_size
    cut = min(cut, layout.n)
    reach = _reach(layout, coalesce_gap)
    bridged, gap = layout.small_gaps(coalesce_gap)
    footprint = layout.mean_size + layout.mean_gap
    rng = np.random.default_rng(seed)
    pieces = links = link_bytes = 0.0
    for _ in range(trials):
        perm = rng.permutation(len(lengths))
        ln = lengths[perm]
        s = np.cumsum(ln) - ln
        e = s + ln
        keep = s < cut
        perm, s, e = perm[keep], s[keep], np.minimum(e[keep], cut)
        b0, b1 = s // batch_size, (e - 1) // batch_size
        per_run = b1 - b0 + 1
        run = np.repeat(np.arange(len(perm)), per_run)
        batch = b0[run] + (np.arange(len(run)) - np.repeat(np.cumsum(per_run) - per_run, per_run))
        lo = np.maximum(s[run], batch * batch_size)
        hi = np.minimum(e[run], (batch + 1) * batch_size)
        lo_sample = first[perm[run]] + lo - s[run]
        hi_sample = first[perm[run]] + hi - 1 - s[run]
        shard = shard_of[perm[run]]
        order = np.lexsort((lo_sample, shard, batch))
        lo_sample, hi_sample, shard, batch = lo_sample[order], hi_sample[order], shard[order], batch[order]
        same = (batch[1:] == batch[:-1]) & (shard[1:] == shard[:-1])
        between = lo_sample[1:] - hi_sample[:-1]  # 1: neighbours
        linked = same & (between <= reach)
        pieces += len(run)
        links += float(np.count_nonzero(linked)) * (bridged if reach == 1 else 1.0)
        link_bytes += float(((between[linked] - 1) * footprint + gap).sum())
    return pieces / trials, links / trials, link_bytes / trials


def block_shuffle_reads(layout: Layout, batch_size: int, block_size: int, coalesce_gap: int = DEFAULT_MAX_GAP,
                        drop_last: bool = True, max_span: int = DEFAULT_MAX_SPAN) -> Reads:
    """Run pieces per batch, each one coalesced GET (split where a gap is too wide or a span too long)."""
    batches = epoch_batches(layout.n, batch_size, drop_last)
    samples = min(layout.n, batches * batch_size)
    pieces, links, link_bytes = block_pieces(layout, batch_size, block_size, coalesce_gap, drop_last)
    bridged, gap = layout.small_gaps(coalesce_gap)
    breaks = (samples - pieces) * (1 - bridged)  # neighbours inside a piece too far apart for one GET
    span = samples / (pieces - links) * (layout.mean_size + gap * bridged)
    too_long = (pieces - links) * max(0, math.ceil(span / max_span) - 1)
    gets = pieces - links + breaks + too_long
    nbytes = samples * layout.mean_size + (samples - pieces) * bridged * gap + link_bytes
    return Reads("shards, block shuffle", samples, gets, nbytes)


@dataclass(frozen=True)
class Bucket:
    """What the plan assumes of the bucket and its price (all configurable)."""

    initial_reads_per_s: float = INITIAL_READS_PER_S
    doubling_minutes: float = DOUBLING_MINUTES
    max_ramp_minutes: float = 60.0  # longer than this to reach a rate: that strategy does not fit
    usd_per_10k_ops: float = CLASS_B_USD_PER_10K


def ramp_minutes(rate: float, bucket: Bucket) -> float:
    """Minutes of steady growth the bucket needs before it serves `rate` reads/s (0 if it does at once)."""
    if rate <= bucket.initial_reads_per_s:
        return 0.0
    return math.ceil(math.log2(rate / bucket.initial_reads_per_s)) * bucket.doubling_minutes


@dataclass(frozen=True)
class Load:
    """A strategy's reads scaled to the swarm: what the bucket sees."""

    reads: Reads
    peers: int
    images_per_s: float  # per peer
    bucket: Bucket

    @property
    def gets_per_s(self) -> float:
        """GETs per second from the whole swarm."""
        return self.peers * self.images_per_s / self.reads.samples_per_get

    @property
    def egress_gb_per_h(self) -> float:
        """GB read from the bucket per hour by the whole swarm."""
        return self.peers * self.images_per_s * self.reads.bytes_per_sample * 3600 / 1e9

    @property
    def ramp_minutes(self) -> float:
        """Minutes of ramp-up the bucket needs to serve gets_per_s."""
        return ramp_minutes(self.gets_per_s, self.bucket)

    @property
    def usd_per_epoch(self) -> float:
        """GET cost of one peer's epoch."""
        return self.reads.gets / 1e4 * self.bucket.usd_per_10k_ops

    @property
    def usd_per_hour(self) -> float:
        """GET cost of an hour of the whole swarm."""
        return self.gets_per_s * 3600 / 1e4 * self.bucket.usd_per_10k_ops

    @property
    def fits(self) -> bool:
        """The bucket reaches the rate within the allowed ramp-up."""
        return self.ramp_minutes <= self.bucket.max_ramp_minutes

    def verdict(self) -> str:
        """'fits', 'fits after 40 min of ramp-up' or 'too many GETs (2 h 0 min of ramp-up)'."""
        if self.ramp_minutes == 0:
            return "fits"
        if self.fits:
            return f"fits after {_minutes(self.ramp_minutes)} of ramp-up"
        return f"too many GETs/s ({_minutes(self.ramp_minutes)} of ramp-up)"


def _minutes(m: float) -> str:
    """'0 min', '20 min', '2 h 0 min' (whole minutes, rounded up)."""
    m = math.ceil(m - 1e-9)
    return f"{m // 60} h {m % 60} min" if m >= 60 else f"{m} min"


@dataclass(frozen=True)
class Plan:
    """The three strategies' loads for one swarm and dataset."""

    layout: Layout
    loads: list[Load]
    batch_size: int
    block_size: int

    def table(self) -> list[str]:
        """The plan as printable lines: header, one row per strategy, notes and a verdict."""
        b = self.loads[0].bucket
        first = self.loads[0]
        lines = [f"dataset: {self.layout.what}",
                 f"swarm: {first.peers} peers x {first.images_per_s:,.0f} images/s = "
                 f"{first.peers * first.images_per_s:,.0f} images/s; each peer reads every sample once per epoch "
                 f"({_minutes(self.layout.n / first.images_per_s / 60)} at {first.images_per_s:,.0f} images/s; "
                 f"batch {self.batch_size}, block {self.block_size})",
                 ""]
        head = ("strategy", "samples/GET", "GETs/s", "egress GB/h", "Gbit/s", "ramp-up", "GETs/epoch", "$/epoch",
                "$/h", "fits?")
        rows = [head]
        for ld in self.loads:
            rows.append((ld.reads.strategy, f"{ld.reads.samples_per_get:,.1f}", f"{ld.gets_per_s:,.0f}",
                         f"{ld.egress_gb_per_h:,.0f}", f"{ld.egress_gb_per_h * 8 / 3600:,.1f}",
                         _minutes(ld.ramp_minutes), f"{ld.reads.gets:,.0f}",
                         f"{ld.usd_per_epoch:,.2f}", f"{ld.usd_per_hour:,.2f}", ld.verdict()))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for k, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1], strict=True)]
            lines.append("  ".join(cells + [row[-1]]))
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += ["",
                  f"GETs/epoch: one peer's epoch (GCS Class B operations); $: at USD {b.usd_per_10k_ops:g} per 10,000 "
                  f"Class B ops (an assumption: GCS Standard list price as of {CLASS_B_PRICE_DATE}; set "
                  "--price-per-10k-ops)",
                  f"ramp-up: GCS guidance, a bucket starts near {b.initial_reads_per_s:,.0f} reads/s and may double "
                  f"every {b.doubling_minutes:g} min; a strategy fits if it needs at most {b.max_ramp_minutes:g} min "
                  "(--max-ramp-minutes); ramp up gradually (start fewer peers), and again after a long pause",
                  "egress: free to VMs in the bucket's region; across regions or to the internet it is billed per GB",
                  "",
                  f"verdict: {self.verdict()}"]
        return lines

    def verdict(self) -> str:
        """One line for a newcomer: which strategy to use."""
        obj, glob, block = self.loads
        if obj.fits:
            extra = "" if obj.ramp_minutes == 0 else f" once the bucket has ramped up ({_minutes(obj.ramp_minutes)})"
            return (f"per-object reads fit ({obj.gets_per_s:,.0f} GETs/s){extra}; packed shards with "
                    f"--shuffle block would cut GETs {obj.reads.gets / block.reads.gets:,.0f}x")
        if block.fits:
            how = "train with" if self.layout.packed else "pack the data (python -m hivedata pack) and train with"
            wait = "" if block.ramp_minutes == 0 else f" after {_minutes(block.ramp_minutes)} of ramp-up"
            return (f"per-object reads need {obj.gets_per_s:,.0f} GETs/s, more than the bucket reaches in "
                    f"{self.loads[0].bucket.max_ramp_minutes:g} min: {how} --shuffle block "
                    f"({block.gets_per_s:,.0f} GETs/s, fits{wait})")
        return (f"even block shuffle needs {block.gets_per_s:,.0f} GETs/s ({_minutes(block.ramp_minutes)} of "
                "ramp-up): raise --block_size and --batch_size, add a disk cache (--cache_dir), or read fewer "
                "images/s")


def make_plan(layout: Layout, *, peers: int, images_per_s: float, batch_size: int = 64, block_size: int = 64,
              coalesce_gap: int = DEFAULT_MAX_GAP, bucket: Bucket | None = None) -> Plan:
    """The loads of per-object reads, shards with global shuffle and shards with block shuffle."""
    for what, v in (("peers", peers), ("images_per_s", images_per_s), ("batch_size", batch_size),
                    ("block_size", block_size)):
        if v <= 0:
            raise ValueError(f"plan: {what} must be positive, got {v}")
    if coalesce_gap < 0:
        raise ValueError(f"plan: coalesce_gap must be >= 0, got {coalesce_gap}")
    if layout.n < batch_size:
        raise ValueError(f"plan: {layout.n} samples make no batch of {batch_size}")
    bucket = bucket or Bucket()
    reads = [per_object_reads(layout, batch_size), global_shuffle_reads(layout, batch_size, coalesce_gap),
             block_shuffle_reads(layout, batch_size, block_size, coalesce_gap)]
    return Plan(layout, [Load(r, peers, images_per_s, bucket) for r in reads], batch_size, block_size)
