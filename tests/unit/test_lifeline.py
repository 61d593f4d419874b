"""hivedata.lifeline: a multiprocessing child dies with its parent (SIGKILLed), and not before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hivedata import lifeline
from tests.support.procs import read, running, wait_gone

ROOT = Path(__file__).resolve().parents[2]

# argv: lifeline mode ("none": not installed), where the child is forked ("main" thread or a "thread" that ends)
PARENT = textwrap.dedent("""
    import multiprocessing, sys, threading, time
    from hivedata import lifeline

    mode, where = sys.argv[1], sys.argv[2]
    if mode != "none":
        lifeline.install(mode)
    ctx = multiprocessing.get_context("fork")
    procs = []

    def start():
        p = ctx.Process(target=time.sleep, args=(600,), daemon=True)
        p.start()
        procs.append(p)

    if where == "main":
        start()
    else:
        t = threading.Thread(target=start)
        t.start()
        t.join()  # the forking thread is gone: a parent-death signal tied to it would have fired now
    print(procs[0].pid, flush=True)
    time.sleep(600)
""")


def _parent(mode: str, where: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", PARENT, mode, where], stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    assert line.strip().isdigit(), f"parent printed {line!r} (exit {p.poll()})"
    return p, int(line)


@pytest.mark.parametrize(("mode", "where"), [("auto", "main"), ("auto", "thread"), ("watch", "main")])
def test_child_outlives_nothing_but_its_parent(mode, where):
    parent, child = _parent(mode, where)
    try:
        time.sleep(lifeline.POLL_S * 3)
        assert running(child), "the child died while its parent was alive"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone([child], 5.0) == [], f"child {child} outlived its SIGKILLed parent ({mode}, {where})"
    finally:
        parent.kill()
        parent.wait()
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_without_lifeline_the_child_is_orphaned():
    """The control: the same parent without install() leaves its child running."""
    parent, child = _parent("none", "main")
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone([child], lifeline.POLL_S * 3) == [child]
    finally:
        parent.kill()
        parent.wait()
        if running(child):
            os.kill(child, signal.SIGKILL)
        wait_gone([child], 5.0)


def test_a_parent_already_gone_kills_at_once():
    """The race: the parent died between the fork and the prctl, so getppid() is not the expected parent."""
    code = "from hivedata import lifeline; lifeline.die_with_parent(-1, forked_from_main_thread=True); print('alive')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == -signal.SIGKILL and "alive" not in out.stdout


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="'sometimes'"):
        lifeline.install("sometimes")
    with pytest.raises(ValueError, match="'sometimes'"):
        lifeline.die_with_parent(os.getppid(), forked_from_main_thread=True, mode="sometimes")


EXEC_PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from hivedata import lifeline

    p = subprocess.Popen(lifeline.command(["sleep", "600"]))
    print(p.pid, flush=True)
    time.sleep(600)
""")


def test_a_program_started_through_command_dies_with_its_parent():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    parent = subprocess.Popen([sys.executable, "-c", EXEC_PARENT], stdout=subprocess.PIPE, text=True, env=env)
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 10
        while (read(child) is None or read(child).cmdline != "sleep 600") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read(child).cmdline == "sleep 600", "the program should replace the lifeline's python (same pid)"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone([child], 5.0) == [], "sleep outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_command_leaves_what_it_cannot_arm_alone():
    assert lifeline.command(["no-such-program-xyz", "a"]) == ["no-such-program-xyz", "a"]  # Popen still raises
    box = []
    t = threading.Thread(target=lambda: box.append(lifeline.command(["sleep", "1"])))
    t.start()
    t.join()
    assert box == [["sleep", "1"]]  # from another thread the parent-death signal would fire when the thread ends
    with pytest.raises(ValueError, match="empty"):
        lifeline.command([])
