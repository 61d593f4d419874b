"""How training peers find each other: a heartbeat registry in the bucket, legacy announce files, per-peer seeds.

Each reachable peer of a run keeps ``gs://<bucket>/<run_id>/peers/<peer_id>`` fresh (JSON with its multiaddrs and
the time of the last heartbeat); a joining peer reads the entries updated recently and passes their multiaddrs to
``hivemind.DHT(initial_peers=...)``. ``--initial_peer`` and the original script's single-file
``--announce_gcs_path``/``--fetch_gcs_path`` still work and are merged by :func:`initial_peers`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import threading
import time
from typing import Any

from hivedata.gcs.paths import parse_gcs_url
from hivedata.gcs.storage import storage_client

log = logging.getLogger(__name__)

_TIMEOUT_S = 20.0  # per GCS request, so a hung connection cannot stall a heartbeat or stop() for long


def _not_found(exc: BaseException) -> bool:
    from google.api_core.exceptions import NotFound

    return isinstance(exc, NotFound)


class PeerRegistry:
    """The peers of one run, as heartbeat objects under ``gs://<bucket>/<run_id>/peers/``.

    A reachable peer passes its ``peer_id`` and ``maddrs`` and calls :meth:`start` to register (and
    :meth:`stop` to leave); a reader (no peer_id, or ``client_mode=True``) only calls :meth:`live_peers`.
    ``bucket`` is a bucket name or a ``gs://bucket[/prefix]`` URL (entries then live under the prefix).
    """

    def __init__(self, bucket: str, run_id: str, *, peer_id: str | None = None, maddrs: list[str] | None = None,
                 heartbeat_s: float = 30.0, client_mode: bool = False) -> None:
        if heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be positive, not {heartbeat_s}")
        if not run_id or "/" in run_id:
            raise ValueError(f"run_id must be a non-empty name without '/': {run_id!r}")
        path = parse_gcs_url(bucket)
        self.bucket_name = path.bucket
        self.prefix = "/".join(p for p in (path.prefix.strip("/"), run_id, "peers") if p) + "/"
        self.peer_id = peer_id
        self.maddrs = list(maddrs or [])
        self.heartbeat_s = heartbeat_s
        self.client_mode = client_mode
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """gs:// URL of the registry folder."""
        return f"gs://{self.bucket_name}/{self.prefix}"

    def _entry_name(self) -> str:
        return self.prefix + str(self.peer_id)

    def start(self) -> None:
        """Registers now and refreshes the entry every heartbeat_s from a daemon thread (no-op in client mode)."""
        if self.client_mode:
            log.info("client-mode peer: not reachable, so not registering in %s", self.url)
            return
        if not self.peer_id or not self.maddrs:
            raise ValueError("PeerRegistry.start() needs peer_id and at least one multiaddr")
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        bucket = self._beat(None)  # first beat here, so the entry exists when start() returns (unless GCS failed)
        self._thread = threading.Thread(target=self._run, args=(bucket,), name="hivedata-peer-registry", daemon=True)
        self._thread.start()

    def _beat(self, bucket: Any) -> Any:
        """Writes our entry once; logs failures (returns None so the next beat makes a new client)."""
        try:
            if bucket is None:
                bucket = storage_client().bucket(self.bucket_name)
            body = {"peer_id": self.peer_id, "maddrs": self.maddrs, "updated": time.time(), "client_mode": False}
            bucket.blob(self._entry_name()).upload_from_string(json.dumps(body), content_type="application/json",
                                                               timeout=_TIMEOUT_S)
            return bucket
        except Exception as e:  # never kill the heartbeat: the next beat retries
            log.warning("peer registry heartbeat to gs://%s/%s failed (retrying in %g s): %s",
                        self.bucket_name, self._entry_name(), self.heartbeat_s, e)
            return None

    def _run(self, bucket: Any) -> None:
        while not self._stop.wait(self.heartbeat_s):
            bucket = self._beat(bucket)

    def stop(self) -> None:
        """Stops the heartbeat and deletes our entry (best-effort: a leftover entry just goes stale)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=_TIMEOUT_S + 5)  # a beat in flight must not re-create the entry after the delete
        try:
            storage_client().bucket(self.bucket_name).blob(self._entry_name()).delete(timeout=_TIMEOUT_S)
        except Exception as e:
            if not _not_found(e):
                log.warning("could not delete peer registry entry gs://%s/%s: %s", self.bucket_name,
                            self._entry_name(), e)

    def live_peers(self, max_age_s: float | None = None) -> list[str]:
        """Multiaddrs of other peers whose entry was updated within max_age_s (default 3 heartbeats).

        Malformed or unreadable entries are skipped with a warning; listing errors (no bucket, no permission) raise.
        """
        max_age_s = 3 * self.heartbeat_s if max_age_s is None else max_age_s
        bucket = storage_client().bucket(self.bucket_name)
        now = time.time()
        out: list[str] = []
        for blob in bucket.list_blobs(prefix=self.prefix, timeout=_TIMEOUT_S):
            name = blob.name[len(self.prefix):]
            if not name or "/" in name or name == self.peer_id:
                continue
            try:
                # by name, not the listed generation: a heartbeat may have replaced it since the listing
                entry = json.loads(bucket.blob(blob.name).download_as_bytes(timeout=_TIMEOUT_S))
            except Exception as e:
                if not _not_found(e):  # NotFound: the peer left between the listing and the read
                    log.warning("skipping unreadable peer entry gs://%s/%s: %s", self.bucket_name, blob.name, e)
                continue
            maddrs = entry.get("maddrs") if isinstance(entry, dict) else None
            updated = entry.get("updated") if isinstance(entry, dict) else None
            if (not isinstance(maddrs, list) or not all(isinstance(m, str) for m in maddrs)
                    or not isinstance(updated, (int, float)) or isinstance(updated, bool)):
                log.warning("skipping malformed peer entry gs://%s/%s: expected {peer_id, maddrs: [str], "
                            "updated: number}", self.bucket_name, blob.name)
                continue
            if entry.get("peer_id") == self.peer_id and self.peer_id is not None:
                continue
            if entry.get("client_mode") or now - updated > max_age_s:
                continue
            out.extend(maddrs)
        return out


def _split_object(gcs_path: str) -> tuple[str, str]:
    path = parse_gcs_url(gcs_path)
    if not path.prefix:
        raise ValueError(f"expected gs://bucket/object, got {gcs_path!r}")
    return path.bucket, path.prefix


def announce(gcs_path: str, maddrs: list[str]) -> None:
    """Writes maddrs, one per line, to gs://bucket/object (the original script's --announce_gcs_path)."""
    bucket, name = _split_object(gcs_path)
    storage_client().bucket(bucket).blob(name).upload_from_string("".join(f"{m}\n" for m in maddrs),
                                                           content_type="text/plain", timeout=_TIMEOUT_S)


def fetch_announced(gcs_path: str) -> list[str]:
    """Multiaddrs written by announce() (the original --fetch_gcs_path); [] when the object does not exist."""
    bucket, name = _split_object(gcs_path)
    try:
        text = storage_client().bucket(bucket).blob(name).download_as_text(timeout=_TIMEOUT_S)
    except Exception as e:
        if _not_found(e):
            return []
        raise
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _gather(explicit: list[str], registry: PeerRegistry | None, fetch_gcs_path: str | None, warn: bool) -> list[str]:
    found = list(explicit or [])
    sources: list[tuple[str, Any]] = []
    if registry is not None:
        sources.append((registry.url, registry.live_peers))
    if fetch_gcs_path:
        sources.append((fetch_gcs_path, lambda: fetch_announced(fetch_gcs_path)))
    for where, read in sources:
        try:
            found += read()
        except Exception as e:  # one unreadable source must not hide the others
            log.log(logging.WARNING if warn else logging.DEBUG, "could not read peers from %s: %s", where, e)
    return list(dict.fromkeys(m.strip() for m in found if m and m.strip()))


def initial_peers(*, explicit: list[str], registry: PeerRegistry | None, fetch_gcs_path: str | None,
                  wait_s: float = 0.0) -> list[str]:
    """Explicit peers + live registry entries + the legacy file, de-duplicated; polls up to wait_s while empty."""
    deadline = time.monotonic() + max(wait_s, 0.0)
    peers = _gather(explicit, registry, fetch_gcs_path, warn=True)
    while not peers and time.monotonic() < deadline:
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        peers = _gather(explicit, registry, fetch_gcs_path, warn=False)
    return peers


def _is_loopback(maddr: str) -> bool:
    parts = maddr.split("/")
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return False
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def visible_maddrs(dht: Any) -> list[str]:
    """The DHT's visible multiaddrs as strings: non-loopback ones when there are any, else the loopback ones."""
    addrs = [str(m) for m in dht.get_visible_maddrs()]
    public = [a for a in addrs if not _is_loopback(a)]
    return public or addrs


def peer_seed(peer_id: str, base_seed: int) -> int:
    """A stable 63-bit seed from (base_seed, peer_id), so each peer reads the data in its own order."""
    digest = hashlib.sha256(f"{base_seed}:{peer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
