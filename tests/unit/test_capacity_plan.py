"""The capacity plan's arithmetic: ramp-up, rates, costs, the GET models against the Loader's own planning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hivedata.cli import main
from hivedata.loader.sampler import EpochSampler
from hivedata.sources.read_plan import plan_ranges
from hivedata.tools.plan import (
    Bucket,
    Layout,
    block_shuffle_reads,
    global_shuffle_reads,
    imagenet_layout,
    make_plan,
    per_object_reads,
    ramp_minutes,
    run_lengths,
)


def shard_layout(counts: list[int], seed: int = 0, mean: int = 5000) -> tuple[Layout, np.ndarray, np.ndarray,
                                                                                np.ndarray]:
    """A layout of shards as pack writes them (random sizes), and its (shard, starts, sizes) per sample."""
    rng = np.random.default_rng(seed)
    n = sum(counts)
    sizes = rng.integers(mean // 2, mean * 3 // 2, n)
    shard = np.repeat(np.arange(len(counts)), counts)
    starts = np.zeros(n, dtype=np.int64)
    for s in range(len(counts)):
        pos = 512
        for i in np.flatnonzero(shard == s):
            starts[i] = pos
            pos += -(-int(sizes[i]) // 512) * 512 + 1536
    same = shard[1:] == shard[:-1]
    gaps = (starts[1:] - (starts[:-1] + sizes[:-1]))[same]
    layout = Layout(n, int(sizes.sum()), np.asarray(counts), gaps, float(gaps.mean()), True, "test")
    return layout, shard, starts, sizes


def loader_reads(shard, starts, sizes, batch: int, block: int, mode: str, seeds, gap: int = 64 * 1024):
    """Mean (GETs, bytes) per epoch that the Loader's sampler and read planner make for these seeds."""
    groups = np.insert(np.flatnonzero(np.diff(shard)) + 1, 0, 0)
    gets = nbytes = 0
    for seed in seeds:
        sampler = EpochSampler(len(sizes), batch_size=batch, shuffle=mode, seed=seed, drop_last=True,
                               block_size=block, group_starts=groups)
        for ind in sampler.batches(0):
            plan = plan_ranges(shard[ind], starts[ind], sizes[ind], max_gap=gap)
            gets += plan.gets
            nbytes += sum(s.length for s in plan.spans)
    return gets / len(seeds), nbytes / len(seeds)


def test_ramp_up_doubles_every_20_minutes_from_5000():
    b = Bucket()
    assert ramp_minutes(5000, b) == 0 and ramp_minutes(4000, b) == 0
    assert ramp_minutes(5001, b) == 20 and ramp_minutes(10_000, b) == 20 and ramp_minutes(10_001, b) == 40
    assert ramp_minutes(192_000, b) == 20 * math.ceil(math.log2(192_000 / 5000)) == 120
    assert ramp_minutes(192_000, Bucket(initial_reads_per_s=1000, doubling_minutes=10)) == 80


def test_per_object_reads_one_get_per_sample_read():
    layout = imagenet_layout()
    r = per_object_reads(layout, batch_size=64)
    assert r.samples == 1_281_167 // 64 * 64 and r.gets == r.samples
    assert r.bytes == pytest.approx(r.samples * 110_000)


def test_swarm_rates_egress_and_cost():
    plan = make_plan(imagenet_layout(), peers=64, images_per_s=3000, bucket=Bucket(usd_per_10k_ops=0.05))
    obj, _, block = plan.loads
    assert obj.gets_per_s == pytest.approx(64 * 3000)
    assert obj.egress_gb_per_h == pytest.approx(64 * 3000 * 110_000 * 3600 / 1e9)
    assert obj.usd_per_epoch == pytest.approx(obj.reads.gets / 1e4 * 0.05)
    assert obj.usd_per_hour == pytest.approx(64 * 3000 * 3600 / 1e4 * 0.05)
    assert obj.ramp_minutes == 120 and not obj.fits
    assert block.gets_per_s == pytest.approx(64 * 3000 / block.reads.samples_per_get)
    assert 20 < block.reads.samples_per_get < 64  # about two run pieces per batch of 64 with runs of 64
    assert block.fits and block.ramp_minutes == 20
    assert block.egress_gb_per_h > obj.egress_gb_per_h  # ranged reads also carry the tar headers between images


@pytest.mark.parametrize("counts,batch,block", [([40] * 6, 16, 8), ([37] * 27, 16, 8), ([100] * 50, 64, 16),
                                                ([64] * 46 + [56], 64, 64), ([50] * 60, 32, 64)])
def test_gets_and_bytes_match_the_loaders_planning(counts, batch, block):
    layout, shard, starts, sizes = shard_layout(counts)
    for mode, model in (("block", block_shuffle_reads(layout, batch, block)),
                        ("global", global_shuffle_reads(layout, batch))):
        gets, nbytes = loader_reads(shard, starts, sizes, batch, block, mode, seeds=range(8))
        assert model.gets == pytest.approx(gets, rel=0.08), mode
        assert model.bytes == pytest.approx(nbytes, rel=0.06), mode


def test_equal_runs_one_per_batch_are_one_get_each():
    layout, *_ = shard_layout([32] * 10)  # runs of 8 fill shards exactly; a batch of 8 is one run
    r = block_shuffle_reads(layout, batch_size=8, block_size=8)
    assert r.gets == pytest.approx(320 / 8) and r.samples_per_get == pytest.approx(8)
    assert r.bytes == pytest.approx(layout.total_bytes + (320 - 40) * layout.mean_gap)


def test_no_coalescing_means_one_get_per_sample():
    layout, *_ = shard_layout([40] * 6)
    r = block_shuffle_reads(layout, batch_size=16, block_size=8, coalesce_gap=0)
    assert r.gets == pytest.approx(r.samples)


def test_run_lengths_never_cross_a_shard():
    assert run_lengths(np.array([10, 3, 8]), 4).tolist() == [4, 4, 2, 3, 4, 4]


def test_verdicts_name_the_strategy_to_use():
    packed, *_ = shard_layout([40] * 6)
    big = make_plan(imagenet_layout(), peers=64, images_per_s=3000)
    assert "pack the data" in big.verdict() and "--shuffle block" in big.verdict()
    assert "train with --shuffle block" in make_plan(packed, peers=64, images_per_s=3000).verdict()
    assert make_plan(imagenet_layout(), peers=1, images_per_s=1000).verdict().startswith("per-object reads fit")
    assert "even block shuffle" in make_plan(imagenet_layout(), peers=10_000, images_per_s=3000).verdict()


def test_plan_command_prints_the_table_and_a_verdict(capsys):
    assert main(["plan", "--peers", "64", "--images-per-s", "3000", "--price-per-10k-ops", "0.01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("per-object reads") and "192,000" in line for line in out)
    assert any(line.startswith("shards, block shuffle") for line in out)
    assert "USD 0.01 per 10,000" in "\n".join(out) and out[-1].startswith("verdict: ")


def test_plan_command_refuses_bad_numbers(capsys):
    assert main(["plan", "--peers", "0", "--images-per-s", "3000"]) == 2
    assert "peers must be positive" in capsys.readouterr().err
    assert main(["plan", "--peers", "4", "--images-per-s", "3000", "--shards", "/nonexistent/x.index.npz"]) == 2
    assert "--shards /nonexistent/x.index.npz" in capsys.readouterr().err
