"""Start a test server in a child process and wait for the `listening on HOST:PORT` line it prints."""

from __future__ import annotations

import subprocess
import time

from hivedata.tools.emulator import stop_process


def start_listening_child(args: list[str], what: str, timeout: float) -> tuple[subprocess.Popen, str, int]:
    """Runs `args` and returns the child with the host and port of its `listening on` line (IPv6 unbracketed)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            host, port = line.split("listening on ", 1)[1].strip().rsplit(":", 1)
            return proc, host.strip("[]"), int(port)
        if not line and proc.poll() is not None:
            break
    stop_child(proc)
    raise RuntimeError(f"the {what} did not start: {line!r}")


def stop_child(proc: subprocess.Popen) -> None:
    """Stops a child started by start_listening_child (terminate, then kill) and closes its pipe."""
    stop_process(proc)
    proc.stdout.close()
