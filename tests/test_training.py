import json

import pytest
import torch

from densenets.engine import RECIPES, Recipe, base_recipe, lr_at, resolve_recipe
from densenets.engine.schedule import milestone_epochs
from densenets.engine.trainer import fit
from densenets.errors import ConfigError

from .fakedata import write_cifar10

TINY_MODEL = "densenet_bc16_k4"  # 2 bottleneck layers per block, k=4


def tiny_recipe(data_dir, **overrides) -> Recipe:
    settings = dict(
        model=TINY_MODEL, data="cifar10+", data_dir=str(data_dir), epochs=2, batch_size=20, workers=0, lr=0.1
    )
    settings.update(overrides)
    return resolve_recipe(base_recipe("cifar"), **settings)


def test_recipes_match_the_paper():
    cifar, svhn, imagenet = RECIPES["cifar"], RECIPES["svhn"], RECIPES["imagenet"]
    for r in (cifar, svhn, imagenet):
        assert (r.lr, r.momentum, r.nesterov, r.weight_decay, r.lr_gamma) == (0.1, 0.9, True, 1e-4, 0.1)
        assert r.init == "fan_out"
    assert (cifar.batch_size, cifar.epochs) == (64, 300)
    assert milestone_epochs(cifar) == [150, 225]
    assert (svhn.batch_size, svhn.epochs, svhn.val_split) == (64, 40, 6000)
    assert milestone_epochs(svhn) == [20, 30]
    assert (imagenet.batch_size, imagenet.epochs) == (256, 90)
    assert milestone_epochs(imagenet) == [30, 60]


def test_a_compressed_step_schedule_keeps_each_division_apart():
    """3 epochs of 10 steps: lr 0.1 until step 15 (50%), 0.01 until 22 (75%), then 0.001;
    300 epochs: the divisions fall on the first steps of epochs 150 and 225, as in the paper."""
    short = resolve_recipe(base_recipe("cifar"), epochs=3)
    rates = [lr_at(step, short, 10) for step in range(30)]
    assert rates[:15] == [0.1] * 15
    assert rates[15:22] == pytest.approx([0.01] * 7)
    assert rates[22:] == pytest.approx([0.001] * 8)
    paper = base_recipe("cifar")
    assert lr_at(150 * 782 - 1, paper, 782) == 0.1 and lr_at(150 * 782, paper, 782) == pytest.approx(0.01)
    assert lr_at(225 * 782 - 1, paper, 782) == pytest.approx(0.01)
    assert lr_at(225 * 782, paper, 782) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("data", "dropout"),
    [("cifar10", 0.2), ("cifar100", 0.2), ("svhn", 0.2), ("cifar10+", 0.0), ("cifar100+", 0.0), ("imagenet", 0.0)],
)
def test_dropout_exactly_when_there_is_no_augmentation(data, dropout):
    assert resolve_recipe(base_recipe(data=data)).dropout == dropout
    assert resolve_recipe(base_recipe(data=data), dropout=0.1).dropout == 0.1


def test_lr_schedule_divides_by_ten_at_half_and_three_quarters():
    r = RECIPES["cifar"]
    spe = 782  # 50,000 / 64
    assert lr_at(0, r, spe) == 0.1
    assert lr_at(150 * spe - 1, r, spe) == 0.1
    assert lr_at(150 * spe, r, spe) == pytest.approx(0.01)
    assert lr_at(225 * spe, r, spe) == pytest.approx(0.001)
    assert lr_at(300 * spe - 1, r, spe) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", "ten"),
        ("lr", "fast"),
        ("nesterov", "yes"),
        ("batch_size", 6.5),
        ("amp", "fp8"),
        ("epochs", 0),
        ("loader", "disk"),
    ],
)
def test_bad_recipe_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        resolve_recipe(base_recipe("cifar"), **{field: value})


def test_unknown_recipe_field():
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_recipe(base_recipe("cifar"), learning_rate=0.1)


def test_two_epochs_on_tiny_data_beat_chance(tmp_path):
    write_cifar10(tmp_path / "data", n_train=200, n_test=60)
    result = fit(tiny_recipe(tmp_path / "data", batch_size=10), tmp_path / "run", show_progress=False)
    assert result.summary["final_test_error"] < 50.0  # chance is 90%
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["model"] == TINY_MODEL and config["model"]["num_classes"] == 10
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    saved = json.loads((run / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert saved == result.summary
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 40 and ckpt["epoch"] == 2
    assert {"model", "optimizer", "rng", "config"} <= set(ckpt)
    best = torch.load(run / "best.pt", weights_only=True)
    records = [json.loads(line) for line in lines]
    assert best["model"].keys() == ckpt["model"].keys()  # no validation split: the epoch of the lowest test error
    assert records[best["epoch"] - 1]["test_error"] == min(r["test_error"] for r in records)


def test_run_can_be_repeated_from_its_config(tmp_path):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    a = fit(tiny_recipe(tmp_path / "data", epochs=1), tmp_path / "a", show_progress=False)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    b = fit(Recipe.from_dict(config["recipe"]), tmp_path / "b", show_progress=False)
    assert_same_weights(a.model, b.model)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("loader", ["workers", "resident"])
@pytest.mark.parametrize("data", ["cifar10", "cifar10+"])  # dropout / augmentation randomness
@pytest.mark.parametrize("stop_at", [3, 5, 7])  # mid-epoch, at an epoch end, mid-epoch 2
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, data, stop_at, loader):
    write_cifar10(tmp_path / "data", n_train=100, n_test=20)
    recipe = tiny_recipe(tmp_path / "data", data=data, loader=loader)
    full = fit(recipe, tmp_path / "full", show_progress=False)
    fit(resolve_recipe(recipe, max_steps=stop_at), tmp_path / "cut", show_progress=False)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == stop_at
    resumed = fit(None, tmp_path / "cut", resume=True, show_progress=False, resume_overrides={"max_steps": 0})
    assert_same_weights(full.model, resumed.model)
    assert resumed.summary["final_test_error"] == full.summary["final_test_error"]


def test_resume_refuses_to_change_the_protocol(tmp_path):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    fit(tiny_recipe(tmp_path / "data", max_steps=1), tmp_path / "run", show_progress=False)
    with pytest.raises(ConfigError, match="lr"):
        fit(None, tmp_path / "run", resume=True, resume_overrides={"lr": 1.0})


def test_bf16_autocast_and_memory_efficient_train_on_cpu(tmp_path):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    recipe = tiny_recipe(tmp_path / "data", amp="bf16", memory_efficient=True, channels_last=False, max_steps=2)
    result = fit(recipe, tmp_path / "run", show_progress=False)
    assert result.summary["steps"] == 2
    assert result.model.memory_efficient


def test_memory_efficient_full_from_the_command_line_reaches_the_runs_model(tmp_path, capsys):
    """--memory-efficient full: the trained model is at the full level (its transitions recompute
    too), config.json records "full" and repeats it; the flag alone is True, --no-... False."""
    from densenets.cli.main import build_parser
    from densenets.cli.train_cmd import recipe_from_args
    from densenets.engine.recipes import read_recipe_file
    from densenets.models.densenet import Transition

    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    common = ["train", "--model", TINY_MODEL, "--data", "cifar10", "--data-dir", str(tmp_path / "data")]
    common += ["--batch-size", "20", "--workers", "0", "--max-steps", "1"]

    def recipe(*flags):
        return recipe_from_args(build_parser().parse_args([*common, *flags]))

    full = recipe("--memory-efficient", "full")
    result = fit(full, tmp_path / "run", show_progress=False)
    assert result.model.memory_level == "full"
    assert {m.memory_efficient for m in result.model.modules() if isinstance(m, Transition)} == {"full"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]["memory_efficient"] == "full"
    assert read_recipe_file(tmp_path / "run" / "config.json").memory_efficient == "full"  # --config repeats it
    assert recipe("--memory-efficient").memory_efficient is True
    assert recipe("--memory-efficient", "full", "--no-memory-efficient").memory_efficient is False
    with pytest.raises(SystemExit):
        recipe("--memory-efficient", "half")
    assert "--memory-efficient takes no value (on) or 'full', got 'half'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="memory_efficient must be false, true or 'full', got 'half'"):
        recipe("--set", "memory_efficient=half")


def test_sync_bn_on_cpu_is_refused_clearly(tmp_path):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    with pytest.raises(ConfigError, match="sync_bn needs CUDA"):
        fit(tiny_recipe(tmp_path / "data", sync_bn=True, device="cpu"), tmp_path / "run", show_progress=False)


def test_cosine_schedule_with_warmup_is_a_function_of_the_step():
    recipe = Recipe(lr=0.1, epochs=4, schedule="cosine", warmup_epochs=1.0)
    lrs = [lr_at(step, recipe, steps_per_epoch=10) for step in range(40)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear warm-up over epoch 1
    assert lrs[10] == pytest.approx(0.1) and all(a > b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 0.001
    assert lr_at(25, recipe, 10) == lrs[25]  # nothing but the step decides it


def test_gradient_accumulation_gives_the_same_step_as_one_batch():
    import copy

    from densenets.engine.loop import TrainState, train_step
    from densenets.engine.runtime import make_runtime
    from densenets.models import create_model

    model = create_model("densenet_bc16_k4", num_classes=3).eval()  # eval: BN uses the same statistics either way
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    runtime = make_runtime(Recipe(device="cpu"))
    results = []
    for accum in (1, 4):
        m = copy.deepcopy(model)
        state = TrainState(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
        loss, correct = train_step(state, x, y, runtime, 0.1, label_smoothing=0.1, accum_steps=accum)
        results.append((loss, correct, [p.detach().clone() for p in m.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    assert results[1][1] == results[0][1]
    for a, b in zip(results[0][2], results[1][2], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_finetune_recipe_is_picked_for_a_pretrained_image_folder_and_a_weights_file_replaces_named_weights():
    recipe = resolve_recipe(base_recipe(data="imagefolder", pretrained=True))
    assert (recipe.pretrained, recipe.schedule, recipe.lr) == (True, "cosine", 0.01)
    assert resolve_recipe(base_recipe("finetune"), weights="run/best.pt").pretrained is False
    with pytest.raises(ConfigError, match="not both"):
        resolve_recipe(base_recipe("finetune"), weights="run/best.pt", pretrained=True)
    assert base_recipe(data="imagefolder").pretrained is False and RECIPES["cifar"].schedule == "step"


def test_ema_of_the_weights_is_what_the_run_reports_and_resumes_exactly(tmp_path, capsys):
    """ema_decay keeps torch's AveragedModel EMA: evaluated each epoch, saved, read by eval, resumed bit for bit."""
    from densenets.engine.evaluation import evaluate_checkpoint

    write_cifar10(tmp_path / "data", n_train=100, n_test=20)
    recipe = tiny_recipe(tmp_path / "data", data="cifar10", ema_decay=0.9)
    full = fit(recipe, tmp_path / "full", show_progress=False)
    assert "EMA weights; without EMA test err" in capsys.readouterr().out
    saved = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert saved["ema_updates"] == saved["step"] == 10
    # The EMA differs from the last step's weights and is the model fit returns.
    key = "classifier.weight"
    assert not torch.equal(saved["ema"][key], saved["model"][key])
    assert torch.equal(full.model.state_dict()[key], saved["ema"][key])
    # It is a real average: decay 0.9 over the last steps, not a copy of either end.
    start = fit(resolve_recipe(recipe, max_steps=1), tmp_path / "one", show_progress=False).model.state_dict()
    assert not torch.equal(saved["ema"][key], start[key])

    result = evaluate_checkpoint(tmp_path / "full")
    assert result["error"] == full.summary["final_test_error"]
    assert "EMA of its weights (decay 0.9)" in result["checkpoint_choice"]

    fit(resolve_recipe(recipe, max_steps=7), tmp_path / "cut", show_progress=False)
    resumed = fit(None, tmp_path / "cut", resume=True, show_progress=False, resume_overrides={"max_steps": 0})
    assert_same_weights(full.model, resumed.model)
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        tiny_recipe(tmp_path / "data", ema_decay=1.0)
