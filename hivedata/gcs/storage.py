"""The google-cloud-storage client hivedata uses for writes (shards, checkpoints, the peer registry)."""

from __future__ import annotations

import os
from typing import Any


def storage_client() -> Any:
    """A google-cloud-storage client (honours STORAGE_EMULATOR_HOST); created per use, never at import."""
    from google.cloud import storage

    no_project = not (os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT"))
    if os.environ.get("STORAGE_EMULATOR_HOST") and no_project:
        return storage.Client(project="hivedata")
    return storage.Client()
