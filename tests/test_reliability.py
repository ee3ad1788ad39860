"""Faults, bad input and untrusted files: nothing runs a stranger's code, nothing loses a run."""

import errno
import io
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from densenets import create_model
from densenets.cli import main
from densenets.data import DataSpec, build_data
from densenets.engine import base_recipe, resolve_recipe
from densenets.engine import checkpoint as checkpoint_module
from densenets.engine import loop as loop_module
from densenets.engine.checkpoint import load_checkpoint
from densenets.engine.loading import load_model
from densenets.engine.prediction import predict_images
from densenets.engine.trainer import fit
from densenets.errors import CheckpointError, DataError, TrainingDiverged

from .fakedata import write_cifar10, write_image_folder

TRAIN = [sys.executable, "-m", "densenets", "train", "--no-progress"]


class _Evil:
    """Unpickling this creates a marker file: the stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    write_cifar10(root / "data", n_train=40, n_test=20)
    recipe = resolve_recipe(base_recipe("cifar"), model="densenet_bc16_k4", data="cifar10+",
                            data_dir=str(root / "data"), epochs=1, batch_size=20, workers=0)  # fmt: skip
    fit(recipe, root / "run", show_progress=False)
    return root / "run"


# ---------------------------------------------------------------------------------------
# untrusted files
# ---------------------------------------------------------------------------------------


def test_pickled_code_in_a_checkpoint_never_runs(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(evil)
    for args in (["eval", evil], ["predict", evil, "x.png"], ["analyze", evil], ["export", evil, "--format", "onnx"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "refused to load" in err and str(evil) in err and "Traceback" not in err
    with pytest.raises(CheckpointError):
        create_model("densenet121", weights=str(evil))
    assert not marker.exists()
    # the same payload in a plain pickle file (not even a zip) is refused as well
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_resume_from_a_poisoned_run_is_refused(small_run, tmp_path, capsys):
    run = tmp_path / "poisoned"
    run.mkdir()
    (run / "config.json").write_text((small_run / "config.json").read_text())
    marker = tmp_path / "code-ran"
    torch.save({"model": _Evil(marker)}, run / "last.pt")
    code, _, err = run_cli(capsys, "train", "--resume", run)
    assert code == 2 and "refused to load" in err and not marker.exists()


def test_damaged_checkpoints_give_one_clear_line(small_run, tmp_path, capsys):
    good = (small_run / "last.pt").read_bytes()
    cases = {
        "empty.pt": (b"", "file is empty"),
        "truncated.pt": (good[: len(good) // 2], "truncated or corrupted"),
        "garbage.pt": (os.urandom(4096), "checkpoint"),
        "header.pt": (b"\x00" * 64 + good[64:], "checkpoint"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, _, err = run_cli(capsys, "eval", path)
        assert code == 2, name
        assert expected in err and str(path) in err and len(err.strip().splitlines()) == 1, (name, err)
    code, _, err = run_cli(capsys, "eval", tmp_path / "missing.pt")
    assert code == 2 and "no such file" in err


def test_wrong_architecture_names_keys_and_the_model_in_the_file(small_run, tmp_path, capsys):
    with pytest.raises(CheckpointError) as info:
        create_model("densenet121", weights=str(small_run / "last.pt"))
    message = str(info.value)
    assert "635 missing keys" in message and "keys of another shape" in message
    assert "seems to hold densenet_bc16_k4" in message and "do not fit densenet121" in message
    big = tmp_path / "densenet121.pth"
    torch.save(create_model("densenet121").state_dict(), big)
    with pytest.raises(CheckpointError, match="unexpected keys.*seems to hold densenet121"):
        create_model("densenet_bc16_k4", weights=str(big))
    with pytest.raises(CheckpointError, match="another shape"):
        create_model("densenet_bc16_k4", num_classes=7, weights=str(small_run / "last.pt"))


# ---------------------------------------------------------------------------------------
# faults during training
# ---------------------------------------------------------------------------------------


def _train_cmd(data: Path, run: Path, *extra: str) -> list[str]:
    return [*TRAIN, "--model", "densenet_bc16_k4", "--data", "cifar10+", "--data-dir", str(data), "--epochs", "2",
            "--batch-size", "10", "--workers", "0", "--run-dir", str(run), *extra]  # fmt: skip


def _weights(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def test_sigkill_at_random_moments_then_resume_matches(tmp_path):
    """Kill -9 at random times (many land inside a checkpoint write); every resume must
    find an intact checkpoint and end with the uninterrupted run's weights."""
    data = tmp_path / "data"
    write_cifar10(data, n_train=300, n_test=20)
    subprocess.run(_train_cmd(data, tmp_path / "full"), check=True, capture_output=True)
    expected = _weights(tmp_path / "full")
    rng = random.Random(1234)
    tried = resumed = during_write = 0
    for trial in range(5):
        run = tmp_path / f"cut{trial}"
        proc = subprocess.Popen(_train_cmd(data, run, "--checkpoint-every", "1"), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        if trial % 2:  # odd trials: at a random moment
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # even trials: as soon as a checkpoint write is under way (its temporary file exists)
            skip = rng.randint(0, 5)
            while proc.poll() is None:
                if any(run.glob(".*.pt.tmp-*")):
                    if skip == 0:
                        break
                    skip -= 1
                    while any(run.glob(".*.pt.tmp-*")):
                        pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"trial {trial}: the run ended before the kill"
        tried += 1
        during_write += any(run.glob(".last.pt.tmp-*")) or any(run.glob(".best.pt.tmp-*"))
        ckpt = torch.load(run / "last.pt", weights_only=True)  # the last good checkpoint is intact
        assert ckpt["step"] >= 1
        done = subprocess.run([*TRAIN, "--resume", str(run)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert not any(run.glob(".*.tmp-*"))  # stale temporaries cleaned up
        got = _weights(run)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
        resumed += 1
    print(
        f"kills tried {tried}, resumed to identical weights {resumed}, killed inside a checkpoint write {during_write}"
    )
    assert tried == resumed == 5
    assert during_write >= 1, "no kill landed inside a checkpoint write: the test did not test atomicity"


def test_sigint_saves_and_exits_cleanly_then_resumes(tmp_path):
    data = tmp_path / "data"
    write_cifar10(data, n_train=300, n_test=20)
    subprocess.run(_train_cmd(data, tmp_path / "full"), check=True, capture_output=True)
    run = tmp_path / "cut"
    proc = subprocess.Popen(_train_cmd(data, run, "--checkpoint-every", "5"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not (run / "last.pt").exists():
        assert proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    step = torch.load(run / "last.pt", weights_only=True)["step"]
    assert f"interrupted at step {step}" in err
    done = subprocess.run([*TRAIN, "--resume", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected, got = _weights(tmp_path / "full"), _weights(run)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def _train_cli(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--no-progress", "--model", "densenet_bc16_k4", "--data", "cifar10+", "--data-dir", str(data),
            "--epochs", "1", "--batch-size", "10", "--workers", "0", "--run-dir", str(run), *extra]  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker signal masks from Linux's /proc")
def test_sigint_from_the_terminal_with_dataloader_workers_saves_and_exits_130(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group, DataLoader workers included."""
    data = tmp_path / "data"
    write_cifar10(data, n_train=300, n_test=20)
    run = tmp_path / "cut"
    cmd = [sys.executable, "-m", "densenets",
           *_train_cli(data, run, "--checkpoint-every", "2", "--workers", "2", "--loader", "workers")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while not (run / "last.pt").exists() or not children.read_text().split():
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    # The workers leave Ctrl-C to the main process (a worker that dies of it mid-fetch makes the
    # main process fail with "DataLoader worker exited unexpectedly" instead of saving).
    for pid in children.read_text().split():
        ignored = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("SigIgn:")).split()[1], 16)  # fmt: skip
        assert ignored & (1 << (signal.SIGINT - 1)), f"DataLoader worker {pid} would die of Ctrl-C"
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: the main process and its workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = torch.load(run / "last.pt", weights_only=True)["step"]
    assert f"interrupted at step {step}" in err and "Traceback" not in err


def test_a_run_folder_is_locked_while_a_run_uses_it(tmp_path, capsys):
    from densenets.engine.runfolder import RunFolder

    write_cifar10(tmp_path / "data", n_train=20, n_test=10)
    run = tmp_path / "run"
    holder = RunFolder(run)
    holder.open()  # another densenets train holds the folder
    code, _, err = run_cli(capsys, *_train_cli(tmp_path / "data", run))
    assert code == 2 and "is in use by another densenets train" in err and len(err.strip().splitlines()) == 1
    assert not (run / "config.json").exists()
    holder.close()
    # a lock left by a process that died (SIGKILL) is no obstacle: the kernel drops it with the process
    crash = "import os, signal, sys; from densenets.engine.runfolder import RunFolder; "
    crash += "RunFolder(sys.argv[1]).open(); os.kill(os.getpid(), signal.SIGKILL)"
    done = subprocess.run([sys.executable, "-c", crash, str(run)])
    assert done.returncode == -signal.SIGKILL and (run / ".lock").exists()
    code, _, err = run_cli(capsys, *_train_cli(tmp_path / "data", run))
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data", "cifar10", "--data-dir", "{tmp}/missing"], "CIFAR-10 not found"),
        (["--model", "densenet_bc98_k12"], "depth 98 is impossible"),
        (["--data", "imagenett"], "unknown data set"),
    ],
)
def test_a_train_that_fails_before_its_first_step_leaves_no_folder(tmp_path, capsys, args, expected):
    run = tmp_path / "runs" / "new"
    code, _, err = run_cli(capsys, "train", "--no-progress", "--run-dir", run, *(a.format(tmp=tmp_path) for a in args))
    assert code == 2 and expected in err
    assert not (tmp_path / "runs").exists()


def test_a_run_failing_before_its_first_checkpoint_removes_the_folder_it_created(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    recipe = resolve_recipe(base_recipe("cifar"), model="densenet_bc16_k4", data="cifar10+",
                            data_dir=str(tmp_path / "data"), epochs=1, batch_size=10, workers=0)  # fmt: skip

    def broken_step(*args, **kwargs):
        raise DataError("an image of the first batch is unreadable")

    monkeypatch.setattr(loop_module, "train_step", broken_step)
    with pytest.raises(DataError):
        fit(recipe, tmp_path / "runs" / "a", show_progress=False)
    assert not (tmp_path / "runs").exists()
    existing = tmp_path / "mine"
    existing.mkdir()  # a folder the user made is never removed
    with pytest.raises(DataError):
        fit(recipe, existing, show_progress=False)
    assert existing.is_dir()


@pytest.mark.parametrize("poisoned", ["parameter", "buffer"])
def test_non_finite_weights_or_statistics_never_overwrite_a_good_checkpoint(tmp_path, monkeypatch, poisoned):
    """A NaN in a weight or in a BatchNorm running statistic (which leaves the training loss
    finite) is refused at save: last.pt keeps the previous step, byte for byte."""
    write_cifar10(tmp_path / "data", n_train=60, n_test=20)
    recipe = resolve_recipe(base_recipe("cifar"), model="densenet_bc16_k4", data="cifar10+",
                            data_dir=str(tmp_path / "data"), epochs=1, batch_size=10, workers=0,
                            checkpoint_every=1)  # fmt: skip
    real_step, saved = loop_module.train_step, {}

    def poisoning_step(state, *args, **kwargs):
        result = real_step(state, *args, **kwargs)
        if state.step == 2:  # the third step: checkpoints of steps 1 and 2 are on disk
            saved["bytes"] = (tmp_path / "run" / "last.pt").read_bytes()
            bn = state.model.features.denseblock2.denselayer1.norm1
            with torch.no_grad():
                (bn.weight if poisoned == "parameter" else bn.running_var)[0] = float("nan")
        return result

    monkeypatch.setattr(loop_module, "train_step", poisoning_step)
    with pytest.raises(TrainingDiverged, match="NaN or infinite by step 3") as info:
        fit(recipe, tmp_path / "run", show_progress=False)
    name = "weight" if poisoned == "parameter" else "running_var"
    assert f"features.denseblock2.denselayer1.norm1.{name}" in str(info.value)
    assert "last.pt (step 2)" in str(info.value)
    assert (tmp_path / "run" / "last.pt").read_bytes() == saved["bytes"]
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["step"] == 2 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", n_train=60, n_test=20)
    recipe = resolve_recipe(base_recipe("cifar"), model="densenet_bc16_k4", data="cifar10+",
                            data_dir=str(tmp_path / "data"), epochs=2, batch_size=10, workers=0,
                            checkpoint_every=2)  # fmt: skip
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            f.write(b"partial")  # a torn write, like a full disk part-way through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        fit(recipe, tmp_path / "run", show_progress=False)
    assert "previous file is untouched" in str(info.value)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["step"] == 4  # the second save (step 4) is the last good one
    assert not list((tmp_path / "run").glob(".*tmp*"))


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    write_cifar10(tmp_path / "data", n_train=60, n_test=20)
    recipe = resolve_recipe(base_recipe("cifar"), model="densenet_bc16_k4", data="cifar10+",
                            data_dir=str(tmp_path / "data"), epochs=3, batch_size=10, workers=0, lr=1e12,
                            checkpoint_every=1)  # fmt: skip
    with pytest.raises(TrainingDiverged) as info:
        fit(recipe, tmp_path / "run", show_progress=False)
    message = str(info.value)
    assert "step" in message and "lower --lr" in message and "--amp none" in message
    assert "voxels" not in message  # the 3-D bf16 hint is for volumes only
    # a checkpoint every step: the last finite one is kept, and the message points to it
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert f"by step {kept['step'] + 1}" in message and f"last.pt (step {kept['step']})" in message


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["summary", "densenet_bc99_k12"], "depth 99 is impossible"),
        (["summary", "densenet_bc100_k0"], "growth_rate must be a positive integer"),
        (["summary", "densenet121", "--set", "compression=1.5"], "compression must be in (0, 1]"),
        (["summary", "densenet121", "--set", "compression=0"], "compression must be in (0, 1]"),
        (["summary", "resnet51"], "unknown model 'resnet51'"),
        (["summary", "resnet110", "--set", "memory_efficient=true"], "a ResNet has no concatenations"),
        (["train", "--data", "imagenett"], "unknown data set 'imagenett'"),
        (["train", "--set", "lr=fast"], "'lr' must be float"),
        (["train", "--set", "epochs=2.5"], "'epochs' must be int"),
        (["train", "--set", "nesterov=maybe"], "'nesterov' must be bool"),
        (["train", "--set", "learning_rate=0.1"], "unknown recipe field"),
        (["train", "--model", "densenet_bc98_k12"], "depth 98 is impossible"),
        (["train", "--data", "imagefolder", "--data-dir", "/nonexistent/folder"], "image folder not found"),
    ],
)
def test_bad_settings_are_one_line_with_status_2(capsys, args, expected):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_image_folder_problems(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, split=False)
    (root / "class_0" / "notes.txt").write_text("not an image, ignored by extension")
    build_data(DataSpec("imagefolder", str(root), image_size=24))
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        build_data(DataSpec("imagefolder", str(root), image_size=24))
    (root / "empty_class").rmdir()
    bad = root / "class_1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    with pytest.raises(DataError, match="broken.png.*--skip-bad-images"):
        build_data(DataSpec("imagefolder", str(root), image_size=24))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        data = build_data(DataSpec("imagefolder", str(root), image_size=24, skip_bad_images=True))
    assert len(data.train) + len(data.test) == 8
    unchecked = build_data(DataSpec("imagefolder", str(root), image_size=24, verify_images=False))
    assert len(unchecked.train) + len(unchecked.test) == 9  # not checked up front: found when loaded
    with pytest.raises(DataError, match="broken.png"):
        for part in (unchecked.train, unchecked.test):
            for i in range(len(part)):
                part[i]


def _tensor_record_offset(checkpoint: bytes) -> int:
    """The offset of the first byte of tensor data (a weight) inside a torch.save zip file."""
    with zipfile.ZipFile(io.BytesIO(checkpoint)) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 0)
    local_header = 30 + len(record.filename) + int.from_bytes(checkpoint[record.header_offset + 28 :][:2], "little")
    return record.header_offset + local_header


def test_fuzz_garbage_checkpoints_and_images_are_handled(small_run, tmp_path, capsys):
    """Random and mangled bytes as checkpoints and images: every garbage checkpoint is refused in
    one line naming it (exit 2 from the CLI), never loaded; every garbage image is reported by name."""
    rng = random.Random(7)
    good = (small_run / "last.pt").read_bytes()
    png = io.BytesIO()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(png, format="PNG")
    png = png.getvalue()
    blobs = [os.urandom(rng.randint(1, 5000)) for _ in range(12)]
    blobs += [good[: rng.randint(1, len(good) - 1)] for _ in range(12)]  # truncations
    for _ in range(8):  # bytes flipped in the zip structure / pickle
        data = bytearray(good)
        for _ in range(20):
            data[rng.randint(0, min(len(data) - 1, 2000))] = rng.randint(0, 255)
        blobs.append(bytes(data))
    weights = _tensor_record_offset(good)
    for _ in range(4):  # one byte of a weight flipped: torch.load would read it as another model
        data = bytearray(good)
        data[weights + rng.randint(0, 15)] ^= 0xFF
        blobs.append(bytes(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", os.urandom(300))
    blobs += [buf.getvalue(), pickle.dumps([1, 2, 3]), pickle.dumps("text"), b"PK\x03\x04" + os.urandom(100)]
    for i, blob in enumerate(blobs):
        path = tmp_path / f"fuzz{i}.pt"
        path.write_bytes(blob)
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, (i, message)
        if 32 <= i < 36:
            assert "does not match its CRC-32 checksum" in message, (i, message)
    for i in range(0, len(blobs), 5):  # and through the CLI
        code, out, err = run_cli(capsys, "eval", tmp_path / f"fuzz{i}.pt")
        assert code == 2 and str(tmp_path / f"fuzz{i}.pt") in err and len(err.strip().splitlines()) == 1, (i, err)
    images = [os.urandom(rng.randint(0, 3000)) for _ in range(10)]
    idat = png.index(b"IDAT")
    pixels_end = idat + 4 + int.from_bytes(png[idat - 4 : idat], "big")  # cut after it, the pixels are whole
    images += [png[: rng.randint(1, pixels_end - 1)] for _ in range(10)]  # truncations inside the pixels
    image_paths = []
    for i, blob in enumerate(images):
        path = tmp_path / f"img{i}.{rng.choice(['png', 'jpg', 'gif', 'bmp'])}"
        path.write_bytes(blob)
        image_paths.append(path)
    (tmp_path / "good.png").write_bytes(png)
    records = predict_images(load_model(small_run), [*image_paths, tmp_path / "good.png"])
    assert [r["file"] for r in records] == [str(p) for p in [*image_paths, tmp_path / "good.png"]]
    assert [r for r in records[:-1] if "error" not in r] == []
    assert "predictions" in records[-1] and "error" not in records[-1]
    print(f"garbage checkpoints tried {len(blobs)}, all refused; garbage images tried {len(images)}, all reported")
