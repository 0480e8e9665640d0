"""The STOW journal beside the predictions and the grouping of films into requests (no server needed)."""

from __future__ import annotations

from cxrtool.dicomweb.results import JOURNAL_COLUMNS, StoredResult, StowJournal, _requests, journal_path

ROOT_A, ROOT_B = "dicomweb+http://127.0.0.1:1/dicom-web", "dicomweb+http://127.0.0.1:2/dicom-web"


def test_journal_is_named_after_its_predictions(tmp_path):
    assert journal_path(tmp_path / "preds.csv") == tmp_path / "preds.csv.stow.csv"
    assert journal_path(tmp_path / "preds.jsonl") != journal_path(tmp_path / "preds.csv")


def test_settled_means_stored_or_skipped_at_this_destination(tmp_path):
    journal = StowJournal(tmp_path / "p.csv.stow.csv", ROOT_A)
    journal.open(fresh=True)
    journal.record(
        [
            StoredResult("a", "stored", 2),
            StoredResult("b", "failed", 0, "SR: HTTP 503"),
            StoredResult("c", "skipped", reason="not a DICOM file: no DICOM result"),
        ]
    )
    journal.close()
    assert journal.settled() == {"a", "c"}  # a failed film is tried again
    assert StowJournal(journal.path, ROOT_B).settled() == set()  # stored elsewhere is not stored here

    journal.open(fresh=False)
    journal.record([StoredResult("b", "stored", 2)])
    journal.close()
    assert journal.settled() == {"a", "b", "c"}
    assert journal.path.read_text().splitlines()[0] == ",".join(JOURNAL_COLUMNS)

    journal.open(fresh=True)  # a new (or overwritten) output starts a new journal
    journal.close()
    assert journal.settled() == set() and journal.path.read_text().splitlines() == [",".join(JOURNAL_COLUMNS)]


def test_a_torn_last_line_counts_for_nothing_and_is_not_glued_to_the_next(tmp_path):
    path = tmp_path / "p.csv.stow.csv"
    journal = StowJournal(path, ROOT_A)
    journal.open(fresh=True)
    journal.record([StoredResult("a", "stored", 2)])
    journal.close()
    with path.open("a") as fh:
        fh.write(f"b,{ROOT_A},sto")  # the crash came in the middle of this line
    assert journal.settled() == {"a"}
    journal.open(fresh=False)
    journal.record([StoredResult("c", "stored", 2)])
    journal.close()
    assert journal.settled() == {"a", "c"}


def test_requests_never_split_a_film_and_stay_under_the_limit(tmp_path, monkeypatch):
    import cxrtool.dicomweb.results as results

    monkeypatch.setattr(results, "REQUEST_BYTES", 100)
    built = {}
    for name, sizes in {"f1": (10, 40), "f2": (10, 30), "f3": (10, 5), "big": (10, 300), "f4": (20, 20)}.items():
        files = []
        for kind, size in zip(("sr", "sc"), sizes):
            (tmp_path / f"{name}.{kind}.dcm").write_bytes(b"x" * size)
            files.append(tmp_path / f"{name}.{kind}.dcm")
        built[name] = files
    assert list(_requests(built)) == [["f1", "f2"], ["f3"], ["big"], ["f4"]]
    assert list(_requests({})) == []


def test_resuming_an_output_never_started_stores_nothing(tmp_path, tiny_web_ckpt):
    from cxrtool.dicomweb import parse_dicomweb_url
    from cxrtool.dicomweb.destination import StowDestination
    from cxrtool.dicomweb.results import store_results
    from cxrtool.modelfile.loaded import open_model

    destination = StowDestination(parse_dicomweb_url(ROOT_A))
    assert store_results(tmp_path / "never.csv", destination, model=open_model(tiny_web_ckpt)) == []
    assert StowJournal(journal_path(tmp_path / "never.csv"), ROOT_A).settled() == set()
