"""Fork after use, interpreter exit with transfers running, Ctrl-C during a wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hivedata.gcs.fetch import Fetcher
from tests.support.fault_proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def objects(emulator, bucket) -> dict[str, bytes]:
    out = {f"p/{i:03d}.JPEG": os.urandom(50_000 + i) for i in range(40)}
    for name, data in out.items():
        emulator.upload(bucket, name, data)
    return out


def _run(code: str, env_extra: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
               **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_fork_after_use(bucket, objects):
    names = sorted(objects)
    with Fetcher(bucket) as f:
        assert len(list(f.fetch(names))) == len(names)
        pid = os.fork()
        if pid == 0:  # child: the engine restarts itself and works
            code = 1
            try:
                got = {it.request.object: bytes(it.data) for it in f.fetch(names)}
                code = 0 if got == objects else 2
            finally:
                os._exit(code)
        # parent keeps working while the child does
        got = {it.request.object: bytes(it.data) for it in f.fetch(names)}
        _, status = os.waitpid(pid, 0)
    assert got == objects
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_fork_with_transfers_in_flight(bucket, objects, emulator):
    names = sorted(objects) * 5
    with FaultProxy(emulator.url) as proxy, Fetcher(bucket, endpoint=proxy.url) as f:
        proxy.add_fault("slow_first_byte", count=20, delay=0.5)
        it = f.fetch(names)
        next(it)  # transfers now in flight in the parent
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if f.read(names[1]) == objects[names[1]] else 2
            finally:
                os._exit(code)
        rest = list(it)
        _, status = os.waitpid(pid, 0)
    assert len(rest) == len(names) - 1
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_interpreter_exit_with_transfers_running(bucket, objects, emulator):
    code = f"""
        from hivedata.gcs.fetch import Fetcher
        from tests.support.fault_proxy import FaultProxy
        proxy = FaultProxy({emulator.url!r}).start()
        proxy.add_fault("slow_first_byte", count=1000, delay=0.5)
        f = Fetcher({bucket!r}, endpoint=proxy.url)
        it = f.fetch({sorted(objects)!r} * 20)
        next(it)
        print("exiting with transfers in flight", f.stats()["in_flight"], flush=True)
        # no close(): the interpreter exits with the engine busy
    """
    r = _run(code, {})
    assert r.returncode == 0, r.stderr
    assert "exiting with transfers in flight" in r.stdout


def test_ctrl_c_interrupts_a_wait(bucket, objects, emulator):
    code = f"""
        import sys, time
        from hivedata.gcs.fetch import Fetcher
        from tests.support.fault_proxy import FaultProxy
        proxy = FaultProxy({emulator.url!r}).start()
        proxy.add_fault("slow_first_byte", count=1000, delay=60)
        f = Fetcher({bucket!r}, endpoint=proxy.url)
        print("waiting", flush=True)
        t0 = time.monotonic()
        try:
            f.read({sorted(objects)[0]!r})
        except KeyboardInterrupt:
            print(f"interrupted after {{time.monotonic() - t0:.1f}} s", flush=True)
            sys.exit(0)
        sys.exit(3)
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])))
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "interrupted after" in out
    assert float(out.split("after")[1].split()[0]) < 30  # long before the 60 s stall ends
