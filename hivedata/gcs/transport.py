"""How GETs travel: TLS trust, protocol, connection pool, retries, deadlines and hedging (one settings object)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from hivedata.gcs.tls import ca_bundle

HTTP_VERSIONS = {"2": 2, "1.1": 1}


@dataclass(frozen=True)
class Transport:
    """Settings of the native fetch engine; the defaults suit real GCS (HTTPS, HTTP/2, 30-100 ms to first byte).

    ca_bundle         PEM file of CAs to trust (a private CA, a corporate TLS proxy); None: one trusted for the
                      endpoint (hivedata.gcs.tls.trust), else REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or
                      SSL_CERT_FILE when set, else the system store.
    http_version      "2" (HTTP/2 where TLS offers it, streams spread over a few connections) or "1.1".
    max_in_flight     GETs at once, a cap (256 keeps a GPU peer fed at 100 ms to first byte); what is in
                      flight is what the caller asked for (the Loader sizes its read-ahead by Little's law).
    max_connections   None: per protocol (HTTP/2: max_in_flight / streams_per_connection; HTTP/1.1: one per
                      GET in flight); HTTP/1.1 never has more GETs in flight than connections.
    first_byte_timeout_s / low_speed_time_s   an attempt without a response, or stalled below 1 KB/s, for
                      this long is retried.
    hedge_budget      a GET slower than clamp(hedge_multiple x running p90, hedge_min_s, hedge_max_s) gets a
                      second GET, first answer wins; at most this share of requests (plus a burst of
                      max(4, max_in_flight / 16)) is hedged (0: never).
    """

    ca_bundle: str | None = None
    http_version: str = "2"
    max_in_flight: int = 256
    max_connections: int | None = None
    streams_per_connection: int = 32
    max_attempts: int = 8
    retry_budget_s: float = 60.0
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 120.0
    low_speed_time_s: float = 5.0
    first_byte_timeout_s: float = 5.0
    hedge_budget: float = 0.02
    hedge_multiple: float = 3.0
    hedge_min_s: float = 0.25
    hedge_max_s: float = 1.0
    token_wait_s: float = 10.0
    verify_crc32c: bool = True

    def __post_init__(self) -> None:
        if self.http_version not in HTTP_VERSIONS:
            raise ValueError(f"http_version must be '2' or '1.1', not {self.http_version!r}")
        if self.ca_bundle is not None:
            object.__setattr__(self, "ca_bundle", os.fspath(self.ca_bundle))

    def native(self, endpoint: str) -> dict[str, Any]:
        """Keyword arguments for hivedata._native.FetchEngine / Pipeline (the CA bundle resolved for `endpoint`)."""
        kw = asdict(self)
        kw["http_version"] = HTTP_VERSIONS[self.http_version]
        kw["max_connections"] = -1 if self.max_connections is None else self.max_connections
        kw["ca_bundle"] = ca_bundle(self.ca_bundle, endpoint) if endpoint.startswith("https://") else None
        return kw
