"""A tiny DenseNet trained for one epoch on real covid3_256 films, with trust statistics (as ``train`` fits them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrtool.manifest import write_manifest

CLASSES = ("covid", "normal", "viral_pneumonia")


def film_manifest(shared: Path, out: Path, *, train: int, val: int, test: int) -> Path:
    """Per class the first ``train`` films (sorted) are train, then ``val``, then ``test``."""
    rows = []
    for cls in CLASSES:
        files = sorted((shared / "covid3_256" / cls).glob("*.png"))
        for i, f in enumerate(files[: train + val + test]):
            split = "train" if i < train else "val" if i < train + val else "test"
            rows.append({"path": str(f), "label": cls, "split": split, "group": f.stem, "source": "covid3_256"})
    return write_manifest(out, rows)


@pytest.fixture(scope="session")
def films(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return film_manifest(shared_data, tmp_path_factory.mktemp("trust_films") / "films.csv", train=12, val=8, test=6)


@pytest.fixture(scope="session")
def trusted(films: Path, tiny_arch: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``best.safetensors`` of a 1-epoch ``densenet_tiny`` run at 32 px (default settings: trust on)."""
    from cxrtool.train.config import TrainConfig
    from cxrtool.train.loop import fit

    out = tmp_path_factory.mktemp("trusted_run")
    cfg = TrainConfig(
        manifest=str(films),
        out_dir=str(out),
        init="none",
        arch=tiny_arch,
        input_size=32,
        epochs=1,
        batch_size=12,
        workers=0,
        device="cpu",
        augment=False,
    )
    assert fit(cfg).status == "completed"
    return out / "best.safetensors"


@pytest.fixture(scope="session")
def old_checkpoint(trusted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights saved as checkpoints were before trust statistics existed (no card keys, no tensors)."""
    import json

    from safetensors.torch import save_file

    from cxrtool.modelfile import CHECKPOINT_FORMAT, read_card
    from cxrtool.models.checkpoint import load_state_dict

    card = read_card(trusted).to_dict()
    del card["ood"], card["calibration"]
    path = tmp_path_factory.mktemp("old") / "old.safetensors"
    save_file(load_state_dict(trusted), str(path), metadata={"format": CHECKPOINT_FORMAT, "card": json.dumps(card)})
    return path
