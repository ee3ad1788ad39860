"""Issue 22: every command says which weights it used and what it assumed; a run folder's
checkpoint is described as what it is; a grey-image check looks across the classes."""

import json

import pytest
import torch
from PIL import Image

from densenets import create_model
from densenets.cli import main
from densenets.data.datasets import folder_is_grey
from densenets.engine.loading import choose_checkpoint

from .fakedata import write_cifar10

MODEL = "densenet_bc16_k4"


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "red.png"
    Image.new("RGB", (32, 32), (200, 20, 20)).save(path)
    return path


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory):
    """A checkpoint as a run with ``ema_decay`` writes it: the trained weights and their EMA."""
    model = create_model(MODEL, num_classes=3)
    path = tmp_path_factory.mktemp("ema") / "last.pt"
    config = {
        "recipe": {"model": MODEL, "data": "cifar10", "ema_decay": 0.9},
        "model": model.config.to_dict(),
        "data": {
            "preprocess": {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": None, "crop": 32, "channels": 3},
            "class_names": ["a", "b", "c"],
        },
    }
    state = model.state_dict()
    torch.save({"model": state, "ema": state, "ema_updates": 7, "step": 7, "epoch": 1, "config": config}, path)
    return path


EMA_LINE = "weights: the EMA of its weights (decay 0.9) over 7 steps, as the run reported"


def test_predict_says_it_used_the_ema(ema_checkpoint, image, capsys):
    code, out, _ = run_cli(capsys, "predict", ema_checkpoint, image)
    assert code == 0 and EMA_LINE in out
    code, out, err = run_cli(capsys, "predict", ema_checkpoint, image, "--json")
    assert code == 0 and EMA_LINE in err
    json.loads(out)  # stdout stays one JSON document


def test_export_says_it_exported_the_ema(ema_checkpoint, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "export", ema_checkpoint, "--format", "safetensors", "--out", tmp_path / "m.st")
    assert code == 0 and EMA_LINE in out


def test_analyze_says_it_analysed_the_ema(ema_checkpoint, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "analyze", ema_checkpoint, "--out", tmp_path / "analysis")
    assert code == 0 and EMA_LINE in out


def test_a_bare_cifar_state_dict_says_what_normalisation_was_assumed(image, tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save(create_model(MODEL, num_classes=10).state_dict(), path)
    code, out, _ = run_cli(capsys, "predict", path, image, "--model", MODEL)
    assert code == 0
    assert "weights.pth records no normalisation or class names: assumed 32px images, mean [0.5, 0.5, 0.5]" in out
    assert "weights trained with another normalisation give wrong answers" in out
    write_cifar10(tmp_path / "data", n_train=10, n_test=10)
    code, out, _ = run_cli(capsys, "eval", path, "--model", MODEL, "--data", "cifar10", "--data-dir", tmp_path / "data")
    assert code == 0 and "note: weights.pth records no normalisation" in out


def write_run(run, *, val_split=0, epochs=300, max_steps=0, last_step, last_epoch, records, best=False):
    """A run folder as training leaves it: config.json, metrics.jsonl, last.pt (and best.pt)."""
    run.mkdir()
    recipe = {"val_split": val_split, "epochs": epochs, "max_steps": max_steps}
    (run / "config.json").write_text(json.dumps({"recipe": recipe}))
    lines = [json.dumps({"epoch": e, "step": s, "test_error": 50.0}) for e, s in records]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    torch.save({"step": last_step, "epoch": last_epoch}, run / "last.pt")
    if best:
        torch.save({"step": records[-1][1], "epoch": records[-1][0]}, run / "best.pt")
    return run


def test_a_run_with_a_validation_split_but_no_best_pt_is_named_so(tmp_path):
    run = write_run(tmp_path / "run", val_split=500, last_step=3, last_epoch=0, records=[])
    path, reason = choose_checkpoint(run)
    assert path.name == "last.pt"
    assert "no validation split" not in reason
    assert "validation split, but holds no best.pt" in reason


def test_a_max_steps_stop_inside_an_epoch_is_not_called_the_final_epoch(tmp_path):
    run = write_run(tmp_path / "run", max_steps=7, last_step=7, last_epoch=1, records=[(1, 4)], best=True)
    path, reason = choose_checkpoint(run)
    assert path.name == "last.pt" and "final epoch" not in reason
    assert "step 7, inside epoch 2 of 300, where max_steps=7 stopped it" in reason


def test_an_epoch_boundary_says_which_epoch(tmp_path):
    finished = write_run(tmp_path / "done", epochs=2, last_step=8, last_epoch=2, records=[(1, 4), (2, 8)])
    assert choose_checkpoint(finished)[1].startswith("last.pt: the final epoch (")
    early = write_run(tmp_path / "early", epochs=300, last_step=8, last_epoch=2, records=[(1, 4), (2, 8)])
    reason = choose_checkpoint(early)[1]
    assert "epoch 2 of 300" in reason and "final epoch" not in reason


def test_folder_is_grey_looks_across_the_classes(tmp_path):
    """Many grey classes and one colour class: a sample of the first files of a listing is
    often all from one grey class; one spread over the class folders sees the colour."""
    (tmp_path / "colour").mkdir()
    for i in range(2):
        Image.new("RGB", (4, 4), (200, 10, 10)).save(tmp_path / "colour" / f"{i}.png")
    for c in "abcd":
        (tmp_path / c).mkdir()
        for i in range(33):
            Image.new("L", (4, 4), 100).save(tmp_path / c / f"{i}.png")
    assert not folder_is_grey(tmp_path)
    for i in range(2):
        Image.new("L", (4, 4), 100).save(tmp_path / "colour" / f"{i}.png")
    assert folder_is_grey(tmp_path)
