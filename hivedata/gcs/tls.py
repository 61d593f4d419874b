"""Which CA bundle verifies the endpoint, and when a bearer token may be sent (one rule for every client)."""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from hivedata.errors import HivedataError

# Checked in this order after an explicit ca_bundle: curl's, OpenSSL's, then requests' convention.
CA_BUNDLE_VARIABLES = ("CURL_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class TlsConfigError(HivedataError):
    """A CA bundle that does not exist, or a token that would travel in clear text."""


def ca_bundle(explicit: str | os.PathLike | None = None) -> str | None:
    """The CA bundle file to verify servers with: `explicit`, else the first set variable, else None (system)."""
    for origin, value in [("ca_bundle", explicit)] + [(v, os.environ.get(v)) for v in CA_BUNDLE_VARIABLES]:
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
