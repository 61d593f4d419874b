"""The session's leak check (tests/support/procs.py, run from tests/conftest.py) finds an orphan it must adopt."""

from __future__ import annotations

import os
import subprocess

from tests.support import procs


def test_an_orphaned_sleep_is_adopted_listed_and_killed():
    # the shell starts `sleep` in the background and exits: sleep is orphaned and re-parented to pytest
    out = subprocess.run(["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                         timeout=30)
    orphan = int(out.stdout)
    try:
        p = procs.read(orphan)
        assert p is not None and p.ppid == os.getpid(), f"not adopted by the subreaper pytest: {p}"
        found = {q.pid: q for q in procs.lingering(grace_s=0.5)}
        assert orphan in found and "sleep 120" in found[orphan].cmdline
        assert "sleep 120" in procs.describe([found[orphan]])
        procs.kill_all([found[orphan]])
        assert not procs.running(orphan)
        assert orphan not in {q.pid for q in procs.lingering(grace_s=0)}
    finally:
        if procs.running(orphan):
            os.kill(orphan, 9)


def test_allowed_helpers_are_not_leaks():
    helper = procs.Proc(pid=1, ppid=0, state="S", rss_kb=0, cmdline="torch_shm_manager")
    other = procs.Proc(pid=2, ppid=0, state="S", rss_kb=0, cmdline="python train.py")
    assert procs.allowed(helper) and not procs.allowed(other)
