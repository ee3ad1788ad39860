"""FLOPs and time to accuracy: every run records its training and evaluation FLOPs (counted with
``torch.utils.flop_counter`` once per step shape), its time, and the test-accuracy milestones;
``densenets plot`` draws accuracy against FLOPs and wall time."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from densenets.analysis.plots import load_run, time_to_accuracy_figure
from densenets.cli.main import main
from densenets.engine import flops as flops_module
from densenets.engine import resolve_recipe
from densenets.engine.flops import RunCost, cost_line, count_train_step, milestones
from densenets.engine.loop import TrainState
from densenets.engine.runtime import make_runtime
from densenets.engine.trainer import fit
from densenets.hardware import cpu_info
from densenets.models import create_model

from .fakedata import write_cifar10
from .test_training import TINY_MODEL, assert_same_weights, tiny_recipe


def step_flops(batch: int, num_classes: int = 10) -> int:
    """One training step (forward, loss, backward) counted here on a real CPU model."""
    model = create_model(TINY_MODEL, num_classes=num_classes).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, num_classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def forward_flops(batch: int) -> int:
    model = create_model(TINY_MODEL, num_classes=10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(batch, 3, 32, 32))
    return counter.get_total_flops()


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """50 training images in batches of 20 (2 steps an epoch, 10 images left out), 70 test images
    (evaluated as 64 + 6); a second run with batches of 10 for one epoch."""
    root = tmp_path_factory.mktemp("flops")
    write_cifar10(root / "data", n_train=50, n_test=70)
    fit(tiny_recipe(root / "data", epochs=2, batch_size=20), root / "a", show_progress=False)
    fit(tiny_recipe(root / "data", epochs=1, batch_size=10), root / "b", show_progress=False)
    return root / "a", root / "b"


def test_train_flops_are_steps_by_shape_times_one_counted_step(two_runs):
    run = two_runs[0]
    summary = strict_json((run / "summary.json").read_text())
    records = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    per_step = step_flops(20)
    assert summary["train_flops_by_shape"] == {
        "20x3x32x32 float32, amp none, 1 chunk": {"steps": 4, "flops_per_step": per_step}
    }
    assert summary["train_flops"] == 4 * per_step
    assert [r["train_flops"] for r in records] == [2 * per_step, 4 * per_step]  # cumulative
    per_epoch_eval = forward_flops(64) + forward_flops(6)  # the last test batch at its own size
    assert [r["eval_flops"] for r in records] == [per_epoch_eval, 2 * per_epoch_eval]
    assert summary["eval_flops"] == 2 * per_epoch_eval
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= summary["wall_s"]
    assert summary["train_s"] == pytest.approx(sum(r["train_seconds"] for r in records))
    assert summary["train_s"] <= summary["wall_s"]


def test_summary_milestones_say_the_test_set_only_draws_the_curve(two_runs):
    summary = strict_json((two_runs[0] / "summary.json").read_text())
    records = [strict_json(line) for line in (two_runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert summary["milestones"] == milestones(records)
    assert set(summary["milestones"]) == {"90%", "93%", "94%", "95%"}
    assert "never to select" in summary["milestones_note"]
    assert "SGD's elementwise update is not counted" in summary["flops_note"]


def test_a_partial_batch_counts_at_its_own_size(monkeypatch):
    runtime = make_runtime(tiny_recipe("unused", device="cpu"))
    recipe = tiny_recipe("unused")
    model = create_model(TINY_MODEL, num_classes=10).train()
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    cost = RunCost(state, runtime, recipe)
    counted = []
    real = flops_module.count_train_step

    def spy(*args, **kwargs):
        counted.append(args[1].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(flops_module, "count_train_step", spy)
    for batch in (20, 20, 5, 20):
        cost.train_step(torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)))
    assert counted == [20, 5]  # once per shape
    assert state.cost["train_flops"] == 3 * step_flops(20) + step_flops(5)
    assert {k.split(" ")[0]: v["steps"] for k, v in state.cost["train_steps"].items()} == {
        "20x3x32x32": 3,
        "5x3x32x32": 1,
    }


def test_counting_leaves_weights_statistics_gradients_and_rng_alone():
    runtime = make_runtime(tiny_recipe("unused", device="cpu"))
    model = create_model(TINY_MODEL, num_classes=10, dropout=0.5).train()  # dropout draws random numbers
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    images, targets = torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)
    rng = torch.get_rng_state()
    flops = count_train_step(model, images, targets, runtime, tiny_recipe("unused"))
    assert flops > 0
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    for p, g in zip(model.parameters(), grads, strict=True):
        assert p.device.type == "cpu" and torch.equal(p.grad, g)


def test_a_run_with_counting_trains_bit_identical_weights(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    recipe = tiny_recipe(tmp_path / "data", data="cifar10", epochs=2)  # no augmentation: dropout 0.2
    counted = fit(recipe, tmp_path / "counted", show_progress=False)
    monkeypatch.setattr(RunCost, "train_step", lambda self, images, targets: None)
    monkeypatch.setattr(RunCost, "eval_batch", lambda self, model, images: None)
    plain = fit(recipe, tmp_path / "plain", show_progress=False)
    assert counted.summary["train_flops"] > 0 and plain.summary["train_flops"] == 0
    assert_same_weights(counted.model, plain.model)


def test_a_resumed_run_counts_what_the_whole_run_counts(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=60, n_test=20)
    recipe = tiny_recipe(tmp_path / "data")
    full = fit(recipe, tmp_path / "full", show_progress=False).summary
    fit(resolve_recipe(recipe, max_steps=4), tmp_path / "cut", show_progress=False)  # mid-epoch 2
    capsys.readouterr()
    resumed = fit(None, tmp_path / "cut", resume=True, show_progress=False, resume_overrides={"max_steps": 0})
    summary = resumed.summary
    # the done line's wall time is this session's, and says so; wall_s adds the sessions up
    assert "wall_seconds_from_step" not in full and summary["wall_seconds_from_step"] == 4
    done = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("done:"))
    assert f"in {summary['wall_seconds']:.1f}s (this session, from step 4;" in done
    assert (summary["train_flops"], summary["eval_flops"]) == (full["train_flops"], full["eval_flops"])
    assert summary["train_flops_by_shape"] == full["train_flops_by_shape"]
    # each session names the machine it trained on, from the step it started at
    here = cpu_info()
    assert [s["from_step"] for s in full["sessions"]] == [0]
    assert [s["from_step"] for s in summary["sessions"]] == [0, 4]
    for session in summary["sessions"]:
        assert session["cpu"] == here["model_name"] and session["logical_cpus"] == here["logical_cpus"]
        assert session["torch"] == torch.__version__ and session["device"] == "cpu"
    on_disk = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert on_disk["sessions"] == summary["sessions"]


def test_milestones_from_a_synthetic_metrics_list():
    errors = [40.0, 100 * (1 - 540 / 600), 8.0, 7.0, 6.5, 5.5, 5.2]  # 540 of 600 right is 90%
    records = [
        {
            "epoch": i + 1,
            "test_error": e,
            "train_flops": 10 * (i + 1),
            "train_s": 2.0 * (i + 1),
            "elapsed_s": 3.0 * (i + 1),
        }
        for i, e in enumerate(errors)
    ]
    reached = milestones(records)
    assert reached["95%"] is None
    assert {level: m["epoch"] for level, m in reached.items() if m} == {"90%": 2, "93%": 4, "94%": 6}
    assert reached["94%"] == {"epoch": 6, "test_accuracy": 94.5, "train_flops": 60, "train_s": 12.0, "elapsed_s": 18.0}
    assert math.isclose(reached["90%"]["test_accuracy"], 90.0)
    assert milestones(records[:1]) == dict.fromkeys(("90%", "93%", "94%", "95%"))


def test_the_last_line_gives_a_milestone_s_training_and_wall_seconds_apart():
    records = [{"epoch": 1, "test_error": 9.0, "train_flops": 5e12, "train_s": 1765.9, "elapsed_s": 1986.1}]
    summary = {"train_flops": 6e12, "eval_flops": 1e12, "train_s": 2102.5, "wall_s": 2486.6}
    line = cost_line({**summary, "milestones": milestones(records)})
    assert "90% at epoch 1 (5e+12 FLOPs, 1766 s training, 1986 s wall)" in line
    assert line.endswith("(curve only)")
    older = {**records[0], "train_s": None}  # records written before train_s was kept
    assert "(5e+12 FLOPs, 1986 s wall)" in cost_line({**summary, "milestones": milestones([older])})
    assert "below 90%" in cost_line({**summary, "milestones": milestones([{**records[0], "test_error": 20.0}])})


def test_plot_draws_accuracy_against_flops_and_time_from_the_runs_metrics(two_runs, tmp_path, capsys):
    assert main(["plot", *map(str, two_runs), "--out", str(tmp_path)]) == 0
    assert f"written {tmp_path / 'accuracy_vs_compute.png'}" in capsys.readouterr().out
    runs = [load_run(d) for d in two_runs]
    fig = time_to_accuracy_figure(runs)
    left, right = fig.axes
    for run in runs:
        metrics = strict_json_lines(run["dir"])
        accuracy = [100.0 - m["test_error"] for m in metrics]
        for ax, key in ((left, "train_flops"), (right, "elapsed_s")):
            (line,) = [ln for ln in ax.get_lines() if ln.get_label().endswith(f"({run['dir'].name})")]
            assert list(line.get_xdata()) == [m[key] for m in metrics]
            assert list(line.get_ydata()) == accuracy
    assert len(strict_json_lines(two_runs[1])) == 1 and len(strict_json_lines(two_runs[0])) == 2


def strict_json_lines(run_dir) -> list[dict]:
    return [strict_json(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
