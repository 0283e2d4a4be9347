"""Start a real, throw-away Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) for tests.

The server gets a JSON configuration in a temp dir: a free loopback HTTP port, the DICOM
listener disabled, storage and index in the temp dir, the DICOMweb plugin loaded, remote
access refused and HTTP Basic authentication with a generated test user. ``DCMDICTPATH``
points at dcmtk's ``dicom.dic``, which Orthanc needs outside its packaged service
(DOMAIN.md). Tests never touch an Orthanc on the standard port 8042.

Typical use::

    with orthanc_server(tmp_dir) as server:
        result = await stow(server.dicomweb_url, [data], session=s, auth=server.auth)
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.pacs import BasicCredentials

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
LOOPBACK = "127.0.0.1"
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)
DICTIONARY_CANDIDATES = ("/usr/share/libdcmtk*/dicom.dic", "/usr/share/dcmtk*/dicom.dic")


class OrthancServerError(RuntimeError):
    """Orthanc could not be started (missing package, port race lost too often)."""


def _first_match(patterns: tuple[str, ...]) -> str | None:
    for pattern in patterns:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return str(found[0])
    return None


def dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin (``dpkg -L orthanc-dicomweb``), if installed."""
    return _first_match(PLUGIN_CANDIDATES)


def dicom_dictionary() -> str | None:
    """Path of dcmtk's ``dicom.dic`` (package ``libdcmtk*``), if installed."""
    return _first_match(DICTIONARY_CANDIDATES)


def free_port() -> int:
    """A TCP port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc child process."""

    port: int
    directory: Path
    username: str
    password: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """Root of Orthanc's REST API."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb API (STOW-RS at ``/studies``)."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> BasicCredentials:
        """The test user's credentials."""
        return BasicCredentials(self.username, self.password)

    @property
    def log(self) -> str:
        """The server's log so far (for assertion messages)."""
        return (self.directory / "orthanc.log").read_text(errors="replace")

    def get(self, path: str) -> bytes:
        """A blocking authenticated GET on the REST API (for checks in tests)."""
        request = urllib.request.Request(self.url + path)  # noqa: S310 - loopback http URL
        request.add_header("Authorization", self.auth.authorization)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body: bytes = response.read()
            return body

    def get_json(self, path: str) -> Any:
        """:meth:`get` decoded as JSON."""
        return json.loads(self.get(path))

    def stop(self) -> None:
        """Shut the server down (SIGTERM, then SIGKILL if it lingers)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def write_config(directory: Path, port: int, username: str, password: str) -> Path:
    """The JSON configuration of a test instance; returns its path."""
    plugin, dictionary = dicomweb_plugin(), dicom_dictionary()
    if plugin is None or dictionary is None:
        raise OrthancServerError("install the Debian packages orthanc-dicomweb and dcmtk")
    config = {
        "Name": "relais-test",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),  # unused (disabled) but must not collide with 4242
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "index"),
        "Plugins": [plugin],
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "SaveJobs": False,
        "HttpThreadsCount": 4,
        "StableAge": 1,
    }
    path = directory / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_orthanc(directory: Path, *, timeout: float = 30.0, attempts: int = 3) -> OrthancServer:
    """Start Orthanc in ``directory`` and wait until ``/system`` answers."""
    if not Path(ORTHANC).exists():
        raise OrthancServerError(f"{ORTHANC} not found: install the Debian package orthanc")
    dictionary = dicom_dictionary()
    for attempt in range(attempts):
        run_dir = directory / f"run{attempt}"
        run_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        username, password = "relais", secrets.token_urlsafe(12)
        config = write_config(run_dir, port, username, password)
        log = (run_dir / "orthanc.log").open("wb")
        process = subprocess.Popen(
            [ORTHANC, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"DCMDICTPATH": str(dictionary), "PATH": "/usr/bin:/bin"},
            cwd=run_dir,
        )
        log.close()
        server = OrthancServer(port, run_dir, username, password, process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError, urllib.error.URLError):
                if server.get_json("/system").get("HttpPort") == port:
                    return server
            time.sleep(0.1)
        server.stop()
    raise OrthancServerError(f"Orthanc did not start after {attempts} attempts")


@contextlib.contextmanager
def orthanc_server(
    directory: Path | None = None, *, timeout: float = 30.0
) -> Iterator[OrthancServer]:
    """Run a throw-away Orthanc for the duration of the ``with`` block."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orthanc-")))
        server = start_orthanc(directory, timeout=timeout)
        stack.callback(server.stop)
        yield server
