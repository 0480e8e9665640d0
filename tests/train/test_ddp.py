"""DistributedDataParallel for real: 2 processes on gloo (CPU) with tiny data and a tiny DenseNet; the same on 2 GPUs
(``gpu``).
"""

from __future__ import annotations

import json
import math
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
    """One torchrun-like rank; records its collectives' use and the films its trust fit ran."""
    from cxrtool.train import distributed as D
    from cxrtool.trust import fit as trust_fit

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    register_tiny_arch()  # a spawned process does not run the test session's fixtures
    seen: dict = {"any_rank": 0, "collect": []}
    any_rank, collect = D.any_rank, trust_fit.collect

    def counted_any_rank(*args, **kwargs):
        seen["any_rank"] += 1
        return any_rank(*args, **kwargs)

    def recorded_collect(model, dataset, **kwargs):
        out = collect(model, dataset, **kwargs)
        rank_, world = kwargs["shard"]
        seen["collect"].append(
            {"films": len(range(rank_, len(dataset), world)), "gathered": len(out.logits), "of": len(dataset)}
        )
        return out

    D.any_rank, trust_fit.collect = counted_any_rank, recorded_collect
    result = fit(TrainConfig(**cfg))
    seen["device"] = str(next(result.model.parameters()).device)
    if torch.cuda.is_available() and cfg["device"] == "cuda":
        seen["current_device"] = torch.cuda.current_device()
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, f"{dump}/rank{rank}.pt")
    Path(f"{dump}/rank{rank}.json").write_text(json.dumps(seen))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(manifest: Path, tmp_path: Path, device: str) -> tuple[Path, list[dict]]:
    out = tmp_path / "run"
    cfg = {
        "manifest": str(manifest),
        "out_dir": str(out),
        "init": "none",
        "arch": "densenet_tiny",
        "input_size": 32,
        "epochs": 2,
        "batch_size": 6,
        "workers": 0,
        "device": device,
    }
    mp.spawn(_worker, args=(cfg, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    saved = load_state_dict(out / "last.safetensors")
    assert all(torch.equal(saved[k], r0[k]) for k in saved)
    return out, [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def _check_trust_fit(out: Path, manifest: Path, seen: list[dict], tmp_path: Path) -> None:
    """Both ranks ran half of each split and got all of it back; the result is what one process fits."""
    from cxrtool.models.checkpoint import read_card
    from cxrtool.trust.fit import calibrate_checkpoint

    for rank, s in enumerate(seen):
        assert [c["of"] for c in s["collect"]] == [18, 36]  # val then train, every film of each
        assert [c["films"] for c in s["collect"]] == [9, 18]  # this rank's shard only
        assert [c["gathered"] for c in s["collect"]] == [18, 36]  # all_gather_object put them together
    card = read_card(out / "best.safetensors")
    assert card.ood and card.calibration
    single = calibrate_checkpoint(out / "best.safetensors", manifest, tmp_path / "single.safetensors")
    assert card.calibration["temperature"] == pytest.approx(single.fit.calibration["temperature"], rel=1e-4)
    assert card.ood["threshold"] == pytest.approx(single.fit.ood.threshold, rel=1e-4)


def test_ddp_two_processes_identical_weights_rank0_writes(covid_small: Path, tmp_path: Path) -> None:
    out, seen = _run_two_ranks(covid_small, tmp_path, "cpu")
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # written once, not once per rank
    assert log[0]["val_confusion_matrix"] and sum(map(sum, log[0]["val_confusion_matrix"])) == 18  # all val rows, once
    # 36 train images over 2 ranks x batch 6 = 3 steps per rank per epoch
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["optimizer"]["state"][0]["step"].item() == 6
    assert sorted(p.name for p in out.iterdir()) == [
        "best.safetensors",
        "config.toml",
        "last.safetensors",
        "log.csv",
        "log.jsonl",
        "train_state.pt",
    ]
    # stop checks (an all_reduce + host sync each): at the last step of each epoch (2) and between the epochs (1),
    # not after each of the 6 steps (the old 7); the trust fit adds none (its checkpoint comes by broadcast)
    assert [s["any_rank"] for s in seen] == [3, 3]
    assert all(
        r["train_loss"] > 0 and math.isfinite(r["train_loss"]) for r in log
    )  # the loss summed on the device still arrives
    _check_trust_fit(out, covid_small, seen, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ddp_two_gpus_each_rank_on_its_own_device(covid_small: Path, tmp_path: Path) -> None:
    """NCCL on 2 GPUs: rank r trains on cuda:r (set_device + device_id), trust fitted sharded and gathered."""
    out, seen = _run_two_ranks(covid_small, tmp_path, "cuda")
    assert [s["device"] for s in seen] == ["cuda:0", "cuda:1"] and [s["current_device"] for s in seen] == [0, 1]
    _check_trust_fit(out, covid_small, seen, tmp_path)
