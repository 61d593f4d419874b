"""The thread and GET budget: usable_cpus() from affinity and cgroup quotas (fake cgroup trees), and
LoaderDataset dividing threads and GETs among DataLoader workers without exceeding the totals."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from hivedata.common import UsableCpus, usable_cpus
from hivedata.gcs.transport import Transport
from hivedata.loader.torch_dataset import LoaderDataset, share
from hivedata.sources import MemorySource
from tests.support.images import jpeg, natural_image


def fake_root(tmp_path: Path, proc_cgroup: str | None, files: dict[str, str]) -> Path:
    """A tree with proc/self/cgroup and files under sys/fs/cgroup, as usable_cpus(root=...) reads them."""
    root = tmp_path / "root"
    if proc_cgroup is not None:
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/cgroup").write_text(proc_cgroup)
    for rel, text in files.items():
        path = root / "sys/fs/cgroup" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "sys/fs/cgroup").mkdir(parents=True, exist_ok=True)
    return root


def cpus(root: Path, affinity: int | None = 8) -> UsableCpus:
    return usable_cpus(root, affinity=lambda: affinity)


# -- usable_cpus --------------------------------------------------------------------------------------------
def test_cgroup_v2_quota_rounds_up_and_names_its_source(tmp_path):
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "250000 100000\n", "cgroup.controllers": "cpu memory\n"})
    assert cpus(root) == UsableCpus(3, "cgroup v2 cpu.max")


def test_cgroup_v2_without_a_quota_keeps_the_affinity(tmp_path):
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cpus(root) == UsableCpus(8, "affinity")


def test_cgroup_v2_a_parents_quota_binds_the_child(tmp_path):
    root = fake_root(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/cpu.max": "max 100000", "kubepods/pod1/cpu.max": "200000 100000",
        "kubepods/pod1/ctr/cpu.max": "max 100000"})
    assert cpus(root) == UsableCpus(2, "cgroup v2 cpu.max")


def test_cgroup_v2_path_outside_the_namespace_falls_back_to_the_mount_root(tmp_path):
    """No cgroup namespace: /proc names the host's path, the container sees its own cgroup at the mount root."""
    root = fake_root(tmp_path, "0::/docker/abc123\n", {"cpu.max": "100000 100000"})
    assert cpus(root) == UsableCpus(1, "cgroup v2 cpu.max")


def test_cgroup_v1_cfs_quota(tmp_path):
    root = fake_root(tmp_path, "5:cpuset:/\n4:cpu,cpuacct:/\n3:memory:/x\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cpus(root) == UsableCpus(2, "cgroup v1 cfs quota")


def test_cgroup_v1_unlimited_and_a_hybrid_tree_keep_the_affinity(tmp_path):
    """This build machine's layout: v1 cpu controller without a quota (-1), a v2 'unified' tree without cpu.max."""
    root = fake_root(tmp_path, "2:cpuacct:/\n1:cpu:/\n0::/\n", {
        "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000", "unified/cgroup.controllers": ""})
    assert cpus(root) == UsableCpus(8, "affinity")


def test_a_quota_above_the_affinity_does_not_raise_it(tmp_path):
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "1600000 100000"})
    assert cpus(root, affinity=4) == UsableCpus(4, "affinity")


def test_a_fraction_of_a_cpu_is_one_thread(tmp_path):
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "20000 100000"})
    assert cpus(root) == UsableCpus(1, "cgroup v2 cpu.max")


def test_the_lowest_of_v1_and_v2_quotas_wins(tmp_path):
    root = fake_root(tmp_path, "1:cpu:/\n0::/\n", {
        "cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000", "unified/cpu.max": "500000 100000"})
    assert cpus(root) == UsableCpus(3, "cgroup v1 cfs quota")


@pytest.mark.parametrize("files", [{"cpu.max": "garbage"}, {"cpu.max": ""}, {"cpu.max": "0 100000"},
                                   {"cpu.max": "100000 0"}, {}])
def test_unreadable_or_absent_cgroup_files_are_ignored(tmp_path, files):
    root = fake_root(tmp_path, "0::/\n", files)
    assert cpus(root, affinity=6) == UsableCpus(6, "affinity")


def test_no_proc_file_and_no_affinity_use_cpu_count(tmp_path):
    root = fake_root(tmp_path, None, {"cpu.max": "100000 100000"})
    assert cpus(root, affinity=None) == UsableCpus(os.cpu_count() or 1, "cpu_count")


def test_on_this_machine():
    n, source = usable_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)
    assert source in ("affinity", "cpu_count", "cgroup v2 cpu.max", "cgroup v1 cfs quota")
    if hasattr(os, "sched_getaffinity"):
        assert n <= len(os.sched_getaffinity(0))


# -- LoaderDataset's division -------------------------------------------------------------------------------
N = 32


@pytest.fixture(scope="module")
def source() -> MemorySource:
    data = [jpeg(natural_image(64, 48, seed=i)) for i in range(N)]
    return MemorySource.from_bytes(data, [i % 4 for i in range(N)], [f"c{k}" for k in range(4)],
                                   names=[f"mem/{i}.JPEG" for i in range(N)])


OPTS = dict(batch_size=4, train=False, image_size=16, backend="native", prefetch=1)


def test_share_splits_a_total_without_exceeding_it():
    for total in range(1, 40):
        for parts in range(1, total + 1):
            shares = [share(total, parts, i) for i in range(parts)]
            assert sum(shares) == total and max(shares) - min(shares) <= 1 and min(shares) >= 1
    assert [share(3, 5, i) for i in range(5)] == [1] * 5  # more parts than units: one each


def _threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_four_workers_divide_threads_and_gets_and_run_what_they_were_given(source):
    ds = LoaderDataset(source, workers=10, max_in_flight=256, **OPTS)
    budgets = []
    for w in range(4):
        before = _threads()
        with ds.make_loader(w, 4) as loader:
            it = iter(loader)
            next(it)
            started = len(_threads() - before)  # new thread ids: decode threads + dispatcher + fetch I/O thread;
            # others' threads ending meanwhile (a previous test's, a previous worker's) do not count
            budgets.append(loader.stats()["budget"])
            assert loader.transport.max_in_flight == budgets[-1]["max_in_flight"]
            list(it)
        assert started == budgets[-1]["threads"] + 2  # the pipeline starts all its threads up front
    assert [b["threads"] for b in budgets] == [3, 3, 2, 2]
    assert [b["max_in_flight"] for b in budgets] == [64] * 4
    assert sum(b["threads"] for b in budgets) <= 10 and sum(b["max_in_flight"] for b in budgets) <= 256
    assert all(b["total_threads"] == 10 and b["total_max_in_flight"] == 256 for b in budgets)
    assert budgets[0]["cpu_source"] == "workers argument, shared by 4 DataLoader workers"
    assert [b["worker"] for b in budgets] == [0, 1, 2, 3]


def test_the_default_budget_is_the_usable_cpus_and_the_transports_gets(source, monkeypatch):
    monkeypatch.setattr("hivedata.loader.torch_dataset.usable_cpus", lambda: UsableCpus(7, "cgroup v2 cpu.max"))
    ds = LoaderDataset(source, transport=Transport(max_in_flight=30, max_connections=6, http_version="1.1"), **OPTS)
    kws = [ds.worker_kwargs(w, 4) for w in range(4)]
    assert [k["workers"] for k in kws] == [2, 2, 2, 1]
    assert [k["transport"].max_in_flight for k in kws] == [8, 8, 7, 7]
    assert [k["transport"].max_connections for k in kws] == [2, 2, 1, 1]
    assert all(k["transport"].http_version == "1.1" for k in kws)
    with ds.make_loader(3, 4) as loader:
        assert loader.stats()["budget"] | {} == {
            "threads": 1, "max_in_flight": 7, "max_connections": 1, "worker": 3, "total_threads": 7,
            "total_max_in_flight": 30, "cpu_source": "cgroup v2 cpu.max, shared by 4 DataLoader workers"}
    single = ds.worker_kwargs(0, 1)  # no DataLoader workers: the whole budget
    assert single["workers"] == 7 and single["transport"] == ds.transport


def test_more_workers_than_threads_take_one_each_and_say_so(source, caplog):
    ds = LoaderDataset(source, workers=2, **OPTS)
    with caplog.at_level(logging.WARNING, logger="hivedata.loader.torch_dataset"), ds.make_loader(0, 3) as loader:
        assert loader.workers == 1
    assert "3 DataLoader workers but a budget of 2 decode threads" in caplog.text


def test_conflicting_in_flight_settings_are_refused(source):
    with pytest.raises(ValueError, match="give one of them"):
        LoaderDataset(source, transport=Transport(max_in_flight=8), max_in_flight=16, **OPTS)


def test_a_loader_without_workers_uses_the_usable_cpus(source, monkeypatch):
    from hivedata.loader.loader import Loader

    monkeypatch.setattr("hivedata.loader.loader.usable_cpus", lambda: UsableCpus(3, "cgroup v1 cfs quota"))
    with Loader(source, **OPTS) as loader:
        assert loader.workers == 3
        assert loader.stats()["budget"] == {"threads": 3, "max_in_flight": 256, "max_connections": None,
                                            "cpu_source": "cgroup v1 cfs quota"}
    with pytest.raises(ValueError, match="give one of them"):
        Loader(source, transport=Transport(max_in_flight=8), max_in_flight=16, **OPTS)


class RecordingDataset(LoaderDataset):
    """Writes each worker's budget to out/<worker>.json (the worker processes' Loaders are not reachable)."""

    out: str = ""

    def make_loader(self, worker: int, workers: int):
        loader = super().make_loader(worker, workers)
        Path(self.out, f"{worker}.json").write_text(json.dumps(loader.stats()["budget"]))
        return loader


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_a_dataloader_with_four_workers_stays_within_the_budget(source, tmp_path):
    from torch.utils.data import DataLoader

    ds = RecordingDataset(source, workers=6, max_in_flight=100, **OPTS)
    ds.out = str(tmp_path)
    labels = torch.cat([y for _, y in DataLoader(ds, batch_size=None, num_workers=4)])
    assert sorted(labels.tolist()) == sorted(i % 4 for i in range(N))  # the epoch, exactly once
    budgets = [json.loads((tmp_path / f"{w}.json").read_text()) for w in range(4)]
    assert [b["threads"] for b in budgets] == [2, 2, 1, 1]
    assert [b["max_in_flight"] for b in budgets] == [25] * 4
    assert sum(b["threads"] for b in budgets) <= 6 and sum(b["max_in_flight"] for b in budgets) <= 100


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_a_real_affinity_of_one_cpu_gives_one_thread(source):
    """In a child pinned to one CPU (as taskset -c 0 would): usable_cpus() and a Loader's default follow it."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        from hivedata.common import usable_cpus
        print(*usable_cpus())
    """)
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert r.returncode == 0, r.stderr
    n, src = r.stdout.split(maxsplit=1)
    assert n == "1" and src.strip() in ("affinity", "cgroup v2 cpu.max", "cgroup v1 cfs quota")
