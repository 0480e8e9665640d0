"""The demo: prep dicom, prep nih, twice transfer, evaluate, export, predict, explain, report.

Stage 2 cannot use COVID-19 films (none with a licence that allows shipping them), so it is a
3-class task built from ChestX-ray14 labels: ``normal`` (No Finding), ``effusion`` (Effusion)
and ``opacity`` (Pneumonia, Consolidation or Infiltration), keeping stage 1's Effusion and
Pneumonia output neurons as the paper keeps its Pneumonia neuron for viral pneumonia.  On 64 px
thumbnails and a few epochs this shows how the tool is used; the model diagnoses nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtool.errors import CxrError
from cxrtool.fsutil import NAME_ERRORS

SAMPLE = Path(__file__).resolve().parent / "sample"
ATTRIBUTION = Path(__file__).resolve().parent / "ATTRIBUTION.md"
#: Inside a training epoch the demo notes progress at most this often (an epoch takes a minute on 2 cores).
STEP_NOTE_S = 15.0
CAVEAT = (
    "cxrtool demo: this demonstrates the workflow on 64-pixel ChestX-ray14 thumbnails with a model trained for a few "
    "epochs on a few hundred films. It is not a diagnostic model; its predictions mean nothing clinically."
)
STAGE2_MAP = "normal=No Finding,effusion=Effusion,opacity=Pneumonia|Consolidation|Infiltration"
KEEP_MAP = {"effusion": "Effusion", "opacity": "Pneumonia"}

Step = Callable[[int, int, str, str], None]  # (number, total, title, what was done / written)


@dataclass(frozen=True)
class DemoSize:
    """How big the demo runs; the defaults are what ``cxrtool demo`` does (the test suite runs a smaller one)."""

    arch: str = "densenet121"
    input_size: int = 64
    stage1_epochs: int = 3
    stage2_epochs: int = 4
    batch_size: int = 32
    scan_films: int = 24  # test-split films copied into scans/ for predict, explain and the report
    bootstrap: int = 200


@dataclass
class DemoResult:
    out: Path
    report: Path
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)


MARKER = "DEMO.txt"
_LISTING = "Files written by `cxrtool demo` (it replaces this folder only while it holds exactly these):"


def _listing(out: Path) -> list[str]:
    """Every file and link below ``out`` except the marker, relative, sorted (links are not followed)."""
    found = []
    for root, dirs, files in os.walk(out):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (Path(root) / name).relative_to(out).as_posix()
            if rel != MARKER:
                found.append(rel)
    return sorted(found)


def write_marker(out: Path) -> None:
    """``DEMO.txt``: the caveat and the listing of what the demo wrote, so a later demo recognises its own folder."""
    body = "\n".join([CAVEAT, "", _LISTING, *_listing(out)])
    (out / MARKER).write_text(body + "\n", encoding="utf-8", errors=NAME_ERRORS)


def _own_demo_folder(out: Path) -> bool:
    """True when ``out`` holds a marker whose listing is exactly what is there (an earlier, untouched demo)."""
    try:
        text = (out / MARKER).read_text(encoding="utf-8", errors=NAME_ERRORS)
    except OSError:
        return False
    _, sep, listed = text.partition(_LISTING + "\n")
    return bool(sep) and listed.splitlines() == _listing(out)


def prepare_out(out: Path) -> None:
    """Refuse, before any work, an output the demo may not write or may not empty; then empty an earlier demo.

    Only a folder this demo made is emptied (its contents, never the folder itself, which may be a
    mount point); a symbolic link, a folder with other files, or a marker that does not list what is
    there is refused untouched.
    """
    from cxrtool.fsutil import check_writable_output

    if out.is_symlink():
        raise CxrError(f"{out}: is a symbolic link; give the demo a real folder (it would empty the link's target)")
    check_writable_output(out, "dir")
    if not out.exists() or not any(out.iterdir()):
        return
    if not _own_demo_folder(out):
        raise CxrError(
            f"{out}: exists and is not an untouched earlier demo folder (its {MARKER} does not list exactly "
            "what is there); choose an empty or new folder"
        )
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def run_demo(
    out: str | Path,
    *,
    size: DemoSize = DemoSize(),
    on_step: Step | None = None,
    on_note: Callable[[str], None] | None = None,
    sample: Path = SAMPLE,
) -> DemoResult:
    """Run every step into ``out`` (an earlier demo there is replaced); see the module docstring.

    ``on_step`` hears of each finished step (number, total, title, what it did and wrote);
    ``on_note`` gets progress lines inside the long steps (one per training epoch).
    """
    from cxrtool.dicom.prepare import PrepOptions, prepare_folder
    from cxrtool.explain.attribution import ExplainOptions, explain_files, plan_inputs
    from cxrtool.export.pipeline import export_model
    from cxrtool.infer.predict import PredictOptions, predict_to_file
    from cxrtool.manifest import read_manifest
    from cxrtool.modelfile.loaded import open_model
    from cxrtool.models.checkpoint import model_from_loaded
    from cxrtool.prep.nih import NihOptions, prep_nih
    from cxrtool.privacy import load_or_create_salt
    from cxrtool.report.html import build_report
    from cxrtool.train.config import TrainConfig
    from cxrtool.train.evaluate import evaluate
    from cxrtool.train.loop import fit
    from cxrtool.trust import load_trust

    t0 = time.perf_counter()
    out = Path(out)
    prepare_out(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ATTRIBUTION, out / "ATTRIBUTION.md")
    salt = load_or_create_salt(out / ".salt")
    write_marker(out)
    nih = sample / "nih"
    total = 10
    told = on_step or (lambda *_: None)

    def step(number: int, total: int, title: str, detail: str) -> None:
        write_marker(out)  # after every step: an interrupted demo is still recognised as one (up to its last step)
        told(number, total, title, detail)

    note = on_note or (lambda _: None)

    def epochs(stage: str) -> Callable[[Any], None]:
        from cxrtool.train.events import EpochEnded, StepDone

        last = [time.perf_counter()]

        def on_event(event: Any) -> None:
            if (
                isinstance(event, StepDone) and time.perf_counter() - last[0] >= STEP_NOTE_S
            ):  # a sign of life inside an epoch
                last[0] = time.perf_counter()
                note(
                    f"{stage} epoch {event.epoch}: step {event.step}/{event.steps}, loss {event.loss:.3f}, "
                    f"{event.images_per_s:.0f} img/s"
                )
            elif isinstance(event, EpochEnded):
                last[0] = time.perf_counter()
                metrics = {k: event.val_metrics.get(k) for k in ("macro_f1", "auc_macro")}
                vals = "  ".join(f"val {k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
                note(
                    f"{stage} epoch {event.epoch}: train loss {event.train_loss:.3f}  "
                    f"val loss {event.val_loss:.3f}  {vals}  {event.images_per_s:.0f} img/s"
                )

        return on_event

    res = DemoResult(out, out / "report.html", 0.0)

    dicom = prepare_folder(sample / "dicom", out / "dicom_png", options=PrepOptions(salt=salt, size=512))
    res.files["dicom"] = dicom.manifest
    step(
        1,
        total,
        "prep dicom",
        f"{len(dicom.rows) - len(dicom.failed)} of {len(dicom.rows)} public test DICOMs rendered to PNG "
        f"as a viewer shows them -> {out / 'dicom_png'}",
    )

    images = (nih / "images",)
    lists = {"train_val_list": nih / "train_val_list.txt", "test_list": nih / "test_list.txt"}
    stage1_csv, stage2_csv = out / "nih14.csv", out / "nih3.csv"
    r1 = prep_nih(
        nih / "Data_Entry_2017_v2020.csv", stage1_csv, NihOptions(images=images, drop_missing=True, **lists), salt=salt
    )
    r2 = prep_nih(
        nih / "Data_Entry_2017_v2020.csv",
        stage2_csv,
        NihOptions(images=images, drop_missing=True, label_map=STAGE2_MAP, **lists),
        salt=salt,
    )
    step(
        2,
        total,
        "prep nih",
        f"{r1.rows_written} ChestX-ray14 thumbnails -> 14-finding manifest {stage1_csv}; "
        f"{r2.rows_written} of them relabelled normal / effusion / opacity -> {stage2_csv} "
        "(official test split, patient-wise val)",
    )

    common = {
        "arch": size.arch,
        "input_size": size.input_size,
        "batch_size": size.batch_size,
        "device": "cpu",
        "workers": 0,
        "lr": 1e-3,
    }

    def trained(result: Any, stage: str) -> Path:
        if result.status == "interrupted":  # Ctrl-C / SIGTERM: fit saved its state; the demo stops here
            raise CxrError(f"interrupted during {stage} training; run the demo again to start over")
        return result.out_dir / "best.safetensors"

    s1 = fit(
        TrainConfig(
            manifest=str(stage1_csv),
            out_dir=str(out / "runs" / "stage1"),
            init="none",
            epochs=size.stage1_epochs,
            **common,
        ),
        on_event=epochs("stage 1"),
    )
    stage1 = trained(s1, "stage-1")
    res.numbers["stage1_val_auc_macro"] = s1.best_value
    step(
        3,
        total,
        "train stage 1",
        f"{size.arch} from scratch, multilabel (14 findings), {s1.epochs_done} epochs: "
        f"best val {s1.monitor} {s1.best_value:.3f} -> {stage1}",
    )

    s2 = fit(
        TrainConfig(
            manifest=str(stage2_csv),
            out_dir=str(out / "runs" / "stage2"),
            init=str(stage1),
            keep_neurons=True,
            keep_map=dict(KEEP_MAP),
            epochs=size.stage2_epochs,
            **common,
        ),
        on_event=epochs("stage 2"),
    )
    stage2 = trained(s2, "stage-2")
    res.numbers["stage2_val_macro_f1"] = s2.best_value
    kept = ", ".join(f"{new} <- {old}" for new, old in KEEP_MAP.items())
    step(
        4,
        total,
        "train stage 2",
        f"3 classes from the stage-1 weights, output neurons kept ({kept}), "
        f"{s2.epochs_done} epochs: best val {s2.monitor} {s2.best_value:.3f} -> {stage2}",
    )

    ev = evaluate(stage2, stage2_csv, out / "eval", split="test", device="cpu", bootstrap=size.bootstrap)
    res.numbers.update({f"test_{k}": ev.metrics.get(k) for k in ("accuracy", "macro_f1", "auc_macro")})
    step(
        5,
        total,
        "evaluate",
        f"test split, n={ev.n_ok}: accuracy {ev.metrics['accuracy']:.3f}, macro F1 {ev.metrics['macro_f1']:.3f}, "
        f"macro AUC {ev.metrics['auc_macro']:.3f} -> {out / 'eval'}",
    )

    scans = out / "scans"
    manifest3 = read_manifest(stage2_csv)
    test_rows = manifest3.select("test").rows[: size.scan_films]
    scans.mkdir()
    for r in test_rows:
        shutil.copyfile(manifest3.resolve(r), scans / Path(r["path"]).name)
    for dcm in sorted((sample / "dicom").iterdir()):
        shutil.copyfile(dcm, scans / dcm.name)
    good = next(scans.glob("*.png")).read_bytes()
    (scans / "truncated_download.png").write_bytes(
        good[: len(good) // 3]
    )  # a real-world failure: shown as an error row
    exported = export_model(stage2, onnx=True, check_images=[scans], check_count=8)
    onnx_path = exported.onnx_path
    parity = exported.onnx.parity if exported.onnx else None
    detail = (
        f"max |logit difference| vs torch {parity.max_abs_diff:.1e} on {parity.n_inputs} films" if parity else "reused"
    )
    step(6, total, "export --onnx", f"{detail} -> {onnx_path}")

    preds = out / "predictions.csv"
    summary = predict_to_file(
        [scans], onnx_path, preds, PredictOptions(workers=0, batch_size=16), backend="onnxruntime", device="cpu"
    )
    step(
        7,
        total,
        "predict",
        f"{summary.predicted} films ({len(test_rows)} test thumbnails, "
        f"{summary.predicted - len(test_rows)} DICOMs) with ONNX Runtime, "
        f"{summary.failed} unreadable (the truncated file, on purpose) -> {preds}",
    )

    model = open_model(stage2)
    net = model_from_loaded(model)
    explained = explain_files(
        plan_inputs([scans]), net, model.card, out / "heatmaps", ExplainOptions(batch_size=8), trust=load_trust(model)
    )
    step(
        8,
        total,
        "explain",
        f"LRP heatmaps of the predicted class for {len(explained.rows) - explained.n_failed} films "
        f"-> {out / 'heatmaps'}",
    )

    page = build_report(
        preds, res.report, explain_dir=out / "heatmaps", model=model, title="cxrtool demo report", caveats=[CAVEAT]
    )
    step(9, total, "report", f"{page.rows} rows, {page.overlays} heatmaps embedded -> {res.report}")

    res.seconds = time.perf_counter() - t0
    res.files.update(
        {
            "stage1": stage1,
            "stage2": stage2,
            "onnx": onnx_path,
            "predictions": preds,
            "heatmaps": out / "heatmaps",
            "report": res.report,
        }
    )
    step(10, total, "done", f"in {res.seconds:.0f} s; open {res.report} in a browser")
    note(CAVEAT)
    return res
