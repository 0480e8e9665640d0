"""A real Orthanc with its DICOMweb plugin on free loopback ports, a REST helper, and fixture studies."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from net_helpers import free_port, wait_for  # noqa: F401  (re-used by the tests of this folder)

CLASSES = ["covid", "normal", "viral_pneumonia"]
ORTHANC = Path("/usr/sbin/Orthanc")
PLUGIN_NAMES = ("libOrthancDicomWeb.so",)
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def orthanc_and_plugin() -> tuple[str, Path]:
    """The Orthanc binary and DICOMweb plugin, or skip with the reason."""
    binary = shutil.which("Orthanc") or (str(ORTHANC) if ORTHANC.is_file() else None)
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian package 'orthanc'; .ci/run installs it)")
    for folder in PLUGIN_DIRS:
        for name in PLUGIN_NAMES:
            if (folder / name).is_file():
                return binary, folder / name
    pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb'; .ci/run installs it)")


class Orthanc:
    """A running test Orthanc: REST calls (basic auth when configured) and the DICOMweb root."""

    def __init__(self, port: int, auth: tuple[str, str] | None = None):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.auth = auth

    @property
    def dicomweb(self) -> str:
        return f"dicomweb+{self.base}/dicom-web"

    def call(self, method: str, path: str, body: bytes | None = None, timeout: float = 30, raw: bool = False):
        req = urllib.request.Request(self.base + path, data=body, method=method)
        if self.auth:
            req.add_header("Authorization", "Basic " + b64encode(":".join(self.auth).encode()).decode())
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
        return data if raw else json.loads(data or b"null")

    def upload(self, files) -> list[dict]:
        return [self.call("POST", "/instances", Path(f).read_bytes()) for f in files]

    def series_of(self, study_id: str) -> list[dict]:
        return self.call("GET", f"/studies/{study_id}/series")


def start_orthanc(tmp_path: Path, *, auth: tuple[str, str] | None = None, lua: str | None = None):
    """Start Orthanc + DICOMweb on free loopback ports; returns ``(Orthanc, process, log file)``."""
    binary, plugin = orthanc_and_plugin()
    tmp_path.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    storage = tmp_path / "orthanc-db"
    config = {
        "Name": "cxrtool-dicomweb-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth is not None,
        "RegisteredUsers": {auth[0]: auth[1]} if auth else {},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    if lua:
        (tmp_path / "script.lua").write_text(lua)
        config["LuaScripts"] = [str(tmp_path / "script.lua")]
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "w")
    proc = subprocess.Popen([binary, str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(http_port, auth)

    def up() -> bool:
        try:
            return bool(server.call("GET", "/system", timeout=2))
        except OSError:
            return False

    if not wait_for(up, timeout=30, step=0.2):
        stop_orthanc(proc, log)
        pytest.fail(f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
    return server, proc, log


def stop_orthanc(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    log.close()


def study_of_copies(sources, n: int, folder: Path, tag: str = "cxrtool-test") -> tuple[str, list[Path]]:
    """``n`` instances in one new study, cycled from ``sources`` with fresh deterministic UIDs: ``(study, files)``.

    The fixtures are real films, but several share SOP Instance UIDs (a PACS keeps one of them), and each
    sits in its own study; copies give one study of many distinct instances without new pixel data.
    """
    from pydicom.uid import generate_uid

    from cxrtool.dicom.read import read_dataset

    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=[tag, "study"])
    series = generate_uid(entropy_srcs=[tag, "series"])
    files = []
    for i in range(n):
        ds = read_dataset(sources[i % len(sources)])
        sop = generate_uid(entropy_srcs=[tag, "instance", str(i)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.InstanceNumber = i + 1
        ds.PatientID, ds.PatientName = tag, "Test^Patient"  # one patient: Orthanc keys a study by patient + UID
        path = folder / f"film{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study, files


class Proxy:
    """A loopback HTTP proxy in front of Orthanc: answers 503 to the first ``fail_posts`` POSTs (STOW-RS),
    and with ``token`` set demands ``Authorization: Bearer <token>`` (401 otherwise), as a cloud archive does.

    Records every request's method and path, and the headers it saw (to prove what was sent).
    """

    def __init__(self, upstream_port: int, *, fail_posts: int = 0, token: str | None = None):
        self.upstream_port, self.fail_posts, self.token = upstream_port, fail_posts, token
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.authorizations: list[str] = []
        self.server = None

    @property
    def dicomweb(self) -> str:
        return f"dicomweb+http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def start(self) -> Proxy:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, body: bytes, headers=()) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                proxy.requests.append((self.command, self.path, status))

            def _forward(self) -> None:
                body = self._body()
                auth = self.headers.get("Authorization", "")
                proxy.authorizations.append(auth)
                if proxy.token is not None and auth != f"Bearer {proxy.token}":
                    return self._answer(401, b"unauthorized")
                if self.command == "POST" and proxy.fail_posts > 0:
                    proxy.fail_posts -= 1
                    return self._answer(503, b"busy", [("Retry-After", "1")])
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "authorization", "transfer-encoding", "content-length", "connection")
                }
                conn.request(self.command, self.path, body=body if self.command == "POST" else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self._answer(resp.status, data, resp.getheaders())

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
