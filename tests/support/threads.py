"""Runs a function on several threads at once and waits for all of them."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(target: Callable[[int], None], count: int) -> None:
    """Starts target(0) ... target(count - 1) on their own threads, then joins them all."""
    threads = [threading.Thread(target=target, args=(t,)) for t in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
