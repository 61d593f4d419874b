"""gs:// URLs and the GCS endpoint (real or emulator)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_ENDPOINT = "https://storage.googleapis.com"


@dataclass(frozen=True)
class GcsPath:
    """A bucket and an object prefix (no leading slash; may be empty)."""

    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        """The gs:// form."""
        return f"gs://{self.bucket}/{self.prefix}"


def parse_gcs_url(url: str) -> GcsPath:
    """Splits 'gs://bucket/prefix' (or 'bucket/prefix') into bucket and prefix."""
    rest = url[len("gs://"):] if url.startswith("gs://") else url
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"not a GCS location (expected gs://bucket/prefix): {url!r}")
    return GcsPath(bucket, prefix.lstrip("/"))


def emulator_host() -> str | None:
    """STORAGE_EMULATOR_HOST as an http(s) URL, or None when unset."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not host:
        return None
    if "://" not in host:
        host = "http://" + host
    return host.rstrip("/")


def storage_endpoint(endpoint: str | None = None) -> str:
    """The endpoint to talk to: the argument, else the emulator, else real GCS."""
    if endpoint:
        return endpoint.rstrip("/") if "://" in endpoint else "http://" + endpoint.rstrip("/")
    return emulator_host() or DEFAULT_ENDPOINT
