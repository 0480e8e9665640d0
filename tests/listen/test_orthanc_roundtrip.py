"""A real PACS round trip: Orthanc (started here on free loopback ports with a temp storage folder)
C-STOREs a chest film to cxrtool's listener, which sends SR + SC back into the same study."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from listen_helpers import free_port, wait_for

from cxrtool.listen import ListenConfig, Listener, parse_destination, parse_peer

ORTHANC = Path("/usr/sbin/Orthanc")
pytestmark = [pytest.mark.pacs, pytest.mark.filterwarnings("ignore::UserWarning")]


def _orthanc_binary() -> str:
    found = shutil.which("Orthanc") or (str(ORTHANC) if ORTHANC.is_file() else None)
    if found is None:
        pytest.skip("Orthanc is not installed (Debian package 'orthanc'; .ci/run installs it)")
    return found


class Rest:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: bytes | None = None, timeout: float = 30):
        req = urllib.request.Request(self.base + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")


@pytest.fixture()
def orthanc(tmp_path):
    binary = _orthanc_binary()
    http_port, dicom_port, listen_port = free_port(), free_port(), free_port()
    storage = tmp_path / "orthanc-db"
    config = {
        "Name": "cxrtool-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"cxrtool": ["CXRTOOL", "127.0.0.1", listen_port]},
        "Plugins": [],
    }
    cfg = tmp_path / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "w")
    proc = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    rest = Rest(http_port)

    def up() -> bool:
        try:
            return bool(rest.call("GET", "/system", timeout=2))
        except OSError:
            return False

    try:
        if not wait_for(up, timeout=30, step=0.2):
            pytest.fail(f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
        yield rest, dicom_port, listen_port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_orthanc_round_trip(orthanc, tiny_listen_ckpt, shared_data, tmp_path):
    rest, dicom_port, listen_port = orthanc
    film = shared_data / "dicom" / "chest" / "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm"
    uploaded = rest.call("POST", "/instances", film.read_bytes())
    study = uploaded["ParentStudy"]

    listener = Listener(
        ListenConfig(
            model=tiny_listen_ckpt,
            out=tmp_path / "cxr",
            port=listen_port,
            allow=(parse_peer("ORTHANC@127.0.0.1"),),
            send_to=parse_destination(f"ORTHANC@127.0.0.1:{dicom_port}"),
        )
    ).start()
    try:
        start = time.perf_counter()
        rest.call(
            "POST",
            "/modalities/cxrtool/store",
            json.dumps({"Resources": [uploaded["ID"]], "Synchronous": True}).encode(),
        )

        def modalities() -> list[str]:
            return sorted(s["MainDicomTags"].get("Modality", "") for s in rest.call("GET", f"/studies/{study}/series"))

        assert wait_for(lambda: modalities() == ["CR", "OT", "SR"], timeout=60, step=0.2), modalities()
        seconds = time.perf_counter() - start
    finally:
        listener.stop()
    print(f"\nOrthanc round trip: {seconds:.2f} s per film")  # shown with -s; recorded in docs/dicom_results.md

    series = rest.call("GET", f"/studies/{study}/series")
    described = {s["MainDicomTags"]["Modality"]: s["MainDicomTags"].get("SeriesDescription", "") for s in series}
    assert "NOT FOR CLINICAL USE" in described["SR"] and "NOT FOR CLINICAL USE" in described["OT"]
    patient = rest.call("GET", f"/studies/{study}/patient")
    assert patient["ID"] == uploaded["ParentPatient"]
    assert len(rest.call("GET", "/patients")) == 1  # nothing landed in a new patient or study
    assert len(rest.call("GET", "/studies")) == 1
