"""The embedded GCS: start/stop, environment, the CLI, and the demo end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

from hivedata.tools.demo import run_demo
from hivedata.tools.emulator import ENV_VAR, Emulator
from hivedata.tools.synthetic import SyntheticSpec


def test_emulator_exports_and_restores_env(emulator):
    outer = os.environ[ENV_VAR]
    with Emulator() as em:
        assert os.environ[ENV_VAR] == em.url != outer
        em.create_bucket("env-check")
        em.create_bucket("env-check")  # exists already: fine
        with urllib.request.urlopen(f"{em.url}/storage/v1/b/env-check") as r:
            assert r.status == 200
    assert os.environ[ENV_VAR] == outer
    assert not em.running


def test_cli_emulator_prints_the_variable_and_stops_on_ctrl_c():
    p = subprocess.Popen([sys.executable, "-m", "hivedata", "emulator"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        lines = [p.stdout.readline() for _ in range(2)]
        url = lines[1].split("=", 1)[1].strip()
        assert lines[1].strip().startswith(f"export {ENV_VAR}=http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/storage/v1/b") as r:
            assert r.status == 200
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=20) == 0
    finally:
        p.kill()


def test_demo_end_to_end(emulator):
    spec = SyntheticSpec(num_classes=3, train_per_class=8, val_per_class=3, min_short_side=64, max_short_side=96)
    report = run_demo(spec, progress=False)
    assert (report.classes, report.train_objects, report.val_objects) == (3, 24, 9)
    assert report.bytes > 0 and report.retries == 0
    assert any("objects/s" in line for line in report.lines())
