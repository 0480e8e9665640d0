"""``fit``: the training loop behind ``cxrtool train``.

One run writes into its output folder: ``best.safetensors`` (chosen by the monitored validation
metric), ``last.safetensors``, ``train_state.pt`` (resume), ``log.jsonl`` / ``log.csv`` (one
record per epoch) and ``config.toml`` (the resolved config).  Under ``torchrun`` every rank
trains its shard and only rank 0 writes.  SIGINT/SIGTERM finish the current step, save the
state and return ``status="interrupted"``; a second Ctrl-C aborts at once.

At the end of a finished run (unless ``trust = false``) ``best.safetensors`` gets its trust
statistics (:mod:`cxrtool.trust`): OOD Gaussians on the training split, temperature and OOD
threshold on the validation split.

Progress is reported as typed events (:data:`cxrtool.train.events.Event`), one dataclass per kind, to
``on_event``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from cxrtool.config import PreprocessCfg, resolve_preprocess
from cxrtool.data import AugmentCfg, EpochSampler, ManifestDataset, balanced_weights
from cxrtool.devices import resolve_device
from cxrtool.errors import CxrError
from cxrtool.fsutil import atomic_write_text
from cxrtool.locks import owned_output
from cxrtool.modelfile import ModelCard
from cxrtool.models import build_model
from cxrtool.models.checkpoint import save_checkpoint
from cxrtool.models.pretrained import InitReport, initialise, read_parent_card
from cxrtool.models.registry import DEFAULT_ARCH
from cxrtool.task import Task
from cxrtool.train import distributed as D
from cxrtool.train.config import RUNTIME_KEYS, TrainConfig, dump_toml
from cxrtool.train.events import (
    EpochEnded,
    EpochStarted,
    Event,
    EventFn,
    FitResult,
    InitDone,
    RunWarning,
    SetupDone,
    StepDone,
    Stopped,
    TrustFitted,
    TrustProgress,
)
from cxrtool.train.logs import EpochStats, write_logs
from cxrtool.train.metrics import compute_metrics
from cxrtool.train.rundata import init_loader_worker, read_data
from cxrtool.train.runtime import (
    grad_scaler,
    predict_logits,
    resolve_runtime,
    restore_scaler,
)
from cxrtool.train.signals import StopRequest, stop_on_signals
from cxrtool.train.state import (
    STATE_FILE,
    Progress,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)

MONITORS = ("loss", "accuracy", "macro_f1", "auc_macro")
#: on a GPU or under DDP, steps between reads of the loss (a host sync) and stop checks (an all_reduce)
HOST_SYNC_EVERY = 20


def monitor_name(cfg: TrainConfig, task: Task) -> str:
    name = cfg.monitor
    if name == "auto":
        name = "auc_macro" if task.multilabel else "macro_f1"
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


def fit(
    cfg: TrainConfig, *, resume: bool = False, on_event: EventFn | None = None, stop: StopRequest | None = None
) -> FitResult:
    """Train (or resume) the run described by ``cfg``; see the module docstring for its outputs."""
    cfg.validate()
    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    dist_info = D.setup(use_cuda)
    stop = stop or StopRequest()
    try:
        owner = owned_output(cfg.out_dir) if dist_info.is_main else contextlib.nullcontext()  # one run per --out
        with owner, stop_on_signals(stop):
            return _Run(cfg, dist_info, on_event, stop, resume).run()
    finally:
        D.teardown(dist_info)


def _build(cfg: TrainConfig, n_classes: int) -> tuple[str, PreprocessCfg, nn.Module]:
    """Architecture, preprocessing (the ``--init`` checkpoint's unless overridden) and a fresh model."""
    parent = read_parent_card(cfg.init, cfg.init_classes)
    arch = cfg.arch or (parent.arch if parent else DEFAULT_ARCH)
    overrides = {"input_size": cfg.input_size, "channels": cfg.channels, "resize": cfg.resize}
    try:
        preprocess = resolve_preprocess(parent.preprocess if parent else None, overrides)
    except ValueError as exc:
        raise CxrError(f"preprocessing: {exc}") from None
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(arch, num_classes=n_classes, in_chans=preprocess.channels)
    except ValueError as exc:
        raise CxrError(f"--arch: {exc}") from None
    return arch, preprocess, model


class _Run:
    """One training run.  Everything is set up in :meth:`__init__`, in this order: runtime, data,
    model, datasets and sampler, weights (initialised or resumed), loss, optimiser; what changes
    while training lives in ``self.progress`` (a :class:`Progress`, saved for ``--resume``)."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo, on_event: EventFn | None, stop: StopRequest, resume: bool):
        self.cfg, self.info, self.stop, self._on_event = cfg, info, stop, on_event
        self.out = Path(cfg.out_dir)
        self.resume = resume
        device = resolve_device(cfg.device, info.local_rank)
        self.runtime, warnings = resolve_runtime(device, cfg.amp, cfg.channels_last)
        for w in warnings:
            self.emit(RunWarning(w))
        self.data = read_data(cfg)
        self.task, self.class_names = self.data.task, self.data.class_names
        self.arch, self.preprocess, model = _build(cfg, len(self.class_names))
        self.train_ds, self.val_ds, self.sampler, self.steps_per_epoch = self._datasets()
        self.monitor = monitor_name(cfg, self.task)
        state = load_state(self.out / STATE_FILE) if resume else None
        if state is not None:
            model.load_state_dict(state["model"])
            self.report = InitReport(**json.loads(state["init_report"]))
        else:
            self.report = initialise(
                model,
                cfg.init,
                arch=self.arch,
                class_names=self.class_names,
                keep_neurons=cfg.keep_neurons,
                keep_map=cfg.keep_map,
                init_classes=cfg.init_classes,
            )
            self.emit(InitDone(self.report))
        self.model = self.runtime.prepare(model)
        self.criterion = self._criterion()
        self.opt, self.sched = self._optimiser()
        self.scaler = grad_scaler(self.runtime)
        self.progress = Progress()
        if state is not None:
            self._restore(state)

    def emit(self, event: Event) -> None:
        if self._on_event is not None and self.info.is_main:
            self._on_event(event)

    # ----------------------------------------------------------------- setup
    def _datasets(self) -> tuple[ManifestDataset, ManifestDataset, EpochSampler, int]:
        cfg = self.cfg
        aug = None
        if cfg.augment:
            aug = AugmentCfg(
                cfg.aug_rotate, cfg.aug_scale, cfg.aug_translate, cfg.aug_brightness, cfg.aug_contrast, cfg.hflip
            )
        common = {"class_names": self.class_names, "task": self.task, "preprocess": self.preprocess, "seed": cfg.seed}
        train_ds = ManifestDataset(self.data.train, augment_cfg=aug, **common)
        val_ds = ManifestDataset(self.data.val, **common)
        weights = None
        if cfg.balance == "sampler":
            if self.task.multilabel:
                raise CxrError("--balance sampler is for multiclass manifests; use --balance loss for multilabel")
            weights = balanced_weights(train_ds.targets, len(self.class_names))
        sampler = EpochSampler(
            len(train_ds), seed=cfg.seed, weights=weights, num_replicas=self.info.world_size, rank=self.info.rank
        )
        if sampler.per_rank < cfg.batch_size:
            raise CxrError(
                f"{cfg.manifest}: {len(train_ds)} training images give {sampler.per_rank} per process, "
                f"fewer than --batch-size {cfg.batch_size}"
            )
        return train_ds, val_ds, sampler, sampler.per_rank // cfg.batch_size  # drop_last: BatchNorm needs >1 sample

    def _loader(self, dataset: ManifestDataset, sampler: Any, epoch: int, *, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.runtime.cuda,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),  # keeps the global RNG untouched
            worker_init_fn=functools.partial(init_loader_worker, os.getpid()) if self.cfg.workers else None,
        )

    def _criterion(self) -> nn.Module:
        """The task's loss; ``--balance loss`` weights classes (multiclass) or positives (multilabel)."""
        counts = np.asarray(self.train_ds.targets)
        weight = pos_weight = None
        if self.cfg.balance == "loss" and not self.task.multilabel:
            per_class = np.bincount(counts, minlength=len(self.class_names)).astype(np.float64)
            if (per_class == 0).any():
                empty = [c for c, n in zip(self.class_names, per_class) if n == 0]
                raise CxrError(f"--balance loss: no training images for {empty}")
            weight = torch.tensor(per_class.sum() / (len(per_class) * per_class), dtype=torch.float32)
        elif self.cfg.balance == "loss":
            pos = counts.sum(0)
            ratio = np.where(pos > 0, (len(counts) - pos) / np.maximum(pos, 1), 1.0)
            pos_weight = torch.tensor(ratio, dtype=torch.float32)
        return self.task.loss(class_weight=weight, pos_weight=pos_weight).to(self.runtime.device)

    def _optimiser(self) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.cfg
        params = self.model.parameters()
        if cfg.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = None
        if cfg.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * self.steps_per_epoch)
        return opt, sched

    def _restore(self, state: dict[str, Any]) -> None:
        if state["dataset"]["rows_sha256"] != self.data.info["rows_sha256"]:
            self.emit(RunWarning("the manifest rows changed since this run started; resuming anyway"))
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        restore_scaler(self.scaler, state["scaler"])
        set_rng_state(state["rng"])
        self.progress = Progress.from_state(state, is_main=self.info.is_main)

    # ------------------------------------------------------------------ run
    def run(self) -> FitResult:
        cfg, p = self.cfg, self.progress
        self.emit(
            SetupDone(
                arch=self.arch,
                task=self.task.name,
                runtime=self.runtime.describe(),
                world_size=self.info.world_size,
                class_names=list(self.class_names),
                n_train=len(self.train_ds),
                n_val=len(self.val_ds),
                steps_per_epoch=self.steps_per_epoch,
                epochs=cfg.epochs,
                start_epoch=p.epoch,
                start_step=p.step,
                preprocess=self.preprocess,
                monitor=self.monitor,
            )
        )
        if self.info.is_main and not self.resume:
            atomic_write_text(self.out / "config.toml", dump_toml(cfg))
        device = self.runtime.device
        while p.status == "running" and p.epoch < cfg.epochs:
            stats = self._train_epoch()
            if stats is not None:
                self._end_epoch(stats)
            if p.status == "running" and p.epoch < cfg.epochs and D.any_rank(self.stop.requested, self.info, device):
                p.status = "interrupted"
                p.run_loss = D.all_sum(p.run_loss, self.info, device)  # rank 0 keeps the global partial sum
                self._save_state()
                self.emit(Stopped(p.epoch, p.step, self.out / STATE_FILE))
        if p.status == "running":
            p.status = "completed"
            self._save_state()
        if p.status != "interrupted" and cfg.trust:
            self._fit_trust()  # every rank extracts features for its shard (no rank waits out a barrier)
        return FitResult(
            self.out, p.status, p.epoch, self.monitor, p.best_value, p.best_epoch, p.history, self.model, self.info.rank
        )

    def _set_frozen(self, frozen: bool) -> nn.Module:
        """Freeze or unfreeze the backbone and return the module to call (DDP-wrapped when distributed)."""
        for param in self.model.features.parameters():
            param.requires_grad_(not frozen)
        self.model.train()
        if frozen:
            self.model.features.eval()  # frozen means its BatchNorm statistics too
        if not self.info.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.runtime.device.index] if self.runtime.cuda else None
        # Buffers are synced from rank 0 at wrap time and before validation, not at every forward.
        return DistributedDataParallel(self.model, device_ids=ids, forward_sync_buffers=False)

    def _train_epoch(self) -> EpochStats | None:
        """Train the rest of the current epoch; None if a stop request cut it short."""
        cfg, rt, p = self.cfg, self.runtime, self.progress
        frozen = p.epoch < cfg.freeze_epochs
        net = self._set_frozen(frozen)
        self.train_ds.set_epoch(p.epoch)
        self.sampler.set_epoch(p.epoch, start=p.step * cfg.batch_size)
        loader = self._loader(self.train_ds, self.sampler, p.epoch, drop_last=True)
        self.emit(EpochStarted(p.epoch + 1, self.steps_per_epoch, p.step, frozen))
        t0, seen = time.perf_counter(), 0
        # on a GPU or under DDP, reading the loss (a host sync) and agreeing on a stop (an all_reduce)
        # happen every HOST_SYNC_EVERY steps and at the epoch's last step, not after every step
        every = HOST_SYNC_EVERY if rt.cuda or self.info.enabled else 1
        pending = torch.zeros((), dtype=torch.float64, device=rt.device)  # summed loss not yet read
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
            pending += loss.detach().double() * len(y)
            p.run_loss[1] += len(y)
            p.step += 1
            seen += len(y) * self.info.world_size
            if p.step % every and p.step < self.steps_per_epoch:
                continue
            p.run_loss[0] += float(pending)
            pending.zero_()
            elapsed = time.perf_counter() - t0
            rate = seen / elapsed if elapsed > 0 else 0.0
            lr = self.opt.param_groups[0]["lr"]
            self.emit(StepDone(p.epoch + 1, p.step, self.steps_per_epoch, float(loss.detach()), lr, rate))
            if D.any_rank(self.stop.requested, self.info, rt.device) and p.step < self.steps_per_epoch:
                return None
        return EpochStats(time.perf_counter() - t0, seen, frozen)

    def _validate(self) -> tuple[float, dict[str, Any]]:
        if self.info.enabled:
            D.sync_buffers(self.model)
        self.model.eval()
        shard = list(range(self.info.rank, len(self.val_ds), self.info.world_size))
        loader = self._loader(self.val_ds, shard, 0, drop_last=False)
        logits, targets, idx, _ = predict_logits(self.model, loader, self.runtime)
        parts = D.all_gather((logits, targets, idx), self.info)
        logits = np.concatenate([part[0] for part in parts if len(part[2])])
        targets = np.concatenate([part[1] for part in parts if len(part[2])])
        order = np.argsort(np.concatenate([part[2] for part in parts if len(part[2])]))
        logits_t, targets_t = torch.from_numpy(logits[order]), torch.from_numpy(targets[order])
        with torch.no_grad():
            loss = float(self.criterion(logits_t.to(self.runtime.device), targets_t.to(self.runtime.device)))
        probs = self.task.probs_tensor(logits_t).numpy()
        return loss, compute_metrics(self.task, probs, targets_t.numpy(), self.class_names)

    def _end_epoch(self, stats: EpochStats) -> None:
        cfg, p = self.cfg, self.progress
        loss_sum, count = D.all_sum(p.run_loss, self.info, self.runtime.device)
        val_loss, metrics = self._validate()
        p.epoch += 1
        p.step, p.run_loss = 0, [0.0, 0.0]
        value = val_loss if self.monitor == "loss" else metrics.get(self.monitor)
        improved = p.best_epoch is None or (
            value is not None
            and (p.best_value is None or (value < p.best_value if self.monitor == "loss" else value > p.best_value))
        )
        if improved:
            p.best_value, p.best_epoch, p.bad_epochs = value, p.epoch, 0
        else:
            p.bad_epochs += 1
        train_loss = loss_sum / max(count, 1)
        images_per_s = stats.seen / max(stats.seconds, 1e-9)
        record: dict[str, Any] = {
            "epoch": p.epoch,
            "lr": self.opt.param_groups[0]["lr"],
            "frozen": stats.frozen,
            "train_loss": train_loss,
            "val_loss": val_loss,
        }
        record |= {f"val_{k}": v for k, v in metrics.items() if k not in ("n", "threshold")}
        record |= {"images_per_s": images_per_s, "epoch_time_s": stats.seconds}
        record |= {"best": improved, "monitor": self.monitor}
        p.history.append(record)
        if cfg.patience and p.bad_epochs >= cfg.patience and p.epoch < cfg.epochs:
            p.status = "early_stopped"
        if self.info.is_main:
            card_metrics = {"epoch": p.epoch, "monitor": self.monitor, "val_loss": val_loss, **metrics}
            save_checkpoint(self.out / "last.safetensors", self.model, self._card(card_metrics))
            if improved:
                save_checkpoint(self.out / "best.safetensors", self.model, self._card(card_metrics))
            write_logs(self.out, p.history)
        self._save_state()
        self.emit(EpochEnded(p.epoch, train_loss, val_loss, metrics, images_per_s, improved, p.status))

    def _fit_trust(self) -> None:
        """OOD statistics and temperature into ``best.safetensors`` (its weights are unchanged).

        Under DDP every rank runs its shard of the films and the outputs are gathered
        (``all_gather_object``), so no rank idles in a collective while one extracts features for
        the whole validation set (NCCL's 10-minute timeout); rank 0 writes.
        """
        import tempfile

        from cxrtool.models.checkpoint import load_checkpoint
        from cxrtool.trust.fit import fit_trust

        best = self.out / "best.safetensors"
        data = D.broadcast_file(best, self.info)  # rank 0's checkpoint on every rank; None when it wrote none
        if data is None:
            return
        with tempfile.TemporaryDirectory(prefix="cxrtool-trust-") as tmp:
            (Path(tmp) / best.name).write_bytes(data)
            model, card = load_checkpoint(Path(tmp) / best.name)
        model = model.to(self.runtime.device)
        common = {
            "class_names": self.class_names,
            "task": self.task,
            "preprocess": self.preprocess,
            "skip_errors": True,
        }
        train, val = ManifestDataset(self.data.train, **common), ManifestDataset(self.data.val, **common)
        done, total = [0], len(train) + len(val)

        def on_batch(n: int) -> None:
            done[0] += n
            self.emit(TrustProgress(done[0], total))

        try:
            fitted = fit_trust(
                model,
                card,
                train,
                val,
                splits=(self.cfg.train_split, self.cfg.val_split),
                quantile=self.cfg.ood_quantile,
                device=self.runtime.device,
                batch_size=self.cfg.batch_size,
                workers=self.cfg.workers,
                on_batch=on_batch,
                shard=(self.info.rank, self.info.world_size),
                gather=functools.partial(D.all_gather, info=self.info),
            )
        except CxrError as exc:
            later = f"add them later with `cxrtool calibrate {best} MANIFEST`"
            self.emit(RunWarning(f"no OOD statistics or temperature fitted ({exc}); {later}"))
            return
        if not self.info.is_main:
            return
        save_checkpoint(best, model, card, fitted.apply(card))
        c, ood = fitted.calibration, fitted.ood
        if fitted.shortcut:
            self.emit(RunWarning(fitted.shortcut))
        n_train, n_val = ood.info["n_train"], ood.info["n_val"]
        self.emit(TrustFitted(best, c["temperature"], c["ece"], c["ece_calibrated"], ood.threshold, n_train, n_val))

    # --------------------------------------------------------------- output
    def _card(self, metrics: dict[str, Any]) -> ModelCard:
        return ModelCard(
            arch=self.arch,
            task=self.task,
            class_names=list(self.class_names),
            preprocess=self.preprocess,
            config=self.cfg.to_dict(),
            metrics=metrics,
            dataset=self.data.info,
            lineage=self.report.lineage,
        )

    def _save_state(self) -> None:
        if not self.info.is_main:
            return
        save_state(
            self.out / STATE_FILE,
            {
                "config": json.dumps(self.cfg.to_dict()),
                **self.progress.to_state(),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else {},
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
                "init_report": json.dumps(asdict(self.report)),
                "dataset": self.data.info,
            },
        )
