"""Crash-safe training checkpoints in a local directory or under gs://bucket/prefix.

Layout: one ``ckpt-<step:09d>.pt`` per save (``torch.save`` bytes) plus two small pointer files,
``latest.json`` and ``best.json``: ``{"file", "step", "metric", "time", "sha256"}``.

Why a crash never loses or corrupts the training state:
- local: the checkpoint goes to ``<name>.tmp-<pid>``, is fsynced, renamed over ``<name>`` and the
  directory fsynced; only then are the pointers replaced the same way. A kill at any moment leaves
  either the old pointers (pointing at an intact older file) or the new ones.
- gs://: an object only becomes visible once its upload completes (crc32c-checked), and overwriting
  a single object is atomic, so the pointers are written after the checkpoint they name.
- load() checks the sha256 the pointer recorded; a missing or damaged file makes it fall back to the
  newest checkpoint that still loads, with a warning naming what it skipped.

Why loading one can never run code: checkpoints may live in a bucket every collaborator can write to, so they
are read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists, tuples, dicts and the few
torch types its unpickler allows. A file whose pickle names any other global (a crafted ``__reduce__`` calling
``os.system``, say) is refused with :class:`CheckpointRefusedError` naming the file and the globals, before it
is unpickled: it is not damage to fall back from but someone else's writing, and the operator must know.
save() turns the few non-plain values training state may carry (argparse.Namespace, paths, numpy scalars and
arrays) into plain ones and refuses a state that would still need any other global, so every checkpoint it
writes loads under these rules.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import time
from argparse import Namespace
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from hivedata.errors import HivedataError
from hivedata.gcs.paths import parse_gcs_url

log = logging.getLogger(__name__)

POINTERS = ("latest", "best")
_CKPT_RE = re.compile(r"^ckpt-(\d{9,})\.pt$")
_TMP_RE = re.compile(r"^(?:ckpt-\d{9,}\.pt|latest\.json|best\.json)\.tmp-(\d+)$")


def _ckpt_name(step: int) -> str:
    return f"ckpt-{step:09d}.pt"


class CheckpointRefusedError(HivedataError):
    """A checkpoint whose pickle names globals a weights-only load does not allow (it could run code)."""


def plain_state(value: Any) -> Any:
    """`value` with argparse.Namespace, os.PathLike, numpy scalars and arrays made plain (dict, str, numbers,
    tensors); containers are copied only where something inside changed."""
    if isinstance(value, Namespace):
        return plain_state(vars(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))  # a copy: the caller keeps its array
    if isinstance(value, dict):
        items = [(plain_state(k), plain_state(v)) for k, v in value.items()]
        if all(nk is k and nv is v for (k, v), (nk, nv) in zip(value.items(), items, strict=True)):
            return value
        out = OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
        if hasattr(value, "_metadata"):  # a module's state_dict carries its version metadata
            out._metadata = value._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(value, list | tuple):
        items = [plain_state(v) for v in value]
        if all(n is v for n, v in zip(value, items, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


def _refused_globals(data: bytes | memoryview) -> list[str]:
    """The globals in a torch.save file that a weights-only load does not allow (static: nothing is run)."""
    return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))


class _LocalFiles:
    """A directory written with temp file + fsync + rename + directory fsync."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))

    def url(self, name: str) -> str:
        """The path of `name`."""
        return os.path.join(self.root, name)

    def write(self, name: str, data: bytes | memoryview) -> None:
        """Atomically replaces `name` with `data`, durably."""
        os.makedirs(self.root, exist_ok=True)
        path = self.url(name)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, name: str) -> bytes | None:
        """The bytes of `name`, or None when it does not exist."""
        try:
            with open(self.url(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def list(self) -> list[str]:
        """The names in the directory."""
        try:
            return os.listdir(self.root)
        except FileNotFoundError:
            return []

    def delete(self, name: str) -> None:
        """Removes `name` if present."""
        try:
            os.unlink(self.url(name))
        except FileNotFoundError:
            pass

    def clean_stale_temps(self) -> None:
        """Removes temp files of writers that died (pid gone; assumes one host writes this directory)."""
        for name in self.list():
            m = _TMP_RE.match(name)
            if m and not _pid_alive(int(m.group(1))):
                self.delete(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


class _GcsFiles:
    """Objects under gs://bucket/prefix; uploads are checksummed, single-object writes are atomic."""

    def __init__(self, url: str) -> None:
        path = parse_gcs_url(url)
        self.bucket_name, self.prefix = path.bucket, path.prefix.strip("/")
        self._bucket: Any = None
        self._pid = -1

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _get_bucket(self) -> Any:
        if self._bucket is None or self._pid != os.getpid():  # a client does not survive fork
            from hivedata.gcs.storage import storage_client

            self._bucket, self._pid = storage_client().bucket(self.bucket_name), os.getpid()
        return self._bucket

    def url(self, name: str) -> str:
        """The gs:// URL of `name`."""
        return f"gs://{self.bucket_name}/{self._key(name)}"

    def write(self, name: str, data: bytes | memoryview) -> None:
        """Uploads `name` (crc32c-verified); it becomes visible only once complete."""
        blob = self._get_bucket().blob(self._key(name))
        if name.endswith(".json"):
            blob.cache_control = "no-store"
        content_type = "application/json" if name.endswith(".json") else "application/octet-stream"
        blob.upload_from_string(bytes(data), content_type=content_type, checksum="crc32c")

    def read(self, name: str) -> bytes | None:
        """The bytes of `name`, or None when it does not exist."""
        from google.api_core.exceptions import NotFound

        try:
            return self._get_bucket().blob(self._key(name)).download_as_bytes(checksum="crc32c")
        except NotFound:
            return None

    def list(self) -> list[str]:
        """The names directly under the prefix."""
        start = f"{self.prefix}/" if self.prefix else ""
        blobs = self._get_bucket().list_blobs(prefix=start + "ckpt-", delimiter="/")
        return [b.name[len(start):] for b in blobs]

    def delete(self, name: str) -> None:
        """Removes `name` if present."""
        from google.api_core.exceptions import NotFound

        try:
            self._get_bucket().blob(self._key(name)).delete()
        except NotFound:
            pass

    def clean_stale_temps(self) -> None:
        """Nothing to do: GCS has no partial objects."""


class CheckpointStore:
    """Saves and loads training state under `location` (a directory or gs://bucket/prefix), keeping `keep` files.

    Files the pointers name are never pruned, so up to keep + 1 may remain (when best is older).
    Loading never runs code from a file (weights_only=True; see the module docstring): a file that would is
    refused with CheckpointRefusedError.
    """

    def __init__(self, location: str, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.location = location
        self.keep = keep
        self._files = _GcsFiles(location) if location.startswith("gs://") else _LocalFiles(location)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.location!r}, keep={self.keep})"

    # -- writing ---------------------------------------------------------------------------------------
    def save(self, state: dict, *, step: int, metric: float | None = None, higher_is_better: bool = True) -> str:
        """Writes `state` as checkpoint `step`, then the pointers, then prunes; returns the path/URL written."""
        if step < 0:
            raise ValueError(f"step must be >= 0, not {step}")
        step, metric = int(step), None if metric is None else float(metric)
        buf = io.BytesIO()
        torch.save(plain_state(state), buf)
        data = buf.getbuffer()
        refused = _refused_globals(data)
        if refused:  # checked before anything is written: load() would refuse this file
            raise TypeError(f"checkpoint state holds objects a weights-only load refuses ({', '.join(refused)}); "
                            "keep tensors, numbers, strings, lists, tuples and dicts in it")
        name = _ckpt_name(step)
        pointer = {"file": name, "step": step, "metric": metric, "time": time.time(),
                   "sha256": hashlib.sha256(data).hexdigest()}
        self._files.write(name, data)
        encoded = json.dumps(pointer).encode()
        self._files.write("latest.json", encoded)
        if metric is not None and not math.isnan(metric) and self._improves(metric, higher_is_better):
            self._files.write("best.json", encoded)
        self._prune()
        return self._files.url(name)

    def _improves(self, metric: float, higher_is_better: bool) -> bool:
        best = self._pointer("best")
        if best is None or best.get("metric") is None:
            return True
        return metric > best["metric"] if higher_is_better else metric < best["metric"]

    def _prune(self) -> None:
        steps = sorted(self._steps(), reverse=True)
        protected = {p["file"] for p in map(self._pointer, POINTERS) if p is not None}
        for step in steps[self.keep:]:
            if _ckpt_name(step) not in protected:
                self._files.delete(_ckpt_name(step))
        self._files.clean_stale_temps()

    # -- reading ---------------------------------------------------------------------------------------
    def load(self, which: str = "latest", map_location: Any = "cpu") -> dict | None:
        """The state `which` ("latest" or "best") points at, else the newest intact checkpoint; None if none."""
        if which not in POINTERS:
            raise ValueError(f"which must be one of {POINTERS}, not {which!r}")
        pointers = {w: self._pointer(w) for w in POINTERS}
        wanted = pointers[which]
        known = {p["file"]: p["sha256"] for p in (pointers["best"], pointers["latest"], wanted) if p is not None}
        candidates = [wanted["file"]] if wanted else []
        candidates += [_ckpt_name(s) for s in sorted(self._steps(), reverse=True) if _ckpt_name(s) not in candidates]
        skipped: list[str] = []
        for name in candidates:
            state = self._read_state(name, known.get(name), map_location)
            if state is not None:
                if skipped:
                    log.warning("checkpoint %s: skipped missing or corrupt %s; loaded %s",
                                self.location, ", ".join(skipped), name)
                return state
            skipped.append(name)
        if skipped:
            log.warning("checkpoint %s: no intact checkpoint (skipped %s)", self.location, ", ".join(skipped))
        return None

    def latest_step(self) -> int | None:
        """The step latest.json records, else the newest checkpoint file's step; None when there is none."""
        pointer = self._pointer("latest")
        if pointer is not None:
            return int(pointer["step"])
        return max(self._steps(), default=None)

    def _read_state(self, name: str, sha256: str | None, map_location: Any) -> dict | None:
        """The state in `name` if it exists, matches `sha256` (when known) and unpickles; else None.

        Raises CheckpointRefusedError when its pickle names a global a weights-only load does not allow.
        """
        data = self._files.read(name)
        if data is None:
            return None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            log.warning("checkpoint %s: sha256 mismatch", self._files.url(name))
            return None
        try:
            refused = _refused_globals(data)
        except Exception:  # not a torch.save zip (damaged, or another format): weights_only below refuses it
            refused = []
        if refused:
            raise CheckpointRefusedError(
                f"checkpoint {self._files.url(name)} refused: its pickle names {', '.join(refused)}, which a "
                "weights-only load does not allow (loading it could run code); CheckpointStore.save never writes "
                "such a file. Find out who wrote it, then remove it and any pointer naming it")
        try:
            # weights_only=True: whatever the file holds, unpickling it builds data and never calls code
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as e:  # a damaged zip/pickle surfaces as many exception types
            log.warning("checkpoint %s: unreadable (%s: %s)", self._files.url(name), type(e).__name__, e)
            return None

    def _pointer(self, which: str) -> dict | None:
        """The parsed `which`.json, or None when it is missing or unreadable."""
        raw = self._files.read(f"{which}.json")
        if raw is None:
            return None
        try:
            pointer = json.loads(raw)
            if _CKPT_RE.match(pointer["file"]) and isinstance(pointer["step"], int) and pointer["sha256"]:
                return pointer
        except (ValueError, KeyError, TypeError):
            pass
        log.warning("checkpoint %s: ignoring unreadable %s.json", self.location, which)
        return None

    def _steps(self) -> list[int]:
        return [int(m.group(1)) for m in map(_CKPT_RE.match, self._files.list()) if m]
