"""Which CA bundle verifies the endpoint, and when a bearer token may be sent (one rule for every client)."""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from hivedata.errors import HivedataError

# Checked in this order after an explicit ca_bundle: requests' order first (REQUESTS_CA_BUNDLE, then
# CURL_CA_BUNDLE), so the engine and every requests-based client agree; then OpenSSL's SSL_CERT_FILE.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


class TlsConfigError(HivedataError):
    """A CA bundle that does not exist, or a token that would travel in clear text."""


_trusted: dict[str, str] = {}  # endpoint -> CA bundle given for it (Loader/Fetcher ca_bundle, train.py --ca_bundle)


def trust(endpoint: str, bundle: str | os.PathLike) -> str:
    """Remembers `bundle` for every later client of `endpoint` (listings, metadata, writes); returns its path."""
    path = ca_bundle(bundle)
    _trusted[endpoint.rstrip("/")] = path
    return path


def ca_bundle(explicit: str | os.PathLike | None = None, endpoint: str | None = None) -> str | None:
    """The CA bundle to verify servers with: `explicit`, else one trusted for `endpoint`, else the first set
    variable (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE), else None (the system store)."""
    given = [("ca_bundle", explicit)]
    if endpoint is not None:
        given.append((f"the bundle trusted for {endpoint}", _trusted.get(endpoint.rstrip("/"))))
    for origin, value in given + [(v, os.environ.get(v)) for v in CA_BUNDLE_VARIABLES]:
        if value is None or str(value).strip() == "":
            continue
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise TlsConfigError(f"CA bundle {path!r} (from {origin}) is not a readable file")
        return os.path.abspath(path)
    return None


def is_loopback(endpoint: str) -> bool:
    """True when the endpoint's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_transport(endpoint: str, token: str) -> None:
    """Refuses to send a bearer token over plain http:// to another machine (anyone on the path could read it)."""
    if token and urlsplit(endpoint).scheme == "http" and not is_loopback(endpoint):
        raise TlsConfigError(
            f"refusing to send a bearer token over plain http to {endpoint}: use an https:// endpoint, or "
            "credentials='anonymous' for a server that needs none")
