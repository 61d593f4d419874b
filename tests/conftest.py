"""Test tiers by marker; credentials cleared; one real fake-gcs-server per session."""

from __future__ import annotations

import os
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
    import sys

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
