"""Figures 3 and 4 and the report's Table 2, drawn from two tiny runs: a DenseNet-BC and a ResNet."""

import pytest

from densenets.analysis.plots import figure3, figure4, load_run
from densenets.cli import main
from densenets.engine import base_recipe, resolve_recipe
from densenets.engine.trainer import fit

from .fakedata import write_cifar10
from .pictures import figure_pixels


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_runs")
    write_cifar10(root / "data", n_train=20, n_test=10)
    runs = []
    for model in ("densenet_bc16_k4", "resnet110"):
        recipe = resolve_recipe(
            base_recipe("cifar"), model=model, data="cifar10+", data_dir=str(root / "data"), epochs=2,
            batch_size=10, workers=0,
        )  # fmt: skip
        fit(recipe, root / model, show_progress=False)
        runs.append(root / model)
    return runs


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def test_figure4_has_the_papers_three_panels_with_both_runs(two_runs):
    runs = [load_run(d) for d in two_runs]
    fig, notes = figure4(runs)
    left, middle, right, loss_axis = fig.axes  # the right panel has a second y axis for the training loss
    assert notes == []
    assert {"DenseNet (paper)", "DenseNet-BC (paper)"} <= set(_labels(left))
    assert {"DenseNet-BC (paper)", "ResNet, pre-activation (paper)"} <= set(_labels(middle))
    assert any("densenet_bc16_k4" in label and "DenseNet-BC" in label for label in _labels(left))
    assert not any("resnet110 (" in label for label in _labels(left))  # a ResNet is no DenseNet variant
    assert any("resnet110" in label for label in _labels(middle))
    assert len(right.get_lines()) == 2 and len(loss_axis.get_lines()) == 2
    assert all(len(line.get_xdata()) == 2 for line in right.get_lines())  # two epochs each


def test_figure3_has_two_panels_and_leaves_out_non_imagenet_runs(two_runs):
    fig, notes = figure3([load_run(d) for d in two_runs])
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert _labels(ax)[:2] == ["ResNets (paper)", "DenseNet-BC (paper)"]
        assert [len(line.get_xdata()) for line in ax.get_lines()] == [4, 4]
    assert len(notes) == 2 and all("figure 3 is ImageNet" in n for n in notes)


def test_plot_figure_commands_write_the_pngs(two_runs, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "plot", *two_runs, "--figure", "4", "--out", tmp_path)
    assert code == 0
    figure_pixels(tmp_path / "figure4.png", (15, 4.2), dpi=110)  # three panels (their content: the tests above)
    code, out, _ = run_cli(capsys, "plot", *two_runs, "--figure", "3", "--out", tmp_path)
    assert code == 0 and "left out" in out
    figure_pixels(tmp_path / "figure3.png", (10, 4), dpi=110)
    code, _, err = run_cli(capsys, "plot", "--figure", "4", "--out", tmp_path)
    assert code == 2 and "give run folders" in err
    code, _, err = run_cli(capsys, "plot", "--out", tmp_path)
    assert code == 2 and "--figure 3" in err


def test_report_puts_the_runs_beside_the_papers_rows(two_runs, capsys):
    code, out, _ = run_cli(capsys, "report", *two_runs)
    assert code == 0
    resnet_rows = [line for line in out.splitlines() if line.startswith("| resnet110 |")]
    assert len(resnet_rows) == 2 and all("C10+ " in row and "(resnet110)" in row for row in resnet_rows)
    assert "| preact_resnet1001 | ResNet (pre-activation) | 1001 |" in out and "10.56* | 4.62 |" in out
    assert "| wrn28_10 | Wide ResNet | 28 |" in out and "| Network in Network |" in out
    assert "- densenet_bc16_k4 on cifar10+" in out  # not one of the paper's models
    assert "| resnet50 | 50 | 25,557,032 | 25,557,032 |" in out
