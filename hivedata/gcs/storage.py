"""The google-cloud-storage client hivedata uses for writes (shards, checkpoints, the peer registry)."""

from __future__ import annotations

import functools
import os
from typing import Any

from hivedata.gcs.paths import storage_endpoint
from hivedata.gcs.tls import ca_bundle


def storage_client() -> Any:
    """A google-cloud-storage client (honours STORAGE_EMULATOR_HOST, and the CA bundle trusted for the endpoint or
    named by REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE / SSL_CERT_FILE); created per use, never at import."""
    from google.cloud import storage

    no_project = not (os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT"))
    if os.environ.get("STORAGE_EMULATOR_HOST") and no_project:
        client = storage.Client(project="hivedata")
    else:
        client = storage.Client()
    endpoint = storage_endpoint()
    bundle = ca_bundle(endpoint=endpoint) if endpoint.startswith("https://") else None
    if bundle:  # per request: requests lets REQUESTS_CA_BUNDLE override a session's own verify setting
        session = client._http
        session.request = functools.partial(session.request, verify=bundle)
    return client
