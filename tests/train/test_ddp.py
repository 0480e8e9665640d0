"""DistributedDataParallel for real: 2 CPU processes on gloo, tiny data, tiny DenseNet."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tiny_arch import register_tiny_arch

from cxrtool.models.checkpoint import load_state_dict
from cxrtool.train.config import TrainConfig
from cxrtool.train.loop import fit

pytestmark = pytest.mark.shared_data


def _worker(rank: int, cfg: dict, port: int, dump: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    register_tiny_arch()  # a spawned process does not run the test session's fixtures
    result = fit(TrainConfig(**cfg))
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, f"{dump}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_identical_weights_rank0_writes(covid_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = {"manifest": str(covid_small), "out_dir": str(out), "init": "none", "arch": "densenet_tiny", "input_size": 32,
           "epochs": 2, "batch_size": 6, "workers": 0, "device": "cpu"}  # fmt: skip
    mp.spawn(_worker, args=(cfg, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    saved = load_state_dict(out / "last.safetensors")
    assert all(torch.equal(saved[k], r0[k]) for k in saved)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # written once, not once per rank
    assert log[0]["val_confusion_matrix"] and sum(map(sum, log[0]["val_confusion_matrix"])) == 18  # all val rows, once
    # 36 train images over 2 ranks x batch 6 = 3 steps per rank per epoch
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["optimizer"]["state"][0]["step"].item() == 6
    assert sorted(p.name for p in out.iterdir()) == [
        "best.safetensors", "config.toml", "last.safetensors", "log.csv", "log.jsonl", "train_state.pt",
    ]  # fmt: skip
