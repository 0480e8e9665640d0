"""DICOMweb round trip against a real local Orthanc: ``predict STUDY --dicom-out dicomweb+…`` per film, and memory.

Starts Orthanc with its DICOMweb plugin on loopback (the tests' helpers in ``tests/dicomweb``), uploads a study of
``--instances`` re-UIDed copies of three fixture chest films, then runs ``cxrtool predict`` on the study's DICOMweb
address twice in fresh processes: once without results and once with the SR + SC STOWed back into the study.
Prints wall seconds per film for each and the largest process's max RSS (``wait4``), with the machine and load.

Usage: .venv/bin/python bench/dicomweb_roundtrip.py --checkpoint M.safetensors [--instances 200] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "dicomweb")]

from dicomweb_helpers import start_orthanc, stop_orthanc, study_of_copies  # noqa: E402

CHEST = (
    "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm",
    "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "CR-MONO1-10-chest.dcm",
)


def run(args: list[str]) -> tuple[float, float, int]:
    """(wall seconds, max RSS in MiB of the largest process, exit code) of one ``cxrtool`` run."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cxrtool", *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    from cxrtool.cpu import cpu_name

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="cxrtool-dicomweb-bench-") as tmp:
        tmp = Path(tmp)
        server, proc, log = start_orthanc(tmp / "orthanc")
        try:
            sources = [args.data / "dicom" / "chest" / name for name in CHEST]
            study, files = study_of_copies(sources, args.instances, tmp / "study", tag="cxrtool-bench")
            server.upload(files)
            address = f"{server.dicomweb}/studies/{study}"
            common = ["-m", str(args.checkpoint), "--backend", "torch"]
            for label, extra in (("predict", []), ("predict + STOW", ["--dicom-out", server.dicomweb])):
                out = tmp / f"{label.replace(' ', '')}.csv".replace("+", "_")
                wall, rss, code = run(["predict", address, "-o", str(out), *common, *extra])
                print(
                    f"{label:15s} {args.instances} instances: {wall:.1f} s, {wall / args.instances:.2f} s per film, "
                    f"max RSS {rss:.0f} MiB, exit {code}, load after {os.getloadavg()[0]:.2f}"
                )
        finally:
            stop_orthanc(proc, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
