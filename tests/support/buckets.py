"""A bucket on the session's emulator filled with a synthetic dataset (train/ and val/ prefixes)."""

from __future__ import annotations

from hivedata.tools.synthetic import SyntheticSpec
from hivedata.tools.synthetic_store import upload_dataset


def dataset_bucket(gcs_emulator, name: str, spec: SyntheticSpec) -> str:
    """Creates bucket `name` and uploads `spec` under train/ and val/; returns the name."""
    gcs_emulator.create_bucket(name)
    upload_dataset(name, spec, train_prefix="train", val_prefix="val", progress=False)
    return name
