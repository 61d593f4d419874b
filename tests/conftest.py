"""Test tiers by marker; credentials cleared; one real fake-gcs-server per session; no process outlives the session.

pytest makes itself a child subreaper (Linux), so processes orphaned by a test are re-parented to it; once the
session's fixtures are torn down, any process still running under pytest is listed, killed, and fails the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["hivedata.tools.testing"]

# Never let a test reach real credentials or a user's cache.
for var in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG", "STORAGE_EMULATOR_HOST"):
    os.environ.pop(var, None)
os.environ["GOOGLE_CLOUD_PROJECT"] = "hivedata-test"
os.environ["NO_GCE_CHECK"] = "True"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("remote") and not os.environ.get("HIVEDATA_REMOTE_BUCKET"):
            item.add_marker(pytest.mark.skip(reason="remote tier: set HIVEDATA_REMOTE_BUCKET to run"))


def pytest_configure(config: pytest.Config) -> None:
    _support("procs").become_subreaper()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture's teardown: processes the tests started that are still running fail the session."""
    procs = _support("procs")
    left = procs.lingering(grace_s=5.0)
    if not left:
        return
    text = (f"{len(left)} process(es) started by the tests outlived them (now killed):\n" + procs.describe(left))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n")
        reporter.write_sep("=", "leaked processes", red=True)
        reporter.write_line(text)
    else:
        print(text, file=sys.stderr)
    procs.kill_all(left)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hivedata-cache")
    os.environ["HIVEDATA_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def emulator(gcs_emulator):
    """The session's fake-gcs-server (hivedata.tools.testing)."""
    return gcs_emulator


@pytest.fixture
def bucket(gcs_bucket) -> str:
    """A fresh, empty bucket."""
    return gcs_bucket


def _support(module: str):
    """Imports tests.support.<module> (the repository root may not be on sys.path under plain `pytest`)."""
    import importlib

    try:
        return importlib.import_module(f"tests.support.{module}")
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        return importlib.import_module(f"tests.support.{module}")


@pytest.fixture(scope="session")
def https_gcs(tmp_path_factory: pytest.TempPathFactory):
    """An HTTPS fake-gcs-server (private CA) with bucket `tls-test` of a few small JPEGs (tests/support/tls.py).

    Its .url is https://127.0.0.1:port, .ca the CA file, .bucket/.objects the data; STORAGE_EMULATOR_HOST
    is left alone (it keeps naming the plain HTTP emulator).
    """
    with _support("tls").https_gcs(tmp_path_factory.mktemp("tls")) as gcs:
        yield gcs


@pytest.fixture(scope="session")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ca.pem of a second, unrelated private CA: verifying https_gcs against it must fail."""
    return _support("tls").make_tls(tmp_path_factory.mktemp("tls-other"), ca_name="unrelated test CA").ca
