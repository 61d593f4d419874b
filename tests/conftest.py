"""Test tiers by marker; credentials cleared; one real fake-gcs-server per session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

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
def emulator():
    """A fake-gcs-server for the whole session; STORAGE_EMULATOR_HOST points at it."""
    from hivedata.emulator import Emulator

    with Emulator() as em:
        yield em


@pytest.fixture
def bucket(emulator) -> str:
    """A fresh, empty bucket in the session emulator."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    emulator.create_bucket(name)
    return name
