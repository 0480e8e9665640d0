"""Helpers for the listen tests: free ports, bounded waiting, a stand-in PACS and a C-STORE client."""

from __future__ import annotations

import threading

from net_helpers import free_port, wait_for  # noqa: F401  (re-used by the tests of this folder)

CLASSES = ["covid", "normal", "viral_pneumonia"]


class StoreSCP:
    """A minimal Storage SCP (pynetdicom) that keeps what it receives: the stand-in destination."""

    def __init__(self, port: int, ae_title: str = "PACS"):
        self.port, self.ae_title = port, ae_title
        self.received: list = []
        self.server = None

    def start(self) -> StoreSCP:
        from pynetdicom import AE, StoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        lock = threading.Lock()

        def on_store(event):
            with lock:
                ds = event.dataset
                ds.file_meta = event.file_meta
                self.received.append(ds)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def store_all(port: int, films, ae_title: str = "SCU", tls_args=None) -> list[int]:
    """C-STORE ``films`` (paths or datasets) to ``port`` over one association; the status of each."""
    from pydicom import Dataset
    from pynetdicom import AE

    from cxrtool.dicom.read import read_dataset

    datasets = [
        f if isinstance(f, Dataset) else read_dataset(f) for f in films
    ]  # meta-less ACR-NEMA films get their syntax
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRTOOL", tls_args=tls_args)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()
