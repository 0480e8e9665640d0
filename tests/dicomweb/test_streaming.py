"""DICOMweb instances go through predict's own pipeline: streamed, sharded and resumed by SOP UID, header-gated."""

from __future__ import annotations

import csv

import pydicom
import pytest
from dicomweb_helpers import Proxy, study_of_copies

from cxrtool.modelfile.loaded import open_model

pytestmark = [pytest.mark.pacs, pytest.mark.filterwarnings("ignore::UserWarning")]


def _source(address: str, page_size: int = 100):
    from cxrtool.dicomweb import parse_dicomweb_url
    from cxrtool.dicomweb.source import DicomwebSource

    return DicomwebSource(parse_dicomweb_url(address), page_size=page_size)


def _predict(source, ckpt, out, **options):
    from cxrtool.infer.predict import PredictOptions, predict_to_file

    opts = PredictOptions(**{"batch_size": 1, "workers": 0, **options})
    return lambda on_rows=None: predict_to_file(
        [source], ckpt, out, opts, backend="torch", on_rows=on_rows, decode=source.decoder, header=source.header_verdict
    )


def test_first_row_is_written_before_the_last_instance_is_fetched(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    study, films = study_of_copies(chest_films, 8, tmp_path / "films")
    orthanc.upload(films)
    proxy = Proxy(orthanc.port).start()
    out = tmp_path / "p.csv"
    seen: list[tuple[int, int]] = []  # (rows in the file, instances fetched so far) at each written batch

    def fetched() -> int:
        return sum(method == "GET" and "/instances/" in path for method, path, _ in proxy.requests)

    def on_rows(rows) -> None:
        seen.append((len(out.read_text().splitlines()) - 1, fetched()))

    try:
        summary = _predict(_source(f"{proxy.dicomweb}/studies/{study}", page_size=3), tiny_web_ckpt, out)(on_rows)
    finally:
        proxy.stop()
    assert summary.predicted == 8 and summary.failed == 0
    assert fetched() == 8  # each instance fetched once
    rows_at_first, fetched_at_first = seen[0]
    assert rows_at_first == 1 and fetched_at_first < 8  # the first row was on disk before the last fetch
    assert max(f - r for r, f in seen) <= 3  # never more than the pipeline's bound (2 * batch + workers) ahead
    qido = [p for m, p, _ in proxy.requests if m == "GET" and p.split("?")[0].endswith("/instances")]
    assert len(qido) == 3 and any("offset=3" in p for p in qido)  # the listing came in pages of 3


def test_shard_and_resume_go_by_sop_instance_uid(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    from cxrtool.infer.jobs import shard_of

    study, films = study_of_copies(chest_films, 6, tmp_path / "films")
    orthanc.upload(films)
    address = f"{orthanc.dicomweb}/studies/{study}"
    uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in films}
    out = tmp_path / "p.csv"
    parts = []
    for i in (1, 2):
        shard_out = tmp_path / f"shard{i}.csv"
        _predict(_source(address), tiny_web_ckpt, shard_out, shard=(i, 2))()
        rows = [r["path"].rsplit("/", 1)[1] for r in csv.DictReader(shard_out.open())]
        assert all(shard_of(u, 2) == i for u in rows)
        parts.append(set(rows))
    assert parts[0] | parts[1] == uid and not parts[0] & parts[1]

    _predict(_source(address), tiny_web_ckpt, out, shard=(1, 2))()
    summary = _predict(_source(address), tiny_web_ckpt, out, resume=True)()
    assert summary.skipped_resume == len(parts[0]) and summary.predicted == len(parts[1])
    assert {r["path"].rsplit("/", 1)[1] for r in csv.DictReader(out.open())} == uid


def test_header_gate_reads_the_qido_attributes(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    """A film whose header says it is a hand is flagged, as the same file would be on disk."""
    study, films = study_of_copies(chest_films[:1], 2, tmp_path / "films")
    ds = pydicom.dcmread(films[1])
    ds.BodyPartExamined = "HAND"
    ds.save_as(films[1])
    orthanc.upload(films)
    out = tmp_path / "p.csv"
    _predict(_source(f"{orthanc.dicomweb}/studies/{study}"), tiny_web_ckpt, out)()
    flags = {r["path"].rsplit("/", 1)[1]: r["flag"] for r in csv.DictReader(out.open())}
    hand = str(ds.SOPInstanceUID)
    assert flags[hand].startswith("header:") and "HAND" in flags[hand]
    assert [f for u, f in flags.items() if u != hand] == ["ok"]


def test_non_image_series_and_cxrtool_results_are_not_inputs(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    """After results were stored into the study, a second run reads only the films (no SR, no heatmap SC)."""
    from cxrtool.dicomweb import parse_dicomweb_url
    from cxrtool.dicomweb.destination import StowDestination
    from cxrtool.dicomweb.results import store_results

    study, films = study_of_copies(chest_films, 2, tmp_path / "films")
    orthanc.upload(films)
    address = f"{orthanc.dicomweb}/studies/{study}"
    _predict(_source(address), tiny_web_ckpt, tmp_path / "a.csv")()
    assert [
        r.status
        for r in store_results(
            tmp_path / "a.csv", StowDestination(parse_dicomweb_url(orthanc.dicomweb)), model=open_model(tiny_web_ckpt)
        )
    ] == ["stored", "stored"]
    source = _source(address)
    summary = _predict(source, tiny_web_ckpt, tmp_path / "b.csv")()
    assert summary.predicted == 2 and dict(source.skipped_series) == {"SR": 1, "OT": 1}
