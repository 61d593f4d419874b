"""pytest fixtures for code that reads GCS: add `pytest_plugins = ["hivedata.tools.testing"]` to a conftest."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from hivedata.tools.emulator import Emulator


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Emulator]:
    """A fake-gcs-server for the whole session; STORAGE_EMULATOR_HOST points at it meanwhile."""
    with Emulator() as em:
        yield em


@pytest.fixture
def gcs_bucket(gcs_emulator: Emulator) -> str:
    """A fresh, empty bucket in the session emulator."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs_emulator.create_bucket(name)
    return name
