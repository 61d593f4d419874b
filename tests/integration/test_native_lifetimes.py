"""Native handles outlive every waiter: close() racing a poll(), interpreter exit with a thread inside
fetch(), a thread that fails to start, an exception inside a libcurl callback.

Each case runs in a child process with a timeout, so a crash (std::terminate, use after free) or a hang
fails the test instead of taking the suite down.

Thread-start failure: RLIMIT_NPROC caps the threads of the child's user. Root (CAP_SYS_ADMIN) ignores the
limit, so a child started as root sets it and then drops to uid/gid 65534 (nobody) before making threads; the limit
is computed from the tasks that user already has on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRASH_MARKERS = ("terminate called", "Fatal Python error", "AddressSanitizer", "Segmentation fault", "core dumped")

# Prepended to every child: a server that accepts connections and never answers, a ReadPlan helper, and
# RLIMIT_NPROC helpers.
PRELUDE = '''
import os, resource, socket, sys, threading, time
import numpy as np
from hivedata import _native
from hivedata.sources.read_plan import ReadPlan, Span


def silent_server():
    """An endpoint that accepts connections (the kernel's backlog) and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv, f"http://127.0.0.1:{srv.getsockname()[1]}"


def plan(spans, sizes):
    """A ReadPlan of bucket b: spans are (start, length, offset, present, members)."""
    offsets = np.cumsum([0] + list(sizes[:-1]))
    typed = [Span("o", 0, s[0], s[1], s[2], tuple(s[4]), s[3]) for s in spans]
    return ReadPlan("b", np.array(offsets), np.array(sizes), int(sum(sizes)), typed)


def tasks_of(uid):
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                n += sum(1 for t in os.listdir(f"/proc/{pid}/task") if os.stat(f"/proc/{pid}/task/{t}").st_uid == uid)
            except OSError:
                pass
    return n


def limit_threads(extra):
    """From now on this process may start only `extra` more threads (RLIMIT_NPROC; as nobody when root)."""
    root = os.geteuid() == 0
    uid = 65534 if root else os.geteuid()
    own = len(os.listdir("/proc/self/task"))
    others = tasks_of(uid) - (0 if root else own)
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    resource.setrlimit(resource.RLIMIT_NPROC, (others + own + extra, hard))
    if root:
        os.setgid(65534)
        os.setuid(65534)


def lift_thread_limit():
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
'''


def _run(code: str, timeout: float = 40) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env, capture_output=True,
                              text=True, timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child hung (no exit within {timeout} s); stdout: {e.stdout!r} stderr: {e.stderr!r}")


def _assert_clean(r: subprocess.CompletedProcess, *expected: str) -> None:
    assert r.returncode == 0, f"exit code {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    for marker in CRASH_MARKERS:
        assert marker not in r.stderr, r.stderr
    for line in expected:
        assert line in r.stdout, f"{line!r} missing\nstdout: {r.stdout}\nstderr: {r.stderr}"


# -- close() racing a poll() -----------------------------------------------------------------------------

def test_close_from_another_thread_ends_an_engine_poll():
    r = _run('''
        srv, url = silent_server()
        e = _native.FetchEngine(endpoint=url, max_attempts=1, first_byte_timeout_s=60, request_timeout_s=60)
        e.submit([(1, "b", "o", 0, None, None, None)])
        ended = {}
        def wait(k):
            try:
                ended[k] = e.poll(timeout=30)
            except Exception as exc:
                ended[k] = f"{type(exc).__name__}: {exc}"
        threads = [threading.Thread(target=wait, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        e.close()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads), "a poll() outlived close()"
        assert all("closed" in str(v) for v in ended.values()), ended
        print(f"waiters left {time.monotonic() - t0:.2f} s after close", flush=True)
        print("ok", flush=True)
    ''')
    _assert_clean(r, "ok")


def test_close_from_another_thread_ends_a_pipeline_poll():
    r = _run('''
        srv, url = silent_server()
        p = _native.Pipeline(endpoint=url, decode=False, threads=1, max_attempts=1, first_byte_timeout_s=60)
        arena = np.zeros(100, dtype=np.uint8)
        p.submit(7, plan([(-1, 100, 0, False, [0])], [100]), [0], arena, None)
        ended = {}
        def wait(k):
            try:
                ended[k] = p.poll(timeout=30)
            except Exception as exc:
                ended[k] = f"{type(exc).__name__}: {exc}"
        threads = [threading.Thread(target=wait, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        p.close()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads), "a poll() outlived close()"
        assert all("closed" in str(v) for v in ended.values()), ended
        print("ok", flush=True)
    ''')
    _assert_clean(r, "ok")


# -- interpreter exit with a thread inside Fetcher.fetch() -----------------------------------------------

def test_interpreter_exit_with_a_thread_inside_fetch(emulator, bucket):
    names = [f"x/{i}" for i in range(8)]
    for n in names:
        emulator.upload(bucket, n, os.urandom(1000))
    r = _run(f'''
        from hivedata.gcs.fetch import Fetcher
        from tests.support.fault_proxy import FaultProxy
        proxy = FaultProxy({emulator.url!r}).start()
        proxy.add_fault("slow_first_byte", count=1000, delay=60)
        f = Fetcher({bucket!r}, endpoint=proxy.url, first_byte_timeout_s=60, request_timeout_s=120)
        def read():
            try:
                list(f.fetch({names!r}))
            except Exception as exc:
                print("fetch ended:", type(exc).__name__, exc, flush=True)
        threading.Thread(target=read, daemon=True).start()
        while f.stats()["in_flight"] == 0:
            time.sleep(0.02)
        time.sleep(0.2)  # the thread now waits inside poll() with the GIL released
        print("exiting with a thread inside fetch()", flush=True)
    ''', timeout=30)
    _assert_clean(r, "exiting with a thread inside fetch()")


# -- a thread that fails to start ------------------------------------------------------------------------

def test_engine_whose_thread_cannot_start_raises_and_can_start_later():
    r = _run('''
        e = _native.FetchEngine(endpoint="http://127.0.0.1:9", max_attempts=1)
        limit_threads(0)
        try:
            e.submit([(1, "b", "o", 0, None, None, None)])
        except RuntimeError as exc:
            print("refused:", exc, flush=True)
        else:
            print("submit did not raise", flush=True)
        assert e.outstanding == 0, e.outstanding
        lift_thread_limit()
        e.submit([(2, "b", "o", 0, None, None, None)])
        got = e.poll(timeout=20)
        assert [x.tag for x in got] == [2] and not got[0].ok, got
        e.close()
        print("ok", flush=True)
    ''')
    _assert_clean(r, "refused:", "thread", "ok")


@pytest.mark.parametrize("threads, extra", [(4, 2), (1, 0), (1, 1), (1, 2)])
def test_pipeline_whose_threads_cannot_start_raises_with_nothing_left(threads, extra):
    """extra=2 of 4 decode threads: the pool's third thread fails; (1, 2): pool and dispatcher start, the
    fetch engine's I/O thread fails after the batch's present sample was already posted for decode."""
    r = _run(f'''
        p = _native.Pipeline(endpoint="http://127.0.0.1:9", augment=_native.AugmentParams(out_h=8, out_w=8),
                             threads={threads}, max_attempts=1)
        arena = np.zeros(200, dtype=np.uint8)
        out = np.zeros((2, 8, 8, 3), dtype=np.uint8)
        half = plan([(-1, 100, 0, True, [0]), (-1, 100, 100, False, [1])], [100, 100])  # one present, one GET
        limit_threads({extra})
        try:
            p.submit(1, half, [0, 0], arena, out)
        except RuntimeError as exc:
            print("refused:", exc, flush=True)
            assert p.outstanding == 0, p.outstanding
        else:
            r = p.poll(timeout=20)
            assert r is not None and [i for i, _ in r.failed] == [0, 1], r
            print("completed with errors", flush=True)
        lift_thread_limit()
        p.submit(2, half, [0, 0], arena, out)
        r = p.poll(timeout=20)
        assert r is not None and r.batch_id == 2 and len(r.failed) == 2, r
        p.close()
        print("ok", flush=True)
    ''')
    _assert_clean(r, "refused:", "thread", "ok")


# -- an exception inside a libcurl callback --------------------------------------------------------------

def test_huge_content_length_without_a_buffer_is_a_clear_error():
    r = _run('''
        from hivedata.errors import BufferTooSmallError
        from hivedata.gcs.fetch import Fetcher
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        def serve():
            while True:
                c, _ = srv.accept()
                c.recv(65536)
                # 4 PiB: more than any machine holds (the engine reserves Content-Length bytes for an object
                # read without a buffer; a bad_alloc there used to be caught in the callback, and is now refused
                # before any allocation: under ASan operator new cannot throw, it aborts)
                c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 4503599627370496\\r\\n\\r\\n" + b"x" * 100)
                time.sleep(0.5)
                c.close()
        threading.Thread(target=serve, daemon=True).start()
        f = Fetcher("b", endpoint=f"http://127.0.0.1:{srv.getsockname()[1]}", credentials="anonymous",
                    max_attempts=1)
        try:
            f.read("o")
        except BufferTooSmallError as exc:
            print("refused:", exc, flush=True)
        f.close()
        print("ok", flush=True)
    ''')
    _assert_clean(r, "refused:", "memory", "ok")
