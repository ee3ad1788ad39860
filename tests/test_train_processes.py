"""Training in real processes: killed with SIGKILL and resumed; two ranks under torchrun."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from densenets.data.determinism import derive_seed
from densenets.engine import base_recipe, resolve_recipe
from densenets.engine.trainer import fit
from densenets.models import DenseNet, get_config

from .batchnorm_fixed import fixed_batchnorm_statistics
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


# gloo's TCP connection setup on a loaded 2-core machine occasionally fails: these are the
# messages seen. Only such a failure, or a hang inside process-group creation, is launched again.
GLOO_SETUP_ERRORS = ("Connection reset by peer", "Connection refused", "Connection closed by peer", "connectFullMesh")
# Python frames a worker shows when it hangs in gloo's setup (seen: both ranks in createAndConnectAllPairs)
IN_SETUP = ("in init_process_group", "in _new_process_group_helper")


def torchrun(*args: str, run: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """2 CPU processes under torchrun writing to `run`; the timeout only catches a hang (gloo's own is 30 minutes).

    A launch is repeated (at most twice, into an empty run folder) only when gloo failed to set
    up its connections: a known error message, or a hang while the process group was being
    created. Any other failure or hang is returned or raised at once, with the workers' stacks.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints the stacks
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    for attempt in range(3):
        if attempt:
            shutil.rmtree(run, ignore_errors=True)
        done, hung = _launch(cmd, env, timeout)
        if hung and not any(frame in done.stderr for frame in IN_SETUP):
            raise AssertionError(f"torchrun hung for {timeout:.0f} s after gloo's setup: {done.stderr[-4000:]}")
        setup_failed = "gloo" in done.stderr.lower() and any(e in done.stderr for e in GLOO_SETUP_ERRORS)
        if not hung and (done.returncode == 0 or not setup_failed):
            return done
    if hung:
        raise AssertionError(f"torchrun hung in gloo's setup in each of 3 launches: {done.stderr[-2000:]}")
    return done


def _launch(cmd: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, bool]:
    """Run `cmd`; on timeout abort the workers (faulthandler prints where each one waits), then
    kill torchrun *and* its workers (they hold the pipes open)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err), False
    except subprocess.TimeoutExpired:
        workers = _descendants(proc.pid)  # torchrun starts each worker in its own session
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
        time.sleep(2)
        for pid in [*workers, proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err), True


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_torchrun_two_cpu_ranks_agree_and_match_one_process_at_the_same_global_batch(tmp_path):
    write_cifar10(tmp_path / "data", n_train=80, n_test=20)
    run = tmp_path / "run"
    done = torchrun(str(Path(__file__).with_name("ddp_worker.py")), "agree", str(tmp_path / "data"), str(run), run=run)
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
    # a whole epoch: one test-set evaluation on each rank, the epoch's; the end of the run reuses its
    # record (rank 0 decides and tells the others), and both ranks return rank 0's final error
    counts = [(run / "one-epoch" / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    recorded = json.loads((run / "one-epoch" / "metrics.jsonl").read_text().splitlines()[-1])["test_error"]
    assert counts == [["1", repr(recorded)]] * 2

    # 2 ranks at batch 10 each against one process at batch 20, on the same data: equal to
    # float rounding once BatchNorm uses fixed statistics (per-rank batch statistics are the
    # one difference DDP has by design).
    two = torch.load(run / "fixed-bn" / "rank0.pt", weights_only=True)
    recipe = resolve_recipe(base_recipe("cifar"), model="densenet_bc16_k4", data="cifar10+",
                            data_dir=str(tmp_path / "data"), epochs=2, batch_size=20, workers=0, device="cpu",
                            max_steps=3, lr=0.01)  # fmt: skip
    with fixed_batchnorm_statistics():
        one = fit(recipe, tmp_path / "one", show_progress=False).model.state_dict()
    torch.manual_seed(derive_seed(recipe.seed, "init"))  # the run's initial weights
    start = DenseNet(get_config("densenet_bc16_k4", num_classes=10, dropout=0.0)).state_dict()
    floats = [key for key in one if one[key].is_floating_point()]
    moved = max((one[key] - start[key]).abs().max().item() for key in floats)
    assert moved > 100 * 2e-5  # training moved the weights far more than the tolerance below
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-5, msg=key)


def test_readme_torchrun_command_runs_to_the_end(tmp_path):
    """`torchrun --nproc_per_node=2 -m densenets train --epochs 2 ...` saves, summarises and exits 0 on every rank."""
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    run = tmp_path / "run"
    done = torchrun(
        "-m", "densenets", "train", "--epochs", "2", "--no-progress", "--model", "densenet_bc16_k4",
        "--data", "cifar10+", "--data-dir", str(tmp_path / "data"), "--batch-size", "20", "--run-dir", str(run),
        run=run,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final test error" in done.stdout and "x2 processes" in done.stdout
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    assert (run / "summary.json").is_file()


def test_an_error_on_rank_0_alone_stops_every_rank(tmp_path):
    """Rank 0's disk is full: rank 0 reports it and rank 1 stops with it, instead of waiting in a collective."""
    write_cifar10(tmp_path / "data", n_train=80, n_test=20)
    done = torchrun(str(Path(__file__).with_name("ddp_worker.py")), "full-disk", str(tmp_path / "data"),
                    str(tmp_path / "run"), run=tmp_path / "run", timeout=180)  # fmt: skip
    assert done.returncode != 0
    assert "No space left on device" in done.stderr
    assert "stopped because rank 0 failed: CheckpointError: could not write checkpoint" in done.stderr
