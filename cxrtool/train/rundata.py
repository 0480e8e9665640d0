"""What a run trains and validates on: the manifests' selected rows, checked, and their fingerprint."""

from __future__ import annotations

import hashlib
import json
import signal
from dataclasses import dataclass
from typing import Any

from cxrtool.errors import CxrError
from cxrtool.manifest import Manifest, read_manifest
from cxrtool.modelfile import file_sha256
from cxrtool.task import Task
from cxrtool.train.config import TrainConfig
from cxrtool.workers import die_with


@dataclass
class RunData:
    """The manifests a run trains and validates on (what ``read_data`` found)."""

    task: Task
    class_names: list[str]
    train: Manifest
    val: Manifest
    info: dict[str, Any]  # the card's ``dataset`` field


def read_data(cfg: TrainConfig) -> RunData:
    full = read_manifest(cfg.manifest)
    task, class_names = full.task.with_threshold(cfg.threshold), full.class_names
    if not class_names:
        raise CxrError(f"{cfg.manifest}: no class labels")
    val_src = read_manifest(cfg.val_manifest) if cfg.val_manifest else full
    train_m, val_m = full.select(cfg.train_split), val_src.select(cfg.val_split)
    checks = ((train_m, cfg.train_split, cfg.manifest), (val_m, cfg.val_split, cfg.val_manifest or cfg.manifest))
    for m, split, src in checks:
        if not m.rows:
            raise CxrError(f"{src}: no rows with split {split!r}")
        missing = [str(m.resolve(r)) for r in m.rows if not m.resolve(r).is_file()]
        if missing:
            raise CxrError(f"{src}: {len(missing)} image file(s) not found, e.g. {missing[0]}")
    info = {
        "manifest": str(cfg.manifest),
        "manifest_sha256": file_sha256(cfg.manifest),
        "val_manifest": cfg.val_manifest,
        "splits": [cfg.train_split, cfg.val_split],
        "n_train": len(train_m.rows),
        "n_val": len(val_m.rows),
        "rows_sha256": rows_fingerprint(train_m, val_m),
    }
    return RunData(task, list(class_names), train_m, val_m, info)


def init_loader_worker(owner_pid: int, worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process (it finishes the step and saves) and die with it."""
    die_with(owner_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def rows_fingerprint(*manifests: Manifest) -> str:
    """Hash of the (path, label, split) rows a run trains and validates on."""
    h = hashlib.sha256()
    for m in manifests:
        for r in m.rows:
            h.update(json.dumps([r.get("path"), r.get("label"), r.get("split")] + m.multi_hot(r)).encode())
    return h.hexdigest()
