"""Bearer tokens for GCS: Application Default Credentials via google-auth, or anonymous."""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from typing import Any

from hivedata.gcs.paths import DEFAULT_ENDPOINT
from hivedata.gcs.tls import check_token_transport

log = logging.getLogger(__name__)

READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
REFRESH_MARGIN = _dt.timedelta(minutes=5)


class TokenSource:
    """Hands out a valid bearer token ("" when anonymous), refreshing it before it expires.

    credentials: "auto" (ADC when available, anonymous for an emulator or when no ADC is
    configured), "anonymous", or a google.auth Credentials object. The token is never logged.
    """

    def __init__(self, credentials: Any = "auto", *, endpoint: str = DEFAULT_ENDPOINT,
                 scopes: tuple[str, ...] = (READ_SCOPE,)) -> None:
        self._lock = threading.Lock()
        self._creds = None
        if credentials == "anonymous" or (credentials == "auto" and endpoint != DEFAULT_ENDPOINT):
            return
        if credentials == "auto":
            import google.auth
            import google.auth.exceptions

            try:
                self._creds, _ = google.auth.default(scopes=list(scopes))
            except google.auth.exceptions.DefaultCredentialsError:
                log.warning("no Application Default Credentials found: reading GCS anonymously "
                            "(public buckets only); run 'gcloud auth application-default login' for private ones")
        else:
            self._creds = credentials

    @property
    def anonymous(self) -> bool:
        """True when requests carry no Authorization header."""
        return self._creds is None

    def token(self, force: bool = False) -> str:
        """A token valid for at least a few more minutes, or "" when anonymous; force: a fresh one (after a 401)."""
        if self._creds is None:
            return ""
        with self._lock:
            if force or self._needs_refresh():
                import google.auth.transport.requests

                self._creds.refresh(google.auth.transport.requests.Request())
            return self._creds.token or ""

    def headers(self) -> dict[str, str]:
        """HTTP headers that authorise a request."""
        tok = self.token()
        return {"Authorization": f"Bearer {tok}"} if tok else {}

    def _needs_refresh(self) -> bool:
        creds = self._creds
        if not getattr(creds, "token", None):
            return True
        expiry = getattr(creds, "expiry", None)
        if expiry is None:
            return False
        now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None) if expiry.tzinfo is None \
            else _dt.datetime.now(_dt.timezone.utc)
        return expiry - now < REFRESH_MARGIN

    def __repr__(self) -> str:
        kind = "anonymous" if self._creds is None else type(self._creds).__name__
        return f"TokenSource({kind})"


def token_source(credentials: Any, endpoint: str) -> TokenSource:
    """`credentials` ("auto", "anonymous", a google.auth Credentials or a TokenSource) as a TokenSource."""
    return credentials if isinstance(credentials, TokenSource) else TokenSource(credentials, endpoint=endpoint)


class TokenFeed:
    """Keeps a native engine's bearer token current: renewed before it expires, refreshed at once after a 401."""

    def __init__(self, tokens: TokenSource, endpoint: str, set_token: Any) -> None:
        self._tokens, self._endpoint, self._set = tokens, endpoint, set_token
        self._last: str | None = None

    def update(self, rejected: bool = False) -> None:
        """Hands the engine the current token; rejected=True (the engine saw a 401) forces a fresh one."""
        tok = self._tokens.token(force=rejected)
        check_token_transport(self._endpoint, tok)
        if rejected or tok != self._last:
            self._set(tok)
            self._last = tok

    def forget(self) -> None:
        """The engine was rebuilt (a forked child): hand the token again on the next update."""
        self._last = None
