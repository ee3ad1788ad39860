"""The fast recipe's parts: the linear (triangular) schedule, test-time augmentation, progressive
resizing and the whitened stem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from densenets.cli.main import main
from densenets.data import DataSpec, build_data
from densenets.data.loaders import make_train_loader
from densenets.data.resident import progressive_size
from densenets.engine import runtime as runtime_module
from densenets.engine.loop import evaluate
from densenets.engine.recipes import RECIPES, Recipe
from densenets.engine.reporting import progressive_line
from densenets.engine.runtime import make_runtime
from densenets.engine.schedule import lr_at
from densenets.engine.trainer import fit
from densenets.engine.tta import tta_views
from densenets.errors import ConfigError
from densenets.models import create_model
from densenets.models.whiten import whiten_stem

from .fakedata import write_cifar10, write_image_folder
from .test_training import TINY_MODEL, tiny_recipe


def test_linear_schedule_ramps_up_then_falls_in_a_straight_line_to_zero():
    recipe = Recipe(lr=0.4, epochs=4, schedule="linear", warmup_epochs=1.0)  # 10 steps an epoch: 40 steps
    rates = [lr_at(step, recipe, 10) for step in range(40)]
    assert rates[:10] == pytest.approx([0.4 * (s + 1) / 10 for s in range(10)])
    assert rates[10:] == pytest.approx([0.4 * (1 - (s - 10) / 30) for s in range(10, 40)])
    assert rates[9] == pytest.approx(0.4) and rates[-1] == pytest.approx(0.4 / 30)


def test_unknown_schedule_and_tta_are_refused_by_name():
    with pytest.raises(ConfigError, match="schedule must be one of step, cosine, linear"):
        Recipe(schedule="onecycle")
    with pytest.raises(ConfigError, match="tta must be one of none, flip, flip-translate"):
        Recipe(tta="rotate")


def test_tta_views_are_the_image_its_mirror_and_one_pixel_shifts_with_zeros_coming_in():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    assert torch.equal(tta_views(x, "none")[:, 0], x)
    flip = tta_views(x, "flip")
    assert flip.shape == (2, 2, 3, 4, 5) and torch.equal(flip[:, 1], x.flip(-1))
    six = tta_views(x, "flip-translate")
    assert six.shape == (2, 6, 3, 4, 5)
    up_left, down_right = six[:, 2], six[:, 3]  # the image moved by (-1, -1) and (+1, +1)
    assert torch.equal(up_left[..., :-1, :-1], x[..., 1:, 1:]) and up_left[..., -1, :].abs().sum() == 0
    assert torch.equal(down_right[..., 1:, 1:], x[..., :-1, :-1]) and down_right[..., 0, :].abs().sum() == 0
    assert torch.equal(six[:, 5][..., 1:, 1:], x.flip(-1)[..., :-1, :-1])
    ten = tta_views(x, "flip-translate-10")
    assert ten.shape == (2, 10, 3, 4, 5) and torch.equal(ten[:, :4], six[:, :4])
    up_right, down_left = ten[:, 4], ten[:, 5]  # the other diagonal: (-1, +1) and (+1, -1)
    assert torch.equal(up_right[..., :-1, 1:], x[..., 1:, :-1]) and up_right[..., :, 0].abs().sum() == 0
    assert torch.equal(down_left[..., 1:, :-1], x[..., :-1, 1:]) and down_left[..., 0, :].abs().sum() == 0
    assert torch.equal(ten[:, 9][..., 1:, :-1], x.flip(-1)[..., :-1, 1:])


def test_evaluate_with_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = create_model(TINY_MODEL).eval()
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    runtime = make_runtime(Recipe(device="cpu"))
    got = evaluate(model, [(images, labels)], runtime, tta="flip")
    with torch.no_grad():
        logits = (model(images) + model(images.flip(-1))) / 2
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert got["loss"] == pytest.approx(expected, rel=1e-5)
    assert got["error"] == pytest.approx(100.0 * (logits.argmax(1) != labels).float().mean().item())
    plain = evaluate(model, [(images, labels)], runtime)
    assert plain["loss"] != pytest.approx(got["loss"], rel=1e-6)  # the mirror changed something


def test_a_run_with_tta_reports_the_final_figure_with_and_without_it(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=40, n_test=30)
    fit(tiny_recipe(tmp_path / "data", epochs=1, tta="flip"), tmp_path / "run", show_progress=False)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["tta"] == "flip" and 0 <= saved["final_test_error_tta"] <= 100
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert saved["final_test_error"] == last["test_error"]  # the plain figure stays the headline
    out = capsys.readouterr().out
    assert f"final test error {saved['final_test_error']:.2f}%" in out
    assert f"final test error with flip test-time augmentation {saved['final_test_error_tta']:.2f}%" in out


def test_with_a_validation_split_the_run_measures_ema_and_every_tta_mode_on_it(tmp_path, capsys):
    """Settings are chosen on validation: the trained weights beside their EMA (on the validation split
    each epoch, on the test set at the end only), and each TTA mode."""
    write_cifar10(tmp_path / "data", n_train=60, n_test=20)
    recipe = tiny_recipe(tmp_path / "data", epochs=2, tta="flip", ema_decay=0.9, val_split=20)
    fit(recipe, tmp_path / "run", show_progress=False)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    first, last = (json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert 0 <= first["raw_val_error"] <= 100 and "raw_test_error" not in first
    assert 0 <= last["raw_val_error"] <= 100 and 0 <= last["raw_test_error"] <= 100
    by_mode = saved["final_val_error_by_tta"]
    assert list(by_mode) == ["none", "flip", "flip-translate", "flip-translate-10"]
    assert by_mode["none"] == pytest.approx(last["val_error"])  # the same (EMA) weights read the same split
    out = capsys.readouterr().out
    assert f"(EMA weights; without EMA val err {first['raw_val_error']:5.2f}%)" in out
    assert f"without EMA test err {last['raw_test_error']:5.2f}%, val err {last['raw_val_error']:5.2f}%" in out
    chosen_on = "final validation error by test-time augmentation (choose the mode on these)"
    assert f"{chosen_on}: none {by_mode['none']:.2f}%" in out


def test_progressive_sizes_share_the_epochs_in_equal_parts():
    sizes = (16, 16, 20, 24, 28, 32)
    assert [progressive_size(e, 12, sizes) for e in range(12)] == [16] * 4 + [20] * 2 + [24] * 2 + [28] * 2 + [32] * 2
    assert [progressive_size(e, 5, (16, 32)) for e in range(5)] == [16, 16, 16, 32, 32]
    assert progressive_size(3, 12, None) is None
    line = progressive_line(sizes, 12)
    assert "epochs 1-4 at 16 px, 5-6 at 20 px, 7-8 at 24 px, 9-10 at 28 px, 11-12 at 32 px" in line


def test_a_progressive_run_trains_each_epoch_at_its_size_and_counts_each_shape(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=40, n_test=30)
    fit(tiny_recipe(tmp_path / "data", epochs=2, train_sizes=(16, 32)), tmp_path / "run", show_progress=False)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    shapes = saved["train_flops_by_shape"]
    assert set(shapes) == {"20x3x16x16 float32, amp none, 1 chunk", "20x3x32x32 float32, amp none, 1 chunk"}
    small, full = (shapes[k] for k in sorted(shapes))
    assert small["steps"] == full["steps"] == 2
    assert small["flops_per_step"] < full["flops_per_step"] / 3  # a quarter of the pixels
    assert "progressive resizing: epochs 1 at 16 px, 2 at 32 px" in capsys.readouterr().out


def test_resident_batches_come_at_the_epochs_size(tmp_path):
    write_cifar10(tmp_path / "data", n_train=40, n_test=10)
    data = build_data(DataSpec(name="cifar10+", data_dir=str(tmp_path / "data")))
    loader = make_train_loader(data, "resident", 20, 0, torch.device("cpu"), train_sizes=(16, 32), epochs=2)
    for epoch, size in ((0, 16), (1, 32)):
        loader.start_epoch(epoch, 0)
        images, _ = next(iter(loader))
        assert images.shape == (20, 3, size, size)
    with pytest.raises(ConfigError, match="needs the resident loader"):
        make_train_loader(data, "workers", 20, 0, torch.device("cpu"), train_sizes=(16, 32), epochs=2)
    with pytest.raises(ConfigError, match=r"must end at the input size .*32 px"):
        make_train_loader(data, "resident", 20, 0, torch.device("cpu"), train_sizes=(16, 24), epochs=2)


def test_bad_train_sizes_and_whitening_over_weights_are_refused():
    with pytest.raises(ConfigError, match="train_sizes takes 1 to epochs"):
        Recipe(epochs=4, train_sizes=(4, 32))
    with pytest.raises(ConfigError, match=r"train_sizes takes 1 to epochs \(1\)"):
        Recipe(epochs=1, train_sizes=(16, 32))
    with pytest.raises(ConfigError, match="whiten_stem initialises a network from random weights"):
        Recipe(whiten_stem=True, pretrained=True)


def correlated_images(n: int = 64, size: int = 12) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are strongly correlated, as natural ones are."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.randn(n, 1, size + 2, size + 2, generator=g), 3, 1)
    return torch.cat([base, 0.8 * base + 0.2 * torch.randn(n, 1, size, size, generator=g), -base], 1)


def test_the_whitened_stem_gives_the_training_patches_unit_uncorrelated_outputs():
    torch.manual_seed(0)
    model = create_model(TINY_MODEL)  # stem: 3x3 conv, 3 -> 8 maps
    images = correlated_images()

    def output_covariance():
        out = torch.nn.functional.conv2d(images, model.features.conv0.weight.detach())  # no padding: patches only
        flat = out.transpose(0, 1).reshape(8, -1)
        return torch.cov(flat)

    assert not torch.allclose(output_covariance()[:4, :4], torch.eye(4), atol=0.1)  # the default start is not white
    line = whiten_stem(model, images, eps=1e-8)
    cov = output_covariance()
    assert torch.allclose(cov[:4, :4], torch.eye(4), atol=1e-3)
    weight = model.features.conv0.weight
    assert torch.equal(weight[4:], -weight[:4])  # pairs of opposite sign
    assert line.startswith("stem: conv0's 8 of 8 filters whiten 3x3 patches (top 4 principal directions")
    with pytest.raises(ConfigError, match="needs a 2-D DenseNet"):
        whiten_stem(create_model(TINY_MODEL, spatial_dims=3), images)


def test_patch_covariance_of_many_large_images_samples_patches_and_agrees_with_every_patch(monkeypatch):
    """Past PATCH_VALUES the covariance comes from a sample of patches (DenseNet-121's 7x7 stem at
    224 px has 50,176 patches an image): close to the exact one, in unfold's (C, k, k) order."""
    from densenets.models import whiten

    images = correlated_images(n=32, size=20) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]  # channels apart
    exact = whiten.patch_covariance(images, 3)
    unfolded = torch.nn.functional.unfold(images.double(), 3).transpose(1, 2).reshape(-1, 27)
    assert torch.allclose(exact, torch.cov(unfolded.T, correction=0), atol=1e-10)  # every patch: exact
    monkeypatch.setattr(whiten, "PATCH_VALUES", 27 * 4000)  # 4,000 patches of 10,368
    monkeypatch.setattr(whiten, "CHUNK_VALUES", 27 * 500)  # in chunks
    sampled = whiten.patch_covariance(images, 3)
    assert torch.linalg.matrix_norm(sampled - exact) < 0.1 * torch.linalg.matrix_norm(exact)
    assert torch.equal(sampled, whiten.patch_covariance(images, 3))  # the same sample every time
    line = whiten_stem(create_model(TINY_MODEL), images)
    assert "from 32 training images (a random 4,000 of their 10,368 patches)" in line


def test_a_run_with_a_whitened_stem_says_so_and_records_it(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=40, n_test=30)
    recipe = tiny_recipe(
        tmp_path / "data", epochs=1, whiten_stem=True, weight_decay=5e-4, decay_norm_bias=False,
        bias_lr_scale=16.0, freeze_norm_scale=True,
    )  # fmt: skip
    fit(recipe, tmp_path / "run", show_progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["whiten_stem"] is True and config["recipe"]["decay_norm_bias"] is False
    assert config["recipe"]["bias_lr_scale"] == 16.0 and config["recipe"]["freeze_norm_scale"] is True
    out = capsys.readouterr().out
    assert "stem: conv0's 8 of 8 filters whiten 3x3 patches" in out
    assert "weight decay 0.0005 on convolution and linear weights only (BatchNorm and biases: none)" in out
    assert "BatchNorm shifts and biases at 16x the lr; BatchNorm scales held at 1 (lr 0)" in out


def test_image_folders_from_random_weights_train_with_the_fast_recipes_settings_a_whitened_stem_and_muon(
    tmp_path, capsys
):
    from densenets.engine import base_recipe, resolve_recipe
    from densenets.engine.recipes import resolve_from_scratch

    folder = write_image_folder(tmp_path / "folder", classes=2, per_class=4, size=12, split=False)
    recipe = resolve_recipe(
        base_recipe(data="imagefolder"), model=TINY_MODEL, data_dir=str(folder), image_size=12, epochs=1,
        batch_size=4,
    )  # fmt: skip
    fit(recipe, tmp_path / "run", show_progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]
    assert config["whiten_stem"] is True and config["label_smoothing"] == 0.1 and config["optimizer"] == "muon"
    assert (config["schedule"], config["warmup_epochs"], config["weight_decay"]) == ("linear", 1.0, 5e-4)
    out = capsys.readouterr().out
    assert "stem: conv0's 8 of 8 filters whiten" in out and "optimizer: Muon for the convolution filters" in out
    # volumes and networks that start from weights keep their stem and take SGD; an explicit choice stands
    auto = base_recipe(data="csv")
    for start in (resolve_from_scratch(auto, spatial_dims=3), resolve_from_scratch(replace(auto, weights="w.pt"), 2)):
        assert (start.whiten_stem, start.optimizer) == (False, "sgd")
    chosen = resolve_from_scratch(replace(auto, whiten_stem=False, optimizer="sgd"), spatial_dims=2)
    assert (chosen.whiten_stem, chosen.optimizer) == (False, "sgd")
    finetune = base_recipe(data="imagefolder", pretrained=True)  # the finetune recipe
    assert (finetune.whiten_stem, finetune.optimizer) == (False, "sgd")


def test_bf16_on_a_cpu_without_native_bf16_is_said(tmp_path, monkeypatch):
    without, with_bf16 = tmp_path / "old", tmp_path / "new"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert runtime_module.cpu_has_native_bf16(str(without)) is False
    assert runtime_module.cpu_has_native_bf16(str(with_bf16)) is True
    assert runtime_module.cpu_has_native_bf16(str(tmp_path / "missing")) is None
    runtime = make_runtime(Recipe(device="cpu", amp="bf16"))
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: False)
    assert "emulated, usually slower than fp32" in runtime_module.bf16_cpu_note(runtime)
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: True)
    assert runtime_module.bf16_cpu_note(runtime) is None
    assert runtime_module.bf16_cpu_note(make_runtime(Recipe(device="cpu"))) is None


def test_the_fast_recipe_is_a_named_recipe_every_field_overridable(tmp_path, capsys):
    main(["train", "--recipe", "fast", "--data-dir", str(tmp_path), "--dry-run"])
    shown = json.loads(capsys.readouterr().out)
    fast = RECIPES["fast"]
    assert shown["model"] == fast.model and shown["data"] == "cifar10+" and shown["train_sizes"][-1] == 32
    assert shown["whiten_stem"] is True and shown["tta"] == "flip-translate" and shown["schedule"] == "linear"
    assert (shown["translate"], shown["flip"], shown["ema_decay"]) == (2, "alternate", 0.99)
    assert shown["decay_norm_bias"] is False and (shown["optimizer"], shown["muon_lr"]) == ("muon", 0.02)
    main(["train", "--recipe", "fast", "--data-dir", str(tmp_path), "--model", "densenet_bc100_k12"]
         + ["--epochs", "30", "--no-whiten-stem", "--train-sizes", "32", "--decay-norm-bias", "--optimizer", "sgd"]
         + ["--dry-run"])  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    picked = ("model", "epochs", "whiten_stem", "train_sizes", "decay_norm_bias", "optimizer")
    assert [shown[k] for k in picked] == ["densenet_bc100_k12", 30, False, [32], True, "sgd"]


def test_the_gpu_script_runs_the_fast_recipe_in_smoke_mode_on_the_cpu(tmp_path):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    script = Path(__file__).resolve().parents[1] / "docs" / "fast" / "gpu_fast.sh"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run(
        ["bash", str(script), "--smoke", str(tmp_path / "data"), str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = tmp_path / "out" / "fast-bc100"
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["whiten_stem"] is True and config["recipe"]["train_sizes"][-1] == 32
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_flops"] > 0 and summary["steps"] == 4


@pytest.mark.parametrize("decay_norm_bias", [True, False])
def test_decay_norm_bias_off_leaves_batchnorm_and_biases_out_of_the_weight_decay(decay_norm_bias):
    from densenets.engine.build_run import _make_optimizer

    torch.manual_seed(0)
    model = create_model(TINY_MODEL, num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.add_(1.0)  # BatchNorm shifts and biases start at 0: nothing to decay
    recipe = Recipe(lr=0.1, weight_decay=0.5, decay_norm_bias=decay_norm_bias)
    optimizer = _make_optimizer(recipe, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (model(torch.randn(2, 3, 8, 8)) * 0).sum().backward()  # zero gradients: only the decay moves a weight
    optimizer.step()
    for name, p in model.named_parameters():
        shrunk = p.abs().sum() < before[name].abs().sum()
        assert shrunk == (decay_norm_bias or p.ndim > 1), name
    vectors = sum(p.numel() for p in model.parameters() if p.ndim <= 1)
    assert vectors > 0 and sum(len(g["params"]) for g in optimizer.param_groups) == len(before)


def test_bias_lr_scale_and_frozen_norm_scales_act_on_their_own_parameters():
    from densenets.engine.build_run import _make_optimizer
    from densenets.engine.loop import TrainState, train_step

    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    moved = {}
    for scale, freeze in [(1.0, False), (16.0, True)]:
        torch.manual_seed(0)
        model = create_model(TINY_MODEL, num_classes=3)
        recipe = Recipe(lr=0.01, weight_decay=0.0, bias_lr_scale=scale, freeze_norm_scale=freeze)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        state = TrainState(model=model, optimizer=_make_optimizer(recipe, model))
        train_step(state, x, y, make_runtime(Recipe(device="cpu")), lr=recipe.lr)
        moved[scale] = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    norm_scales = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert norm_scales and len(norm_scales) < len(moved[1.0])
    for name, delta in moved[16.0].items():
        if name in norm_scales:  # BatchNorm scales held at 1
            assert moved[1.0][name].abs().sum() > 0 and delta.abs().sum() == 0, name
        elif delta.ndim > 1:  # convolution and linear weights: the same first step
            assert torch.allclose(delta, moved[1.0][name], atol=1e-7), name
        else:  # BatchNorm shifts and the classifier's bias: 16 times as far
            assert torch.allclose(delta, 16 * moved[1.0][name], rtol=1e-4, atol=1e-7), name


def test_bias_lr_scale_must_be_positive():
    with pytest.raises(ConfigError, match="bias_lr_scale"):
        Recipe(bias_lr_scale=0)
