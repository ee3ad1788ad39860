"""eval, predict, analyze, plot, report and export on a tiny trained model."""

import csv
import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
import torchvision
from PIL import Image

from densenets import DenseNet, DenseNetConfig, create_model
from densenets.analysis.feature_reuse import feature_reuse
from densenets.cli import main
from densenets.engine import base_recipe, resolve_recipe
from densenets.engine.loading import load_model
from densenets.engine.trainer import fit
from densenets.models.weights import guess_name, infer_config

from .fakedata import write_cifar10, write_image_folder
from .pictures import CYCLE, colormap_colours, colours_drawn, figure_pixels, pixel_counts


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    write_cifar10(root / "data", n_train=120, n_test=40)
    recipe = resolve_recipe(
        base_recipe("cifar"), model="densenet_bc16_k4", data="cifar10", data_dir=str(root / "data"),
        epochs=2, batch_size=20, workers=0,
    )  # fmt: skip
    fit(recipe, root / "run", show_progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (200, 20, 20)).save(folder / "red.png")
    Image.new("L", (17, 50), 120).save(folder / "gray.png")
    Image.new("RGBA", (64, 64), (20, 200, 20, 128)).save(folder / "green_alpha.png")
    Image.new("P", (33, 33)).save(folder / "palette.gif")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return folder


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_writes_metrics_and_confusion(trained_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "eval", trained_run, "--out", tmp_path / "eval")
    assert code == 0 and "error" in out and "top-5" in out
    # a run without a validation split: the final epoch, never the test-selected best.pt
    assert f"evaluated {trained_run / 'last.pt'} (last.pt: the final epoch" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(trained_run / "last.pt")
    assert metrics["count"] == 40 and 0 <= metrics["error"] <= 100
    assert abs(metrics["top1"] + metrics["error"] - 100) < 1e-6 and metrics["top5"] >= metrics["top1"]
    confusion = torch.tensor(metrics["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 40
    assert abs(confusion.diag().sum().item() / 40 * 100 - metrics["top1"]) < 1e-6
    assert len(metrics["per_class_accuracy"]) == 10
    # one-vs-rest AUROC per class present in the 40 test images, their mean printed and recorded
    aurocs = [v for v in metrics["auroc"].values() if v is not None]
    assert len(aurocs) == metrics["auroc_classes"] == int((confusion.sum(1) > 0).sum())
    assert abs(metrics["auroc_macro"] - sum(aurocs) / len(aurocs)) < 1e-9
    assert f"macro AUROC {metrics['auroc_macro']:.3f}" in out
    # the figure draws each cell in the Blues colour of its row-normalised count: every colour
    # covers about the same area per cell (the colour bar adds a few pixels, the counts' digits take some)
    pixels = figure_pixels(tmp_path / "eval" / "confusion.png", (2 + 0.45 * 10, 1.6 + 0.45 * 10))
    colours = colormap_colours("Blues", (confusion / confusion.sum(1, keepdim=True)).flatten())
    expected = sorted(set(colours))
    area = [n / colours.count(c) for c, n in zip(expected, pixel_counts(pixels, expected), strict=True)]
    assert min(area) > 0.75 * max(area) and min(area) > 500, dict(zip(expected, area, strict=True))
    assert (tmp_path / "eval" / "confusion.csv").read_text().count("\n") == 11


def test_ten_crop_eval_on_an_image_folder(tmp_path, capsys):
    write_image_folder(tmp_path / "data", classes=3, per_class=6, size=40)
    recipe = resolve_recipe(
        base_recipe("imagefolder"), model="densenet_bc16_k4", data_dir=str(tmp_path / "data"), image_size=32,
        augment="imagenet", epochs=1, batch_size=6, workers=0,
    )  # fmt: skip
    fit(recipe, tmp_path / "run", show_progress=False)
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "eval", tmp_path / "run", "--ten-crop", "--json", "--out", tmp_path / "e")
    result = json.loads(out)
    assert code == 0 and result["ten_crop"] and result["count"] == 9
    code, _, err = run_cli(capsys, "eval", tmp_path / "run", "--data", "cifar10", "--data-dir", tmp_path / "none")
    assert code == 2 and "CIFAR-10 not found" in err


def test_predict_reports_bad_files_and_predicts_the_rest(trained_run, images, capsys):
    files = [images / n for n in ("red.png", "gray.png", "green_alpha.png", "palette.gif", "broken.jpg", "absent.png")]
    code, out, _ = run_cli(capsys, "predict", trained_run, *files, "--top-k", "3", "--json")
    records = json.loads(out)
    assert code == 1  # some files failed
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in records}
    assert "not a readable image" in by_name["broken.jpg"]["error"]
    assert by_name["absent.png"]["error"] == "no such file"
    for name in ("red.png", "gray.png", "green_alpha.png", "palette.gif"):
        predictions = by_name[name]["predictions"]
        assert len(predictions) == 3 and predictions[0]["class"].startswith("class")
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    code, out, _ = run_cli(capsys, "predict", trained_run, files[0])
    assert code == 0 and "%" in out
    code, _, _ = run_cli(capsys, "predict", trained_run, files[4])
    assert code == 2


def _hand_set_model() -> DenseNet:
    """Every weight reading source s in target t is (10 * t + s) (sign alternating)."""
    config = DenseNetConfig(growth_rate=2, block_sizes=(3, 2), stem="cifar", init_channels=4, num_classes=3,
                            bottleneck=True, compression=0.5)  # fmt: skip
    model = DenseNet(config)
    with torch.no_grad():
        for block_name in ("denseblock1", "denseblock2"):
            block = getattr(model.features, block_name)
            c0, k = block.in_channels, block.growth_rate
            for t, layer in enumerate(block.values(), start=1):
                weight = layer.conv1.weight
                for s in range(t):
                    start = 0 if s == 0 else c0 + (s - 1) * k
                    stop = c0 if s == 0 else start + k
                    sign = torch.tensor([1.0, -1.0]).repeat(weight[:, start:stop].numel() // 2 + 1)
                    values = (10 * t + s) * sign[: weight[:, start:stop].numel()].view_as(weight[:, start:stop])
                    weight[:, start:stop] = values
        model.features.transition1.conv.weight.fill_(-5.0)
        model.classifier.weight.copy_(torch.arange(model.classifier.weight.numel()).view_as(model.classifier.weight))
    return model


def test_feature_reuse_matrix_equals_hand_computed_values():
    model = _hand_set_model()
    blocks = feature_reuse(model)
    assert [b["block"] for b in blocks] == ["denseblock1", "denseblock2"]
    first = blocks[0]
    assert first["sources"] == ["block input", "layer 1", "layer 2", "layer 3"]
    assert first["targets"] == ["layer 1", "layer 2", "layer 3", "transition"]
    expected = [
        [10.0, 20.0, 30.0, 5.0],
        [None, 21.0, 31.0, 5.0],
        [None, None, 32.0, 5.0],
        [None, None, None, 5.0],
    ]
    assert first["matrix"] == expected
    last = blocks[1]
    assert last["targets"][-1] == "classifier"
    # classifier weights are 0..(3*C-1) laid out row-major: mean |w| over each source's columns
    w = model.classifier.weight
    c0, k = model.features.denseblock2.in_channels, 2
    slices = [(0, c0), (c0, c0 + k), (c0 + k, c0 + 2 * k)]
    assert [row[-1] for row in last["matrix"]] == [w[:, a:b].abs().mean().item() for a, b in slices]


def test_analyze_command_writes_heat_maps(trained_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "analyze", trained_run, "--out", tmp_path / "a")
    assert code == 0 and "denseblock1" in out
    data = json.loads((tmp_path / "a" / "feature_reuse.json").read_text())
    assert len(data) == 3 and data[-1]["targets"][-1] == "classifier"
    figure_pixels(tmp_path / "a" / "feature_reuse.png", (4.2 * 3, 4.2))  # one heat map per dense block
    svg = ElementTree.parse(tmp_path / "a" / "feature_reuse.svg").getroot()
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}image")) == 2 * 3  # a heat map and its colour bar each


def test_plot_and_report(trained_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "plot", trained_run, "--out", tmp_path / "p")
    assert code == 0
    for name in ("error_curves.png", "error_vs_params.png", "error_vs_flops.png"):  # the one run in the first colour
        assert colours_drawn(figure_pixels(tmp_path / "p" / name, (6.4, 4.2)), CYCLE) == CYCLE[:1], name
    code, out, _ = run_cli(capsys, "report", "--out", tmp_path / "report.md")
    assert code == 0 and "769,162 | 769,162" in out and "densenet264" in out and "(differs)" not in out
    assert (tmp_path / "report.md").read_text().count("\n| densenet") == 11


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_formats_match_pytorch(trained_run, tmp_path, capsys, fmt):
    pytest.importorskip({"onnx": "onnxruntime", "torchscript": "torch", "safetensors": "safetensors"}[fmt])
    if fmt == "onnx":
        pytest.importorskip("onnx")
    out = tmp_path / f"model.{fmt}"
    code, printed, err = run_cli(capsys, "export", trained_run, "--format", fmt, "--out", out)
    assert code == 0, err
    assert "checked against PyTorch" in printed and "max |difference|" in printed
    if fmt == "safetensors":
        json_path = out.with_suffix(".json")
        reloaded = create_model(str(json_path)).eval()
        original = load_model(trained_run).model
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x), original(x))
        code, printed, _ = run_cli(capsys, "eval", json_path, "--out", tmp_path / "e")
        assert code == 0 and "error" in printed


def test_torchvision_weights_file_with_legacy_keys(tmp_path, images, capsys):
    reference = torchvision.models.densenet121()
    legacy = {}
    for key, value in reference.state_dict().items():
        for new, old in (("norm1", "norm.1"), ("norm2", "norm.2"), ("conv1", "conv.1"), ("conv2", "conv.2")):
            if "denselayer" in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, path)
    assert guess_name(infer_config(reference.state_dict())) == "densenet121"
    loaded = load_model(path)
    assert loaded.name == "densenet121" and len(loaded.class_names) == 1000
    assert loaded.class_names[0] == "tench"
    model = create_model("densenet121", weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=1e-4, atol=1e-4)
    code, out, _ = run_cli(capsys, "predict", path, images / "red.png", "--top-k", "2", "--json")
    assert code == 0 and len(json.loads(out)[0]["predictions"]) == 2


def test_predict_over_a_folder_and_a_glob_into_csv(trained_run, images, tmp_path, capsys):
    out_csv = tmp_path / "predictions.csv"
    code, out, _ = run_cli(
        capsys, "predict", trained_run, images, str(images / "*.png"), "--batch-size", "2", "--top-k", "2",
        "--csv", out_csv, "--device", "cpu",
    )  # fmt: skip
    assert code == 1 and "unreadable" in out  # broken.jpg is in the folder
    rows = list(csv.DictReader(out_csv.open()))
    names = [Path(r["file"]).name for r in rows]
    # the folder (sorted, torchvision's image extensions: no .gif) then the pattern's three PNGs
    assert names == ["broken.jpg", "gray.png", "green_alpha.png", "red.png", "gray.png", "green_alpha.png", "red.png"]
    assert rows[0]["error"] and not rows[0]["class_1"]
    for row in rows[1:]:
        assert row["class_1"].startswith("class") and float(row["probability_1"]) >= float(row["probability_2"])
    code, _, err = run_cli(capsys, "predict", trained_run, images, "--device", "tpu")
    assert code == 2 and "device" in err and "\n" not in err.strip()
