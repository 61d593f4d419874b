"""Helper processes die with the process that started them, even when it is killed with SIGKILL or by the OOM killer.

hivemind runs the DHT and each averager as ``multiprocessing`` children of the training process (forked, with
train.py's command line). A parent that exits normally shuts them down; a parent killed with SIGKILL cannot, and
they used to live on as orphans (about 1.6 GB of RSS per killed peer). After :func:`install`, every
``multiprocessing`` child forked by this process arms a lifeline as it starts:

- Linux, child forked from the main thread: the kernel's parent-death signal, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``.
  It fires when the *thread* that forked the child ends, so it is used only for forks from the main thread (which
  ends only with the process). ``getppid()`` is compared with the parent's pid right after, which closes the race
  of a parent that died between the fork and the prctl.
- Elsewhere (macOS, or a fork from another thread): a daemon thread in the child polls ``getppid()`` every
  :data:`POLL_S` seconds and kills the child once it has been re-parented.

A program started with ``subprocess`` (the embedded emulator, the extra local peers) is armed by starting it
through :func:`command`: a few lines of Python set the parent-death signal and ``exec`` the program in place
(same pid). That needs Linux and a start from the main thread; elsewhere the command line is left as it is.

Grandchildren need nothing more: hivemind's p2pd daemon exits within a fraction of a second of its DHT process,
and torch's ``torch_shm_manager`` once its last client is gone. Children started with the ``spawn`` method and
plain ``os.fork()`` children are not armed (the hooks run in ``multiprocessing``'s fork bootstrap only).
"""

from __future__ import annotations

import ctypes
import multiprocessing.util
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5  # how often the fallback watcher looks at getppid()
MODES = ("auto", "watch")

_lock = threading.Lock()
_mode: str | None = None  # None until install()
_forking: dict[int, tuple[int, bool]] = {}  # thread ident -> (pid, it is the main thread), by the before-fork hook
_forked_by: tuple[int, bool] | None = None  # in a forked child: (the parent's pid, it forked from its main thread)
_token = type("_LifelineToken", (), {})()  # multiprocessing's after-fork registry keeps weak references to its key


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


_prctl = _load_prctl()


# run as `python -c _EXEC <parent pid> <program> <args...>`: arm the signal, check the parent, become the program
_EXEC = """import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    os.kill(os.getpid(), signal.SIGKILL)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    _die()


def die_with_parent(parent_pid: int, *, forked_from_main_thread: bool, mode: str = "auto") -> str:
    """Makes this process die when `parent_pid` is no longer its parent; returns how: "signal" or "watch".

    Call it in a freshly forked child. forked_from_main_thread: the parent forked us from its main thread (the
    parent-death signal is only safe then); mode "watch" forces the portable watcher thread.
    """
    if mode not in MODES:
        raise ValueError(f"lifeline mode must be one of {MODES}, not {mode!r}")
    how = "watch"
    if mode != "watch" and forked_from_main_thread and _prctl is not None:
        if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            how = "signal"
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        _die()
    if how == "watch":
        threading.Thread(target=_watch, args=(parent_pid,), name="hivedata-lifeline", daemon=True).start()
    return how


def _before_fork() -> None:
    _forking[threading.get_ident()] = (os.getpid(), threading.current_thread() is threading.main_thread())


def _after_fork_in_parent() -> None:
    _forking.pop(threading.get_ident(), None)


def _after_fork_in_child() -> None:
    global _forked_by
    _forked_by = _forking.get(threading.get_ident())  # the child's one thread is the one that forked
    _forking.clear()


def _arm(_: object) -> None:
    """multiprocessing's after-fork callback, run in a forked child before Process.run()."""
    if _forked_by is None or _mode is None:
        return
    parent_pid, from_main = _forked_by
    die_with_parent(parent_pid, forked_from_main_thread=from_main, mode=_mode)


def install(mode: str = "auto") -> str:
    """Arms a lifeline in every multiprocessing child this process forks from now on; returns the mode in force.

    mode: "auto" (the parent-death signal where it is safe, else the watcher) or "watch" (always the watcher
    thread, as on macOS). Idempotent; the first call's mode stays.
    """
    global _mode
    if mode not in MODES:
        raise ValueError(f"lifeline mode must be one of {MODES}, not {mode!r}")
    with _lock:
        if _mode is None:
            os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                                after_in_child=_after_fork_in_child)
            multiprocessing.util.register_after_fork(_token, _arm)
            _mode = mode
        return _mode


def installed() -> str | None:
    """The mode install() set, or None before it was called."""
    return _mode


def command(argv: Sequence[str]) -> list[str]:
    """argv prefixed so that the program, once started, dies with this process (see the module doc); else argv.

    The prefix is used on Linux, from the main thread, when argv[0] resolves to an executable (so that a missing
    program still fails in ``subprocess.Popen`` as before).
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("lifeline.command() needs a command line, not an empty one")
    if (_prctl is None or not sys.executable or threading.current_thread() is not threading.main_thread()
            or shutil.which(argv[0]) is None):
        return argv
    return [sys.executable, "-c", _EXEC, str(os.getpid()), *argv]
