"""A tiny real checkpoint, a listener on a free loopback port, and a Storage SCP standing in for a PACS."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

CLASSES = ["covid", "normal", "viral_pneumonia"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, step: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (every loop in these tests is bounded)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@pytest.fixture(scope="session")
def tiny_listen_ckpt(tmp_path_factory, tiny_arch) -> Path:
    """``densenet_tiny`` with seeded random weights at 32 px: the real code path, milliseconds per film."""
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(tiny_arch, num_classes=len(CLASSES))
    card = ModelCard(arch=tiny_arch, task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=32))
    return save_checkpoint(tmp_path_factory.mktemp("listen_model") / "tiny.safetensors", model, card)


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


@pytest.fixture()
def chest_films(shared_data) -> list[Path]:
    """Small real chest films: ACR-NEMA CR (no meta), JPEG baseline CR, implicit-VR DX."""
    chest = shared_data / "dicom" / "chest"
    return [chest / "CR-MONO1-10-chest.dcm", chest / "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm", chest / "udacity_nih_test1.dcm"]
