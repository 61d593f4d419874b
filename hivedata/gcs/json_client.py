"""Small GCS JSON API client for metadata (listing, object metadata, small downloads) over requests."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import requests

from hivedata.errors import FetchError, ObjectNotFoundError, ObjectPermissionError, TlsError
from hivedata.gcs.auth import TokenSource
from hivedata.gcs.tls import ca_bundle, check_token_transport

RETRYABLE = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ObjectMeta:
    """Name, size and generation of one object."""

    name: str
    size: int
    generation: int


@dataclass
class ListPage:
    """One page of a listing: objects and (with a delimiter) sub-prefixes."""

    objects: list[ObjectMeta]
    prefixes: list[str]


def _bad(what: str, bucket: str, detail: str) -> FetchError:
    return FetchError(f"unexpected answer {what}: {detail}", bucket=bucket)


def _int_field(item: dict, key: str, what: str, bucket: str) -> int:
    value = item.get(key, 0)  # the JSON API sends int64 as decimal strings
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise _bad(what, bucket, f"object {item.get('name')!r} has {key} {value!r}, not an integer")
    return int(value)


def _json_object(body: bytes, what: str, bucket: str) -> dict:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(what, bucket, f"not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _bad(what, bucket, f"a JSON {type(doc).__name__}, not an object")
    return doc


def _object_meta(item: object, what: str, bucket: str) -> ObjectMeta:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise _bad(what, bucket, f"an object without a name: {str(item)[:100]}")
    return ObjectMeta(item["name"], _int_field(item, "size", what, bucket),
                      _int_field(item, "generation", what, bucket))


def parse_list_page(body: bytes, what: str, bucket: str) -> tuple[ListPage, str | None]:
    """One listing response: its page and the next page's token (None on the last); a FetchError naming the
    bucket when the body is not a listing."""
    doc = _json_object(body, what, bucket)
    items, prefixes = doc.get("items", []), doc.get("prefixes", [])
    if not isinstance(items, list) or not isinstance(prefixes, list):
        raise _bad(what, bucket, "'items' and 'prefixes' must be lists")
    objects = [_object_meta(it, what, bucket) for it in items]
    if not all(isinstance(p, str) for p in prefixes):
        raise _bad(what, bucket, "a prefix that is not a string")
    token = doc.get("nextPageToken")
    if token is not None and (not isinstance(token, str)):
        raise _bad(what, bucket, f"nextPageToken {str(token)[:100]!r} is not a string")
    return ListPage(objects, list(prefixes)), token or None


class GcsJsonClient:
    """Metadata calls against one endpoint; retries 408/429/5xx and connection errors with backoff."""

    def __init__(self, endpoint: str, tokens: TokenSource, *, max_attempts: int = 6, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.tokens = tokens
        self.max_attempts = max_attempts
        self.timeout = timeout
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # Passed with every request: requests lets REQUESTS_CA_BUNDLE override a session's own setting.
        self._verify: str | bool = (ca_bundle(endpoint=endpoint) if endpoint.startswith("https://") else None) or True

    def _headers(self) -> dict[str, str]:
        headers = self.tokens.headers()
        if headers:
            check_token_transport(self.endpoint, headers["Authorization"])
        return headers

    backoff_cap_s = 5.0  # the longest pause between two attempts
    status_errors: dict[int, type[FetchError]] = {}  # more statuses that raise at once, with their error type

    def _get(self, url: str, params: dict | None, what: str, bucket: str, obj: str | None = None) -> requests.Response:
        return self._request("GET", url, what, bucket, obj, params=params)

    def _request(self, method: str, url: str, what: str, bucket: str, obj: str | None = None, *,
                 params: dict | None = None, headers: dict | None = None,
                 data: bytes | None = None) -> requests.Response:
        """One call, retried on 408/429/5xx and network errors; any other failure raises an error naming `what`."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                r = self._session.request(method, url, params=params, headers=dict(headers or {}, **self._headers()),
                                          data=data, timeout=self.timeout, verify=self._verify)
            except requests.exceptions.SSLError as e:  # retrying cannot help
                store = "the system CA store" if self._verify is True else f"CA bundle {self._verify}"
                raise TlsError(f"TLS certificate of {self.endpoint} could not be verified with {store} {what}: {e}; "
                               "point ca_bundle (train.py --ca_bundle) or REQUESTS_CA_BUNDLE at the CA that signed it",
                               bucket=bucket, object=obj) from e
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt == self.max_attempts:
                    raise FetchError(f"network error {what}: {e}", bucket=bucket, object=obj) from e
            else:
                if r.status_code == 200:
                    return r
                if r.status_code == 404:
                    raise ObjectNotFoundError(f"not found {what}", bucket=bucket, object=obj, status=404)
                if r.status_code in (401, 403):
                    raise ObjectPermissionError(f"permission denied (HTTP {r.status_code}) {what}",
                                                bucket=bucket, object=obj, status=r.status_code)
                if r.status_code in self.status_errors:
                    raise self.status_errors[r.status_code](f"HTTP {r.status_code} {what}", bucket=bucket,
                                                            object=obj, status=r.status_code)
                if r.status_code not in RETRYABLE or attempt == self.max_attempts:
                    raise FetchError(f"HTTP {r.status_code} {what}: {r.text[:200]}", bucket=bucket, object=obj,
                                     status=r.status_code)
            time.sleep(random.uniform(0, min(self.backoff_cap_s, 0.1 * 2 ** attempt)))
        raise AssertionError("unreachable")

    def list_page(self, bucket: str, prefix: str = "", *, delimiter: str | None = None, page_size: int = 1000,
                  start_offset: str | None = None, end_offset: str | None = None, page_token: str | None = None,
                  what: str | None = None) -> tuple[ListPage, str | None]:
        """One page of objects under `prefix` with names in [start_offset, end_offset), and the next page's token."""
        url = f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o"
        params: dict[str, str | int] = {"prefix": prefix, "maxResults": page_size,
                                        "fields": "items(name,size,generation),prefixes,nextPageToken"}
        if delimiter:
            params["delimiter"] = delimiter
        if start_offset:
            params["startOffset"] = start_offset
        if end_offset:
            params["endOffset"] = end_offset
        if page_token:
            params["pageToken"] = page_token
        what = what or f"listing gs://{bucket}/{prefix}"
        return parse_list_page(self._get(url, params, what, bucket).content, what, bucket)

    def list_pages(self, bucket: str, prefix: str = "", delimiter: str | None = None,
                   page_size: int = 1000) -> Iterator[ListPage]:
        """Pages of objects under `prefix` (and sub-prefixes when `delimiter` is set)."""
        token: str | None = None
        while True:
            page, token = self.list_page(bucket, prefix, delimiter=delimiter, page_size=page_size, page_token=token)
            yield page
            if token is None:
                return

    def object_meta(self, bucket: str, name: str) -> ObjectMeta:
        """Size and generation of one object."""
        url = f"{self.endpoint}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        what = f"reading metadata of gs://{bucket}/{name}"
        return _object_meta(_json_object(self._get(url, {"fields": "name,size,generation"}, what, bucket,
                                                   name).content, what, bucket), what, bucket)

    def download(self, bucket: str, name: str) -> bytes:
        """Whole small object (labels files, pointers); bulk data goes through the native engine."""
        url = f"{self.endpoint}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        return self._get(url, {"alt": "media"}, f"downloading gs://{bucket}/{name}", bucket, name).content
