"""``cxrtool listen`` as a DICOM peer sees it: real A-ASSOCIATE-RJ with the reason, the association limit,
non-image objects refused in negotiation (or accepted and ignored), no header value in the log, and TLS."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from listen_helpers import free_port, store_all, wait_for
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage, ComputedRadiographyImageStorage, Verification

from cxrtool.errors import CxrError
from cxrtool.listen import ListenConfig, Listener, TlsFiles, parse_peer
from cxrtool.listen.scp import server_ssl_context

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State Storage


def _scu(contexts, ae_title: str = "SCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for c in contexts:
        ae.add_requested_context(c)
    return ae


def _listener(ckpt, out, **kw) -> Listener:
    return Listener(ListenConfig(model=ckpt, out=out, port=free_port(), **kw)).start()


def _rejection(assoc) -> tuple[int, int, int]:
    assert assoc.is_rejected and not assoc.is_aborted and not assoc.is_established
    p = assoc.acceptor.primitive
    return p.result, p.result_source, p.diagnostic


def test_refusals_are_real_rejects_with_the_reason(tiny_listen_ckpt, tmp_path):
    listener = _listener(tiny_listen_ckpt, tmp_path / "out", allow=(parse_peer("ORTHANC@127.0.0.1"),))
    try:
        port = listener.port
        # unknown calling AE title: rejected-permanent, service-user, "calling AE title not recognised"
        stranger = _scu([Verification], "STRANGER").associate("127.0.0.1", port, ae_title="CXRTOOL")
        assert _rejection(stranger) == (1, 1, 3)
        # a known title from another host: the same reject (sent by our handler, not an abort)
        other_host = _scu([Verification], "ORTHANC").associate(
            "127.0.0.1", port, ae_title="CXRTOOL", bind_address=("127.0.0.2", 0)
        )
        assert _rejection(other_host) == (1, 1, 3)
        # the called AE title is not ours: "called AE title not recognised"
        assert _rejection(_scu([Verification], "ORTHANC").associate("127.0.0.1", port, ae_title="OTHER")) == (1, 1, 7)
        assoc = _scu([Verification], "ORTHANC").associate("127.0.0.1", port, ae_title="CXRTOOL")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        listener.stop()


def test_called_ae_check_can_be_switched_off(tiny_listen_ckpt, tmp_path):
    listener = _listener(tiny_listen_ckpt, tmp_path / "out", check_called_aet=False)
    try:
        assoc = _scu([Verification]).associate("127.0.0.1", listener.port, ae_title="ANYTHING")
        assert assoc.is_established
        assoc.release()
    finally:
        listener.stop()


def test_association_limit(tiny_listen_ckpt, tmp_path):
    listener = _listener(tiny_listen_ckpt, tmp_path / "out", max_associations=1)
    try:
        first = _scu([Verification]).associate("127.0.0.1", listener.port, ae_title="CXRTOOL")
        assert first.is_established
        # rejected-transient, service-provider (presentation), local limit exceeded
        assert _rejection(_scu([Verification]).associate("127.0.0.1", listener.port, ae_title="CXRTOOL")) == (2, 3, 2)
        first.release()
        assert wait_for(lambda: not [a for a in listener._server.active_associations if a.is_alive()], timeout=10)
        again = _scu([Verification]).associate("127.0.0.1", listener.port, ae_title="CXRTOOL")
        assert again.is_established
        again.release()
    finally:
        listener.stop()


def _sr_object() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ComprehensiveSRStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_non_image_objects_are_refused_in_negotiation(tiny_listen_ckpt, tmp_path):
    listener = _listener(tiny_listen_ckpt, tmp_path / "out")
    try:
        scu = _scu([ComputedRadiographyImageStorage, ComprehensiveSRStorage, GSPS])
        assoc = scu.associate("127.0.0.1", listener.port, ae_title="CXRTOOL")
        assert assoc.is_established
        assert {c.abstract_syntax for c in assoc.accepted_contexts} == {ComputedRadiographyImageStorage}
        assoc.release()
    finally:
        listener.stop()


def test_non_image_objects_accepted_and_ignored_on_request(tiny_listen_ckpt, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    listener = _listener(tiny_listen_ckpt, out, accept_non_image=True)
    try:
        sr = _sr_object()
        assert store_all(listener.port, [sr]) == [0]
        assert wait_for(lambda: listener.ignored == 1, timeout=10)
    finally:
        listener.stop()
    assert not listener.spool.pending() and not (out / "failed").exists() and listener.worker.failed == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("cxrtool")]
    assert "not an image the model reads" in caplog.text and sr.SOPInstanceUID not in caplog.text


LONG_UID_CLIENT = """
import sys, pydicom
from pynetdicom import AE, _config
_config.VALIDATORS["UI"] = lambda value: (True, "")  # a sender that does not check UID lengths
ds = pydicom.dcmread(sys.argv[2])
ds.SOPInstanceUID = sys.argv[3]
ae = AE(ae_title="SCU")
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="CXRTOOL")
print("established" if assoc.is_established else "refused")
if assoc.is_established:
    assoc.send_c_store(ds)
    assoc.release()
"""


def test_no_header_value_in_the_log(tiny_listen_ckpt, chest_films, tmp_path, caplog):
    """At INFO (the CLI's level): films, a non-image object and a 74-character UID; no UID, no name, no traceback."""
    caplog.set_level(logging.INFO)
    headers = [pydicom.dcmread(f, force=True, stop_before_pixels=True) for f in chest_films]
    long_uid = "1.2." + "3" * 70
    listener = _listener(tiny_listen_ckpt, tmp_path / "out", accept_non_image=True)
    try:
        sr = _sr_object()
        assert store_all(listener.port, [*chest_films, sr]) == [0] * (len(chest_films) + 1)
        assert wait_for(lambda: listener.worker.processed == len(chest_films), timeout=60)
        client = subprocess.run(
            [sys.executable, "-c", LONG_UID_CLIENT, str(listener.port), str(chest_films[2]), long_uid],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "established" in client.stdout, client.stderr[-2000:]
    finally:
        listener.stop()
    text = caplog.text
    secrets = [long_uid, sr.SOPInstanceUID] + [str(h.SOPInstanceUID) for h in headers]
    secrets += [str(h.StudyInstanceUID) for h in headers]
    secrets += [str(h.PatientName) for h in headers if str(h.get("PatientName", ""))]
    assert [s for s in secrets if s in text] == []
    assert "Traceback" not in text and all(r.exc_info is None for r in caplog.records)
    assert "processing" in text  # the log does say what happened, by hash


# ------------------------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=cxrtool test CA", cwd=d
    )
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        ext = ["-extfile", "server.ext"] if name == "server" else []
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *ext,
            cwd=d,
        )
    return d


def _client_tls(pki: Path, *, with_cert: bool) -> tuple[ssl.SSLContext, str]:
    context = ssl.create_default_context(cafile=pki / "ca.pem")
    if with_cert:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    return context, "localhost"


def test_tls_with_client_certificates(tiny_listen_ckpt, chest_films, pki, tmp_path):
    tls = TlsFiles(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    listener = _listener(tiny_listen_ckpt, tmp_path / "out", tls=tls)
    try:
        assert store_all(listener.port, chest_films[2:], tls_args=_client_tls(pki, with_cert=True)) == [0]
        assert wait_for(lambda: listener.worker.processed == 1, timeout=30)
        plain = _scu([Verification]).associate("127.0.0.1", listener.port, ae_title="CXRTOOL")
        assert not plain.is_established  # no TLS: no association
        anonymous = _scu([Verification]).associate(
            "127.0.0.1", listener.port, ae_title="CXRTOOL", tls_args=_client_tls(pki, with_cert=False)
        )
        assert not anonymous.is_established  # no client certificate: refused in the handshake
    finally:
        listener.stop()


def test_tls_without_ca_accepts_any_client(tiny_listen_ckpt, pki, tmp_path):
    listener = _listener(tiny_listen_ckpt, tmp_path / "out", tls=TlsFiles(pki / "server.pem", pki / "server.key"))
    try:
        assoc = _scu([Verification]).associate(
            "127.0.0.1", listener.port, ae_title="CXRTOOL", tls_args=_client_tls(pki, with_cert=False)
        )
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        listener.stop()


def test_tls_bad_files_are_usage_errors(pki, tmp_path):
    with pytest.raises(CxrError, match="server.key"):
        server_ssl_context(TlsFiles(pki / "server.pem", tmp_path / "server.key"))
    with pytest.raises(CxrError, match="client.key"):
        server_ssl_context(TlsFiles(pki / "server.pem", pki / "client.key"))  # a key that is not the certificate's
    with pytest.raises(CxrError, match="ca.pem"):
        server_ssl_context(TlsFiles(pki / "server.pem", pki / "server.key", tmp_path / "ca.pem"))
