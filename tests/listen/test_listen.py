"""``cxrtool listen`` for real over loopback: C-ECHO, several films on one association, a corrupt
film, peers not allowed, a restart with spooled films, SIGTERM, and a destination down then back."""

from __future__ import annotations

import pydicom
import pytest
from listen_helpers import CLASSES, StoreSCP, free_port, store_all, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from cxrtool.listen import ListenConfig, Listener, parse_destination, parse_peer
from cxrtool.listen.peers import is_allowed
from cxrtool.listen.spool import Spool

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _scu(contexts, ae_title: str = "SCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for c in contexts:
        ae.add_requested_context(c)
    return ae


def _listener(ckpt, out, **kw) -> Listener:
    return Listener(ListenConfig(model=ckpt, out=out, port=kw.pop("port", free_port()), **kw)).start()


def test_peer_rules():
    assert is_allowed("ANY", "127.0.0.1", []) and is_allowed("ANY", "::1", [])
    assert not is_allowed("ANY", "10.1.2.3", [])
    allow = [parse_peer("ORTHANC@127.0.0.1")]
    assert is_allowed("ORTHANC", "127.0.0.1", allow)
    assert not is_allowed("OTHER", "127.0.0.1", allow)
    dest = parse_destination("PACS@localhost:4242")
    assert (dest.ae_title, dest.host, dest.port) == ("PACS", "localhost", 4242)
    with pytest.raises(Exception, match="AET@HOST:PORT"):
        parse_destination("PACS@localhost")


def test_echo_store_corrupt_and_results(tiny_listen_ckpt, chest_films, tmp_path):
    """C-ECHO, three films + one corrupt film over one association; results for the three, server survives."""
    corrupt = tmp_path / "corrupt.dcm"
    ds = pydicom.dcmread(chest_films[2])
    ds.PixelData = ds.PixelData[:1000]  # truncated pixel data: the header parses, the pixels do not
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(corrupt)
    listener = _listener(tiny_listen_ckpt, tmp_path / "out")
    try:
        assoc = _scu([Verification]).associate("127.0.0.1", listener.port, ae_title="CXRTOOL")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()

        statuses = store_all(listener.port, [*chest_films, corrupt])
        assert statuses == [0, 0, 0, 0]
        assert wait_for(lambda: listener.worker.processed + listener.worker.failed == 4)
        assert listener.worker.processed == 3 and listener.worker.failed == 1
        failed = sorted(p.name for p in (tmp_path / "out" / "failed").iterdir())
        assert len(failed) == 2 and failed[1] == failed[0] + ".reason.txt"  # the film and why
        reason = (tmp_path / "out" / "failed" / failed[1]).read_text()
        assert "cannot decode pixel data" in reason and ds.SOPInstanceUID not in reason

        # the server is still there after the bad film
        assoc = _scu([Verification]).associate("127.0.0.1", listener.port, ae_title="CXRTOOL")
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        listener.stop()
    results = sorted((tmp_path / "out" / "results").glob("*.dcm"))
    assert len(results) == 6  # SR + SC per good film
    srs = [pydicom.dcmread(p) for p in results if p.name.endswith(".sr.dcm")]
    sources = {pydicom.dcmread(f, force=True, stop_before_pixels=True).SOPInstanceUID for f in chest_films}
    referenced = {
        s.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        for s in srs
    }
    assert referenced == sources
    for sr in srs:  # the model is named as predict and explain name it (the tiny model has no temperature)
        texts = {str(e.value) for e in sr.iterall() if e.keyword == "TextValue"}
        assert "calibrated=no" in texts and any(t.startswith("composite=") for t in texts), texts
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("path,predicted")  # header + 4 films (one error row)
    assert sum(1 for r in rows[1:] if r.split(",")[1] in CLASSES) == 3
    assert not list(Spool(tmp_path / "out" / "spool").pending())


def test_restart_processes_spooled_films(tiny_listen_ckpt, chest_films, tmp_path):
    """Films left in the spool by a process that died are processed by the next start."""
    out = tmp_path / "out"
    spool = Spool(out / "spool")
    for f in chest_films[:2]:
        spool.put(pydicom.dcmread(f, force=True, stop_before_pixels=True).SOPInstanceUID, f.read_bytes())
    listener = _listener(tiny_listen_ckpt, out)
    try:
        assert wait_for(lambda: listener.worker.processed == 2)
    finally:
        listener.stop()
    assert len(list((out / "results").glob("*.sr.dcm"))) == 2 and not spool.pending()


def test_destination_down_then_back(tiny_listen_ckpt, chest_films, tmp_path):
    """Results wait in outbox/ while the destination is down and arrive once it is up."""
    dest_port = free_port()
    listener = _listener(
        tiny_listen_ckpt, tmp_path / "out", send_to=parse_destination(f"PACS@127.0.0.1:{dest_port}"), max_backoff=1.0
    )
    pacs = StoreSCP(dest_port)
    try:
        assert store_all(listener.port, chest_films[:2]) == [0, 0]
        assert wait_for(lambda: listener.worker.processed == 2)
        assert wait_for(lambda: listener.outbox.failures >= 1)
        assert len(listener.outbox.pending()) == 4 and not pacs.received
        pacs.start()
        assert wait_for(lambda: len(pacs.received) == 4, timeout=30)
        assert wait_for(lambda: not listener.outbox.pending())
    finally:
        listener.stop()
        pacs.stop()
    kinds = sorted(str(ds.Modality) for ds in pacs.received)
    assert kinds == ["OT", "OT", "SR", "SR"]
    assert {ds.StudyInstanceUID for ds in pacs.received} == {
        pydicom.dcmread(f, force=True, stop_before_pixels=True).StudyInstanceUID for f in chest_films[:2]
    }


def test_full_spool_refuses_instead_of_acknowledging(tiny_listen_ckpt, chest_films, tmp_path):
    listener = Listener(ListenConfig(model=tiny_listen_ckpt, out=tmp_path / "out", port=free_port(), max_queue=1))
    listener.worker.start = lambda: None  # worker never runs: the spool fills up
    listener.start()
    try:
        assert store_all(listener.port, chest_films[:2]) == [0x0000, 0xA700]
    finally:
        listener.stop()
    assert len(Spool(tmp_path / "out" / "spool").pending()) == 1


def test_own_results_sent_back_are_not_analysed(tiny_listen_ckpt, chest_films, tmp_path):
    """A PACS that routes cxrtool's SR/SC back must not start a loop: they are acknowledged and dropped
    (the SR as a non-image object with ``accept_non_image``, the SC as cxrtool's own result)."""
    first = _listener(tiny_listen_ckpt, tmp_path / "a")
    try:
        assert store_all(first.port, chest_films[1:2]) == [0]
        assert wait_for(lambda: first.worker.processed == 1)
    finally:
        first.stop()
    results = sorted((tmp_path / "a" / "results").glob("*.dcm"))
    second = _listener(tiny_listen_ckpt, tmp_path / "b", accept_non_image=True)
    try:
        assert store_all(second.port, results) == [0, 0]
        assert wait_for(lambda: not second.spool.pending())
    finally:
        second.stop()
    assert second.worker.processed == 0 and second.worker.failed == 0 and second.ignored == 1
    assert not (tmp_path / "b" / "results").exists()
