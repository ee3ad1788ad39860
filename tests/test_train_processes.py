"""Training in real processes: killed with SIGKILL and resumed; two ranks under torchrun."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from .fakedata import write_cifar10

TRAIN = [sys.executable, "-m", "densenets", "train", "--no-progress"]


def train_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        *TRAIN,
        "--model", "densenet_bc16_k4", "--data", "cifar10+", "--data-dir", str(data_dir),
        "--epochs", "3", "--batch-size", "10", "--workers", "0", "--run-dir", str(run_dir), *extra,
    ]  # fmt: skip


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout}s"
        time.sleep(0.02)


def test_sigkill_during_training_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    write_cifar10(data, n_train=400, n_test=20)
    subprocess.run(train_args(data, tmp_path / "full"), check=True, capture_output=True)

    proc = subprocess.Popen(train_args(data, tmp_path / "cut", "--checkpoint-every", "3"), stdout=subprocess.DEVNULL)
    wait_for(tmp_path / "cut" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"]
    assert 0 < killed_at < 120

    done = subprocess.run([*TRAIN, "--resume", str(tmp_path / "cut")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming {tmp_path / 'cut'} at step {killed_at}" in done.stdout
    full, resumed = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_torchrun_two_cpu_ranks_end_with_identical_weights(tmp_path):
    write_cifar10(tmp_path / "data", n_train=80, n_test=20)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path / "data"), str(run),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x2 processes" in done.stdout
    rank0, rank1 = (torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = torch.load(run / "last.pt", weights_only=True)
    assert saved["step"] == 6  # 6 optimiser steps of 10 images per rank
    for key, value in saved["model"].items():  # rank 0 saved the weights both ranks hold
        assert torch.equal(value, rank0[key]), key
