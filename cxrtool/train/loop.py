"""``fit``: the training loop behind ``cxrtool train``.

One run writes into its output folder: ``best.safetensors`` (chosen by the monitored validation
metric), ``last.safetensors``, ``train_state.pt`` (resume), ``log.jsonl`` / ``log.csv`` (one
record per epoch) and ``config.toml`` (the resolved config).  Under ``torchrun`` every rank
trains its shard and only rank 0 writes.  SIGINT/SIGTERM finish the current step, save the
state and return ``status="interrupted"``; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from cxrtool.config import resolve_preprocess
from cxrtool.data import AugmentCfg, EpochSampler, ManifestDataset, balanced_weights
from cxrtool.errors import CxrError
from cxrtool.fsutil import atomic_write_text
from cxrtool.manifest import Manifest, read_manifest
from cxrtool.models import build_model
from cxrtool.models.checkpoint import ModelCard, file_sha256, save_checkpoint
from cxrtool.models.init import InitReport, initialise, read_parent_card
from cxrtool.train import distributed as D
from cxrtool.train.config import RUNTIME_KEYS, TrainConfig, dump_toml
from cxrtool.train.metrics import compute_metrics
from cxrtool.train.runtime import grad_scaler, predict_logits, resolve_device, resolve_runtime, to_probs
from cxrtool.train.state import STATE_FILE, load_state, rng_state, save_state, set_rng_state

EventFn = Callable[[str, dict[str, Any]], None]
MONITORS = ("loss", "accuracy", "macro_f1", "auc_macro")


class StopRequest:
    """Asks the loop to stop after the current step (set by SIGINT/SIGTERM, or by code)."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True


@dataclass
class FitResult:
    out_dir: Path
    status: str  # completed | early_stopped | interrupted
    epochs_done: int
    monitor: str
    best_value: float | None
    best_epoch: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None  # the final weights (this rank's), for notebooks and tests
    rank: int = 0  # under torchrun, only rank 0 reports


def monitor_name(cfg: TrainConfig, task: str) -> str:
    name = cfg.monitor
    if name == "auto":
        name = "macro_f1" if task == "multiclass" else "auc_macro"
    if name not in MONITORS:
        raise CxrError(f"monitor must be auto or one of {', '.join(MONITORS)}, not {name!r}")
    return name


def resume_config(out_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The stored config of a run, with only runtime options (device, workers) changeable."""
    state = load_state(Path(out_dir) / STATE_FILE)
    data = json.loads(state["config"])
    bad = sorted(
        k for k, v in (overrides or {}).items() if v is not None and k not in RUNTIME_KEYS and data.get(k) != v
    )
    if bad:
        raise CxrError(f"--resume continues the stored run; these options cannot change: {', '.join(bad)}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None and k in RUNTIME_KEYS})
    return TrainConfig.from_dict(data).validate()


@contextlib.contextmanager
def _stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop``; a second SIGINT raises KeyboardInterrupt.  Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def fit(
    cfg: TrainConfig, *, resume: bool = False, on_event: EventFn | None = None, stop: StopRequest | None = None
) -> FitResult:
    """Train (or resume) the run described by ``cfg``; see the module docstring for its outputs."""
    cfg.validate()
    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    dist_info = D.setup(use_cuda)
    stop = stop or StopRequest()
    try:
        with _stop_on_signals(stop):
            return _Run(cfg, dist_info, on_event, stop).run(resume)
    finally:
        D.teardown(dist_info)


class _Run:
    def __init__(self, cfg: TrainConfig, info: D.DistInfo, on_event: EventFn | None, stop: StopRequest):
        self.cfg, self.info, self.stop = cfg, info, stop
        self._on_event = on_event
        self.out = Path(cfg.out_dir)

    def emit(self, kind: str, **data: Any) -> None:
        if self._on_event is not None and self.info.is_main:
            self._on_event(kind, data)

    # ----------------------------------------------------------------- setup
    def _data(self) -> None:
        cfg = self.cfg
        full = read_manifest(cfg.manifest)
        self.task, self.class_names = full.task, full.class_names
        if not self.class_names:
            raise CxrError(f"{cfg.manifest}: no class labels")
        val_src = read_manifest(cfg.val_manifest) if cfg.val_manifest else full
        self.train_m, self.val_m = full.select(cfg.train_split), val_src.select(cfg.val_split)
        for m, split, src in (
            (self.train_m, cfg.train_split, cfg.manifest),
            (self.val_m, cfg.val_split, cfg.val_manifest or cfg.manifest),
        ):
            if not m.rows:
                raise CxrError(f"{src}: no rows with split {split!r}")
            missing = [str(m.resolve(r)) for r in m.rows if not m.resolve(r).is_file()]
            if missing:
                raise CxrError(f"{src}: {len(missing)} image file(s) not found, e.g. {missing[0]}")
        self.dataset_info = {
            "manifest": str(cfg.manifest),
            "manifest_sha256": file_sha256(cfg.manifest),
            "val_manifest": cfg.val_manifest,
            "splits": [cfg.train_split, cfg.val_split],
            "n_train": len(self.train_m.rows),
            "n_val": len(self.val_m.rows),
            "rows_sha256": _rows_fingerprint(self.train_m, self.val_m),
        }

    def _model(self) -> None:
        cfg = self.cfg
        parent = read_parent_card(cfg.init)
        self.arch = cfg.arch or (parent.arch if parent else "densenet121")
        overrides = {"input_size": cfg.input_size, "channels": cfg.channels, "resize": cfg.resize}
        try:
            self.preprocess = resolve_preprocess(parent.preprocess if parent else None, overrides)
        except ValueError as exc:
            raise CxrError(f"preprocessing: {exc}") from None
        torch.manual_seed(cfg.seed)
        try:
            self.model = build_model(self.arch, num_classes=len(self.class_names), in_chans=self.preprocess.channels)
        except ValueError as exc:
            raise CxrError(f"--arch: {exc}") from None

    def _initialise(self) -> None:
        cfg = self.cfg
        report = initialise(
            self.model, cfg.init, arch=self.arch, class_names=self.class_names, keep_neurons=cfg.keep_neurons,
            keep_map=cfg.keep_map, init_classes=cfg.init_classes,
        )  # fmt: skip
        self.report = report
        self.emit("init", **asdict(report))

    def _loaders(self) -> None:
        cfg = self.cfg
        aug = None
        if cfg.augment:
            aug = AugmentCfg(
                cfg.aug_rotate, cfg.aug_scale, cfg.aug_translate, cfg.aug_brightness, cfg.aug_contrast, cfg.hflip
            )
        common = {"class_names": self.class_names, "task": self.task, "preprocess": self.preprocess, "seed": cfg.seed}
        self.train_ds = ManifestDataset(self.train_m, augment_cfg=aug, **common)
        self.val_ds = ManifestDataset(self.val_m, **common)
        weights = None
        if cfg.balance == "sampler":
            if self.task != "multiclass":
                raise CxrError("--balance sampler is for multiclass manifests; use --balance loss for multilabel")
            weights = balanced_weights(self.train_ds.targets, len(self.class_names))
        self.sampler = EpochSampler(
            len(self.train_ds), seed=cfg.seed, weights=weights, num_replicas=self.info.world_size, rank=self.info.rank
        )
        if self.sampler.per_rank < cfg.batch_size:
            raise CxrError(
                f"{cfg.manifest}: {len(self.train_ds)} training images give {self.sampler.per_rank} per process, "
                f"fewer than --batch-size {cfg.batch_size}"
            )
        self.steps_per_epoch = self.sampler.per_rank // cfg.batch_size  # drop_last: BatchNorm needs >1 sample

    def _loader(self, dataset: ManifestDataset, sampler: Any, epoch: int, *, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=self.cfg.workers,
            pin_memory=self.runtime.cuda, drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),  # keeps the global RNG untouched
            worker_init_fn=_ignore_sigint if self.cfg.workers else None,
        )  # fmt: skip

    def _criterion(self) -> nn.Module:
        counts = np.asarray(self.train_ds.targets)
        if self.task == "multiclass":
            weight = None
            if self.cfg.balance == "loss":
                per_class = np.bincount(counts, minlength=len(self.class_names)).astype(np.float64)
                if (per_class == 0).any():
                    empty = [c for c, n in zip(self.class_names, per_class) if n == 0]
                    raise CxrError(f"--balance loss: no training images for {empty}")
                weight = torch.tensor(per_class.sum() / (len(per_class) * per_class), dtype=torch.float32)
            return nn.CrossEntropyLoss(weight=weight).to(self.runtime.device)
        pos_weight = None
        if self.cfg.balance == "loss":
            pos = counts.sum(0)
            pos_weight = torch.tensor(
                np.where(pos > 0, (len(counts) - pos) / np.maximum(pos, 1), 1.0), dtype=torch.float32
            )
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight).to(self.runtime.device)

    def _optim(self) -> None:
        cfg = self.cfg
        params = self.model.parameters()
        if cfg.optimizer == "adamw":
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.sched = None
        if cfg.scheduler == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs * self.steps_per_epoch)
        self.scaler = grad_scaler(self.runtime)

    # ------------------------------------------------------------------ run
    def run(self, resume: bool) -> FitResult:
        cfg = self.cfg
        device = resolve_device(cfg.device, self.info.local_rank)
        self.runtime, warnings = resolve_runtime(device, cfg.amp, cfg.channels_last)
        for w in warnings:
            self.emit("warning", message=w)
        self._data()
        self._model()
        self._loaders()
        self.monitor = monitor_name(cfg, self.task)
        self.epoch, self.step, self.history = 0, 0, []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs, self.run_loss, self.status = 0, [0.0, 0.0], "running"
        if resume:
            state = load_state(self.out / STATE_FILE)
            self.model.load_state_dict(state["model"])
            self.report = InitReport(**json.loads(state["init_report"]))
        else:
            self._initialise()
        self.model = self.runtime.prepare(self.model)
        self.criterion = self._criterion()
        self._optim()
        if resume:
            self._restore(state)
        self.emit(
            "setup", runtime=self.runtime.describe(), world_size=self.info.world_size, task=self.task,
            class_names=self.class_names, n_train=len(self.train_ds), n_val=len(self.val_ds), arch=self.arch,
            steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs, start_epoch=self.epoch, start_step=self.step,
            preprocess=self.preprocess.to_dict(), monitor=self.monitor,
        )  # fmt: skip
        if self.info.is_main and not resume:
            atomic_write_text(self.out / "config.toml", dump_toml(cfg))
        while self.status == "running" and self.epoch < cfg.epochs:
            finished = self._train_epoch()
            if finished:
                self._end_epoch()
            if (
                self.status == "running"
                and self.epoch < cfg.epochs
                and D.any_rank(self.stop.requested, self.info, device)
            ):
                self.status = "interrupted"
                self.run_loss = D.all_sum(self.run_loss, self.info, device)  # rank 0 keeps the global partial sum
                self._save_state()
                self.emit("stopped", epoch=self.epoch, step=self.step, state=str(self.out / STATE_FILE))
        if self.status == "running":
            self.status = "completed"
            self._save_state()
        return FitResult(
            self.out,
            self.status,
            self.epoch,
            self.monitor,
            self.best_value,
            self.best_epoch,
            self.history,
            self.model,
            self.info.rank,
        )

    def _restore(self, state: dict[str, Any]) -> None:
        if state["dataset"]["rows_sha256"] != self.dataset_info["rows_sha256"]:
            self.emit("warning", message="the manifest rows changed since this run started; resuming anyway")
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.run_loss = list(state["run_loss"]) if self.info.is_main else [0.0, 0.0]
        self.best_value, self.best_epoch, self.bad_epochs = (
            state["best_value"],
            state["best_epoch"],
            state["bad_epochs"],
        )
        self.history = json.loads(state["history"])
        self.status = "running" if state["status"] in ("running", "interrupted") else state["status"]

    def _set_frozen(self, frozen: bool) -> nn.Module:
        """Freeze or unfreeze the backbone and return the module to call (DDP-wrapped when distributed)."""
        for p in self.model.features.parameters():
            p.requires_grad_(not frozen)
        self.model.train()
        if frozen:
            self.model.features.eval()  # frozen means its BatchNorm statistics too
        if not self.info.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.runtime.device.index] if self.runtime.cuda else None
        # Buffers are synced from rank 0 at wrap time and before validation, not at every forward.
        return DistributedDataParallel(self.model, device_ids=ids, forward_sync_buffers=False)

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch; False if a stop request cut it short."""
        cfg, rt = self.cfg, self.runtime
        frozen = self.epoch < cfg.freeze_epochs
        net = self._set_frozen(frozen)
        self.train_ds.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.step * cfg.batch_size)
        loader = self._loader(self.train_ds, self.sampler, self.epoch, drop_last=True)
        self.emit("epoch_start", epoch=self.epoch + 1, steps=self.steps_per_epoch, start_step=self.step, frozen=frozen)
        t0, seen = time.perf_counter(), 0
        for x, y, _, _ in loader:
            with rt.autocast():
                logits = net(rt.inputs(x))
            loss = self.criterion(logits.float(), y.to(rt.device, non_blocking=rt.cuda))
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.sched is not None:
                self.sched.step()
            value = float(loss.detach())
            self.run_loss[0] += value * len(y)
            self.run_loss[1] += len(y)
            self.step += 1
            seen += len(y) * self.info.world_size
            elapsed = time.perf_counter() - t0
            self.emit(
                "step", epoch=self.epoch + 1, step=self.step, steps=self.steps_per_epoch, loss=value,
                lr=self.opt.param_groups[0]["lr"], images_per_s=seen / elapsed if elapsed > 0 else 0.0,
            )  # fmt: skip
            if D.any_rank(self.stop.requested, self.info, rt.device) and self.step < self.steps_per_epoch:
                return False
        self.train_time = time.perf_counter() - t0
        self.train_seen = seen
        self.frozen = frozen
        return True

    def _validate(self) -> tuple[float, dict[str, Any]]:
        if self.info.enabled:
            D.sync_buffers(self.model)
        self.model.eval()
        shard = list(range(self.info.rank, len(self.val_ds), self.info.world_size))
        loader = self._loader(self.val_ds, shard, 0, drop_last=False)
        logits, targets, idx, _ = predict_logits(self.model, loader, self.runtime)
        parts = D.all_gather((logits, targets, idx), self.info)
        logits = np.concatenate([p[0] for p in parts if len(p[2])])
        targets = np.concatenate([p[1] for p in parts if len(p[2])])
        order = np.argsort(np.concatenate([p[2] for p in parts if len(p[2])]))
        logits_t, targets_t = torch.from_numpy(logits[order]), torch.from_numpy(targets[order])
        with torch.no_grad():
            loss = float(self.criterion(logits_t.to(self.runtime.device), targets_t.to(self.runtime.device)))
        probs = to_probs(logits_t, self.task).numpy()
        return loss, compute_metrics(self.task, probs, targets_t.numpy(), self.class_names, self.cfg.threshold)

    def _end_epoch(self) -> None:
        cfg = self.cfg
        loss_sum, count = D.all_sum(self.run_loss, self.info, self.runtime.device)
        val_loss, metrics = self._validate()
        self.epoch += 1
        self.step, self.run_loss = 0, [0.0, 0.0]
        value = val_loss if self.monitor == "loss" else metrics.get(self.monitor)
        improved = self.best_epoch is None or (
            value is not None
            and (
                self.best_value is None
                or (value < self.best_value if self.monitor == "loss" else value > self.best_value)
            )
        )
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
        else:
            self.bad_epochs += 1
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "lr": self.opt.param_groups[0]["lr"],
            "frozen": self.frozen,
            "train_loss": loss_sum / max(count, 1),
            "val_loss": val_loss,
        }
        record |= {f"val_{k}": v for k, v in metrics.items() if k not in ("n", "threshold")}
        record |= {"images_per_s": self.train_seen / max(self.train_time, 1e-9), "epoch_time_s": self.train_time}
        record |= {"best": improved, "monitor": self.monitor}
        self.history.append(record)
        if cfg.patience and self.bad_epochs >= cfg.patience and self.epoch < cfg.epochs:
            self.status = "early_stopped"
        if self.info.is_main:
            card_metrics = {"epoch": self.epoch, "monitor": self.monitor, "val_loss": val_loss, **metrics}
            save_checkpoint(self.out / "last.safetensors", self.model, self._card(card_metrics))
            if improved:
                save_checkpoint(self.out / "best.safetensors", self.model, self._card(card_metrics))
            self._write_logs()
        self._save_state()
        self.emit("epoch_end", **record, status=self.status)

    # --------------------------------------------------------------- output
    def _card(self, metrics: dict[str, Any]) -> ModelCard:
        return ModelCard(
            arch=self.arch, task=self.task, class_names=list(self.class_names), preprocess=self.preprocess,
            config=self.cfg.to_dict(), metrics=metrics, dataset=self.dataset_info,
            lineage=self.report.lineage,
        )  # fmt: skip

    def _write_logs(self) -> None:
        atomic_write_text(self.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        rows = [_flatten(r) for r in self.history]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out / "log.csv", buf.getvalue())

    def _save_state(self) -> None:
        if not self.info.is_main:
            return
        save_state(
            self.out / STATE_FILE,
            {
                "config": json.dumps(self.cfg.to_dict()),
                "status": self.status,
                "epoch": self.epoch,
                "step": self.step,
                "run_loss": self.run_loss,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else {},
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "history": json.dumps(self.history),
                "init_report": json.dumps(asdict(self.report)),
                "dataset": self.dataset_info,
            },
        )


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which finishes the step and saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _rows_fingerprint(*manifests: Manifest) -> str:
    """Hash of the (path, label, split) rows a run trains and validates on."""
    h = hashlib.sha256()
    for m in manifests:
        for r in m.rows:
            h.update(json.dumps([r.get("path"), r.get("label"), r.get("split")] + m.multi_hot(r)).encode())
    return h.hexdigest()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``a:b`` columns for the CSV log (``val_per_class:covid:recall``)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, f"{key}:")
        elif isinstance(v, list):
            out[key] = json.dumps(v)
        elif isinstance(v, float) and math.isnan(v):
            out[key] = ""
        else:
            out[key] = v
    return out
