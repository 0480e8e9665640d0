"""Fuzzing the shared loader and the DICOM pipeline with byte-level mutations of real files.

Property: whatever the bytes, :func:`cxrtool.images.load_image` returns a finite grey float32
image in [0, 1] or raises :class:`~cxrtool.errors.ImageLoadError`, and ``prep dicom``'s
:func:`~cxrtool.dicom.prepare.prepare_file` returns rows whose failures all have a known reason
(never its "unexpected error" catch-all), each within bounded time and traced memory.

The default suite runs a few dozen examples per format (seconds); ``-m slow`` runs a thousand.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hardening.corpus import dicom_bytes, jpeg_bytes, png_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrtool.dicom.prepare import FAILED, PrepOptions, prepare_file
from cxrtool.errors import ImageLoadError
from cxrtool.images import load_image

LIMIT = 2_000_000  # pixel limit while fuzzing: a mutated header can ask for any size, the policy refuses it
MAX_SECONDS = 20.0  # per file, generous for a shared 2-core machine; a hang or a bomb takes far longer
MAX_TRACED_MB = 256  # Python + numpy allocations while loading one mutated file (tracemalloc)

SEEDS = {
    "png": png_bytes(64, 80, seed=1),
    "jpeg": jpeg_bytes(64, 80, seed=2),
    "dicom": dicom_bytes(48, 64, bits=12, WindowCenter=2048, WindowWidth=3000),
}


def _real_seeds(root: Path) -> dict[str, bytes]:
    """Small real chest DICOMs: JPEG baseline (encapsulated) and the meta-less ACR-NEMA file."""
    chest = root / "dicom" / "chest"
    return {
        "dicom-jpeg": (chest / "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm").read_bytes(),
        "dicom-acr-nema": (chest / "CR-MONO1-10-chest.dcm").read_bytes(),
    }


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` after 1-4 random edits: bit flips, overwritten runs, insertions, deletions, a cut,
    and "interesting" values (0, 0xFF.., lengths) written into the header region where parsers look."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        head = min(len(data), 1024)
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "cut", "magic"]))
        at = draw(st.integers(0, max(0, (head if draw(st.booleans()) else len(data)) - 1)))
        if op == "flip":
            if data:
                data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "cut":
            del data[at:]
        else:
            value = draw(
                st.sampled_from(
                    [b"\x00\x00", b"\xff\xff", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"\x01\x00", b"\xff\x7f"]
                )
            )
            data[at : at + len(value)] = value
    return bytes(data)


def _check_load(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory(prefix="cxrtool-fuzz-") as tmp:
        path = Path(tmp) / f"mutant{suffix}"
        path.write_bytes(data)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            img = load_image(path, limit=LIMIT)
        except ImageLoadError as exc:
            assert exc.reason and "\n" not in exc.reason
            img = None
        finally:
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        assert elapsed < MAX_SECONDS, f"{elapsed:.1f} s for one file"
        assert peak < MAX_TRACED_MB, f"{peak:.0f} MB traced for one file"
        if img is not None:
            assert img.dtype == np.float32 and img.ndim == 2 and img.size > 0
            assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0


def _check_prep(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="cxrtool-fuzz-") as tmp:
        src, out = Path(tmp) / "mutant.dcm", Path(tmp) / "out"
        src.write_bytes(data)
        rows = prepare_file(
            src, out / "mutant.png", options=PrepOptions(keep_phi=True), input_name="mutant.dcm", out_root=out
        )
        assert rows and all(r["status"] in ("ok", "failed", "skipped") for r in rows)
        for r in rows:
            if r["status"] == FAILED:
                assert r["error"] and not r["error"].startswith("unexpected error"), r["error"]


def _fuzz(kind: str, seed: bytes, n: int, derandomize: bool):
    suffix = {"png": ".png", "jpeg": ".jpg"}.get(kind, ".dcm")

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=mutated(seed))
    def run(data: bytes) -> None:
        _check_load(data, suffix)
        if kind.startswith("dicom"):
            _check_prep(data)

    run()


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_mutated_files_only_raise_load_errors(kind: str) -> None:
    _fuzz(kind, SEEDS[kind], 30, derandomize=True)


def test_mutated_real_dicoms_only_raise_load_errors(shared_data: Path) -> None:
    for kind, seed in _real_seeds(shared_data).items():
        _fuzz(kind, seed, 12, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SEEDS) + ["dicom-jpeg", "dicom-acr-nema"])
def test_mutated_files_long_run(kind: str, shared_data: Path) -> None:
    seeds = {**SEEDS, **_real_seeds(shared_data)}
    _fuzz(kind, seeds[kind], 1000, derandomize=False)


def test_seeds_load_unmutated() -> None:
    """The seeds themselves are valid images, so the mutations start from real decoder paths."""
    for kind, seed in SEEDS.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"seed.{kind}"
            path.write_bytes(seed)
            assert load_image(path).shape[0] > 1
