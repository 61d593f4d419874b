"""Small objects over the JSON API with their generation: downloads, crc32c look-ups, conditional uploads.

For bookkeeping objects several peers may write at once (the shared shard index): a download returns the
generation it read, and an upload names the generation it replaces (ifGenerationMatch, 0: only if absent),
so a peer never overwrites a newer object it has not seen. Uploads are multipart with the crc32c in the
metadata, which GCS checks before the object becomes visible.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from urllib.parse import quote

from hivedata import _native
from hivedata.errors import ChecksumError, FetchError, ObjectNotFoundError
from hivedata.gcs.auth import TokenSource
from hivedata.gcs.json_client import GcsJsonClient


class PreconditionFailedError(FetchError):
    """HTTP 412: the object's generation is not the one the request named (another writer came first)."""


def crc32c_b64(crc: int) -> str:
    """A crc32c as GCS writes it: base64 of its four big-endian bytes."""
    return base64.b64encode(struct.pack(">I", crc)).decode()


def parse_crc32c_b64(text: object) -> int | None:
    """The crc32c GCS sent as base64 (None when absent or not four bytes of base64)."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return struct.unpack(">I", raw)[0] if len(raw) == 4 else None


class SmallObjects(GcsJsonClient):
    """Whole small objects of one endpoint, with generations; retries 408/429/5xx and network errors."""

    backoff_cap_s = 2.0
    status_errors = {412: PreconditionFailedError}

    def __init__(self, endpoint: str, tokens: TokenSource, *, max_attempts: int = 4, timeout: float = 60.0) -> None:
        super().__init__(endpoint, tokens, max_attempts=max_attempts, timeout=timeout)

    def close(self) -> None:
        """Closes the connections."""
        self._session.close()

    def __enter__(self) -> SmallObjects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _object_url(self, bucket: str, name: str) -> str:
        return f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"

    def download(self, bucket: str, name: str) -> tuple[bytes, int] | None:
        """(bytes, generation) of gs://bucket/name, None when it does not exist; crc32c checked when sent."""
        what = f"downloading gs://{bucket}/{name}"
        try:
            r = self._request("GET", self._object_url(bucket, name), what, bucket, name, params={"alt": "media"})
        except ObjectNotFoundError:
            return None
        sent = next((parse_crc32c_b64(h[len("crc32c="):]) for h in r.headers.get("x-goog-hash", "").split(",")
                     if h.strip().startswith("crc32c=")), None)
        data = r.content
        if sent is not None and _native.crc32c(data) != sent:
            raise ChecksumError(f"crc32c mismatch {what}", bucket=bucket, object=name)
        generation = r.headers.get("x-goog-generation", "")
        return data, int(generation) if generation.isdigit() else 0

    def crc32c(self, bucket: str, name: str, generation: int = 0) -> int | None:
        """The crc32c GCS stores for gs://bucket/name (that generation unless 0); None if it has none."""
        params = {"fields": "crc32c"}
        if generation:
            params["generation"] = str(generation)
        r = self._request("GET", self._object_url(bucket, name), f"reading the crc32c of gs://{bucket}/{name}",
                          bucket, name, params=params)
        try:
            return parse_crc32c_b64(r.json().get("crc32c"))
        except (ValueError, AttributeError):
            return None

    def upload(self, bucket: str, name: str, data: bytes, *, if_generation_match: int,
               content_type: str = "application/octet-stream") -> int:
        """Writes gs://bucket/name only if its generation is if_generation_match (0: absent); its new generation.

        PreconditionFailedError when another writer came first; ObjectPermissionError without write access.
        """
        boundary = uuid.uuid4().hex
        meta = json.dumps({"name": name, "contentType": content_type, "crc32c": crc32c_b64(_native.crc32c(data))})
        body = b"".join([f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n"
                         f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(), data,
                         f"\r\n--{boundary}--\r\n".encode()])
        r = self._request("POST", f"{self.endpoint}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                          f"uploading gs://{bucket}/{name}", bucket, name, data=body,
                          params={"uploadType": "multipart", "ifGenerationMatch": str(if_generation_match)},
                          headers={"Content-Type": f"multipart/related; boundary={boundary}"})
        try:
            generation = r.json().get("generation", 0)
            return int(generation)
        except (ValueError, AttributeError, TypeError):
            return 0
