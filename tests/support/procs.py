"""Processes from /proc (Linux): descendants, liveness, and the session's check that nothing it started outlives it.

The test session makes itself a child subreaper (:func:`become_subreaper`), so a process orphaned by a test (its
parent died) is re-parented to pytest rather than to init; at the end, :func:`lingering` lists what is still alive
under pytest after a grace period, and :func:`kill_all` takes it down so CI does not leak.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>

# Per-process helpers that end on their own when their last client (here: the pytest process itself) is gone.
ALLOWED = ("torch_shm_manager", "multiprocessing.resource_tracker", "multiprocessing.forkserver")


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it."""

    pid: int
    ppid: int
    state: str
    rss_kb: int
    cmdline: str


def read(pid: int) -> Proc | None:
    """The process `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if not cmd:  # a kernel thread or a zombie: the name in the stat line
        cmd = "[" + stat[stat.index("(") + 1:stat.rindex(")")] + "]"
    return Proc(pid=pid, ppid=int(fields[1]), state=fields[0], rss_kb=rss, cmdline=cmd)


def processes() -> list[Proc]:
    """Every process visible in /proc."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = read(int(name))
            if p is not None:
                out.append(p)
    return out


def descendants(pid: int) -> list[Proc]:
    """Children, grandchildren, ... of `pid` (breadth first)."""
    by_parent: dict[int, list[Proc]] = {}
    for p in processes():
        by_parent.setdefault(p.ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        kids = by_parent.get(todo.pop(0), [])
        out += kids
        todo += [k.pid for k in kids]
    return out


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie child of ours is reaped on the way)."""
    p = read(pid)
    if p is None:
        return False
    if p.state == "Z":
        reap(pid)
        return False
    return True


def reap(pid: int = -1) -> None:
    """Collects exited children of this process: `pid`, or (-1) all that have exited."""
    while True:
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if got == 0 or pid != -1:
            return


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Waits up to timeout_s for every pid to end; returns those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in pids if running(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def become_subreaper() -> bool:
    """Makes this process adopt its descendants' orphans (Linux); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def allowed(p: Proc) -> bool:
    """A helper that ends by itself with its last client (see ALLOWED)."""
    return any(name in p.cmdline for name in ALLOWED)


def lingering(root: int | None = None, grace_s: float = 5.0) -> list[Proc]:
    """Descendants of `root` (default: this process) still running after up to grace_s, allowed helpers aside.

    Zombies (exited orphans a subreaper inherits) are reaped, not reported.
    """
    root = os.getpid() if root is None else root
    deadline = time.monotonic() + grace_s
    while True:
        if root == os.getpid():
            reap()
        left = [p for p in descendants(root) if p.state != "Z" and not allowed(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def kill_all(procs: list[Proc]) -> None:
    """SIGKILLs each process (gone ones are skipped) and reaps those that were our children."""
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone([p.pid for p in procs], 5.0)


def describe(procs: list[Proc]) -> str:
    """One line per process: pid, ppid, RSS and command line."""
    return "\n".join(f"  pid {p.pid} (ppid {p.ppid}, {p.rss_kb // 1024} MB): {p.cmdline[:200]}" for p in procs)
