"""The fast recipe's parts: the linear (triangular) schedule and test-time augmentation."""

from __future__ import annotations

import json

import pytest
import torch

from densenets.engine.loop import evaluate
from densenets.engine.recipes import Recipe
from densenets.engine.runtime import make_runtime
from densenets.engine.schedule import lr_at
from densenets.engine.trainer import fit
from densenets.engine.tta import tta_views
from densenets.errors import ConfigError
from densenets.models import create_model

from .fakedata import write_cifar10
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
