"""pack with several readers and uploaders: the same shards as the sequential pipeline, bounded memory,
a failure stops it (no hang), and its progress meter's arithmetic."""

from __future__ import annotations

import io

import pytest

from hivedata.errors import HivedataError
from hivedata.tools.pack import _pack, open_pack_source, pack, shards_in_memory
from hivedata.tools.throughput import ThroughputMeter
from tests.support.images import jpeg, natural_image


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "train"
    for c in range(3):
        (root / f"n{c:02d}").mkdir(parents=True)
        for i in range(24):
            (root / f"n{c:02d}" / f"x{c}_{i}.JPEG").write_bytes(jpeg(natural_image(64, 48, seed=10 * c + i)))
    return root


def tars(path):
    return {p.name: p.read_bytes() for p in sorted(path.glob("train-*.tar"))}


def test_parallel_pack_writes_the_same_shards_as_the_sequential_one(folder, tmp_path):
    quiet = dict(shard_size=64 * 1024, progress=False, log=lambda s: None)
    one = pack(str(folder), str(tmp_path / "one"), uploads=1, readers=1, **quiet)
    many = pack(str(folder), str(tmp_path / "many"), uploads=4, readers=3, max_memory=3 * 128 * 1024, **quiet)
    assert len(one.shard_names) > 4
    assert tars(tmp_path / "one") == tars(tmp_path / "many")
    assert one.crcs.tolist() == many.crcs.tolist() and one.starts.tolist() == many.starts.tolist()


def test_memory_bounds_the_shards_held_at_once():
    # a 256 MB shard costs its buffer plus the 100 MiB chunk an upload copies out of it: 361 MB
    assert shards_in_memory(256 * 10**6, uploads=8, readers=2, max_memory=2 * 10**9) == 5
    assert shards_in_memory(64 * 10**6, uploads=8, readers=2, max_memory=4 * 10**9) == 10  # one per thread
    assert shards_in_memory(10**9, uploads=8, readers=2, max_memory=10**9) == 1  # never less than one


def test_a_failed_read_stops_the_pack_and_names_the_file(folder, tmp_path):
    src = open_pack_source(str(folder), readers=2)
    victim = next(folder.glob("n01/*.JPEG"))
    victim.unlink()  # gone after the listing
    with pytest.raises(HivedataError, match=victim.name):
        _pack(src, str(tmp_path / "out"), shard_size=64 * 1024, stem="train", verify=0, progress=False,
              log=lambda s: None, order="sorted", seed=0, uploads=2, readers=2, max_memory=10**9)
    assert not (tmp_path / "out" / "train.index.npz").exists()


def test_bad_concurrency_is_refused(folder, tmp_path):
    with pytest.raises(ValueError, match="uploads"):
        pack(str(folder), str(tmp_path / "out"), uploads=0, progress=False)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_meter_logs_rates_every_so_often_and_excludes_skipped_work():
    clock, lines = Clock(), []
    meter = ThroughputMeter(1000, 100_000_000, log=lines.append, stream=io.StringIO(), every=10, clock=clock)
    clock.t += 5
    meter.add(100, 10_000_000, skipped=True)  # found done: counted in progress, not in the rates
    assert lines == []  # not yet 10 s
    clock.t += 5
    meter.add(200, 20_000_000)
    assert meter.rates() == (20.0, 2.0)  # 200 images and 20 MB in 10 s
    assert len(lines) == 1 and "300/1,000 images (30%)" in lines[0] and "2.0 MB/s" in lines[0]
    assert "ETA 0:00:35" in lines[0]  # 70 MB left at 2 MB/s
    clock.t += 1
    meter.add(1, 1)
    assert len(lines) == 1
    assert "100 images already there" in meter.finish()


def test_meter_redraws_one_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock, lines, tty = Clock(), [], Tty()
    meter = ThroughputMeter(10, 1000, log=lines.append, stream=tty, clock=clock)
    for _ in range(3):
        clock.t += 1
        meter.add(1, 100)
    meter.finish()
    assert lines == [] and tty.getvalue().count("\r") == 4 and tty.getvalue().endswith("\n")
