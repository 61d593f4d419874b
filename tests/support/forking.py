"""Run a check in a forked child and get its verdict back."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def in_forked_child(target: Callable[..., Any], *args: Any, timeout: float = 60.0) -> tuple[Any, Any, int | None]:
    """Forks, runs target(*args, queue) in the child; returns (ok, info) that it put, and its exit code."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    try:
        ok, info = q.get(timeout=timeout)
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return ok, info, p.exitcode
