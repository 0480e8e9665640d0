"""Synthetic films for the dataset-preparation tests: smooth random images, cheap to make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nih_synth import V2020_HEADER, nih_row
from PIL import Image


def film(seed: int, size: int = 96) -> Image.Image:
    """A smooth random grey image: different seeds give unrelated perceptual hashes."""
    rng = np.random.default_rng(seed)
    low = (rng.random((16, 16)) * 255).astype(np.uint8)
    return Image.fromarray(low, mode="L").resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture()
def make_film():
    return film


@pytest.fixture()
def class_tree(tmp_path: Path) -> Path:
    """ROOT/<class>/ with 12 distinct films per class, one re-encoded near-duplicate pair per
    class, one unreadable file and a file directly in ROOT."""
    root = tmp_path / "ds"
    seed = 0
    for cls in ("covid", "normal", "viral"):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(12):
            film(seed).save(d / f"img{i:02d}.png")
            seed += 1
        # the same film, downsized and saved as JPEG under another name: a near-duplicate
        film(seed - 1).resize((70, 64)).save(d / "copy.jpg", quality=85)
    (root / "normal" / "broken.png").write_bytes(b"not an image at all")
    (root / "README.txt").write_text("class folders below\n")
    return root


@pytest.fixture()
def small_nih(tmp_path: Path) -> Path:
    """8 patients, 20 images; patients 7-8 are the official test set; 2 images not on disk."""
    rows = []
    labels = ["No Finding", "Pneumonia", "Effusion|Atelectasis", "Pneumonia|Effusion", "No Finding"]
    k = 0
    for pid in range(1, 9):
        for f in range(3 if pid <= 4 else 2):
            rows.append(
                nih_row(f"{pid:08d}_{f:03d}.png", labels[k % len(labels)], f, pid, "AP" if k % 4 == 3 else "PA")
            )
            k += 1
    d = tmp_path / "nih"
    d.mkdir()
    (d / "Data_Entry.csv").write_text(V2020_HEADER + "\n" + "\n".join(rows) + "\n")
    names = [r.split(",")[0] for r in rows]
    test = [n for n in names if n.startswith(("00000007", "00000008"))]
    (d / "test_list.txt").write_text("\n".join(test))
    (d / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test))
    img = d / "imgs" / "sub"
    img.mkdir(parents=True)
    for n in names[2:]:
        (img / n).write_bytes(b"png")  # existence is all prep nih checks
    return d
