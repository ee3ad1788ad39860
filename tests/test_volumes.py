"""DenseNets for volumes (issue 29): MONAI's DenseNet weights in and out, and 3-D from 2-D weights."""

from pathlib import Path

import pytest
import torch

from densenets import create_model
from densenets.models.weights import to_monai_state_dict

from .conftest import randomize_batchnorm

monai_nets = pytest.importorskip("monai.networks.nets")  # the dev extra's reference


@pytest.mark.parametrize(
    ("monai_name", "name", "spatial_dims"),
    [
        ("DenseNet121", "densenet121", 3),
        ("DenseNet121", "densenet121", 2),
        ("DenseNet169", "densenet169", 1),
        ("DenseNet201", "densenet201", 1),
        ("DenseNet264", "densenet264", 1),
    ],
)
def test_monai_weights_load_and_give_monais_outputs(tmp_path, monai_name, name, spatial_dims):
    torch.manual_seed(0)
    reference = getattr(monai_nets, monai_name)(spatial_dims=spatial_dims, in_channels=1, out_channels=2)
    randomize_batchnorm(reference)
    torch.save(reference.state_dict(), tmp_path / "monai.pt")
    ours = create_model(name, spatial_dims=spatial_dims, in_channels=1, num_classes=2, weights=tmp_path / "monai.pt")
    x = torch.randn(2, 1, *(32,) * spatial_dims)
    with torch.no_grad():
        expected = reference.eval()(x)
        torch.testing.assert_close(ours.eval()(x), expected, atol=1e-5, rtol=0)
        # and back: our state dict in MONAI's keys loads strictly into MONAI's model
        back = getattr(monai_nets, monai_name)(spatial_dims=spatial_dims, in_channels=1, out_channels=2)
        back.load_state_dict(to_monai_state_dict(ours.state_dict()), strict=True)
        torch.testing.assert_close(back.eval()(x), expected, atol=1e-5, rtol=0)


def _depth_constant(x: torch.Tensor, depth: int) -> torch.Tensor:
    return x.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()  # (N, C, D, H, W)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_center_inflation_gives_the_2d_output_on_a_depth_constant_volume(in_channels):
    flat = create_model("densenet_bc40_k12", pretrained="cifar10", in_channels=in_channels).eval()
    volume = create_model("densenet_bc40_k12", pretrained="cifar10", in_channels=in_channels, spatial_dims=3,
                          inflate="center").eval()  # fmt: skip
    assert volume.features.conv0.weight.shape[2:] == (3, 3, 3)
    note = volume.pretrained_cfg["notes"][0]
    assert "inflate='center'" in note and "default" not in note
    assert volume.pretrained_cfg["input_size"] == (in_channels, 32, 32, 32)
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        expected = flat(x)
        torch.testing.assert_close(volume(_depth_constant(x, 5)), expected, atol=1e-4, rtol=0)
        # and it is the real network at work: a volume that varies along depth gives another answer
        varied = _depth_constant(x, 5) + torch.randn(2, in_channels, 5, 32, 32)
        assert (volume(varied) - expected).abs().max() > 1e-2


def test_center_inflation_is_exact_through_the_imagenet_stem(tmp_path):
    tiny = dict(growth_rate=4, block_sizes=(2, 2), init_channels=8, num_classes=3)
    flat = create_model("densenet121", **tiny)
    randomize_batchnorm(flat)
    torch.save(flat.state_dict(), tmp_path / "flat.pt")  # a bare 2-D state dict, as torchvision's
    volume = create_model("densenet121", **tiny, spatial_dims=3, weights=tmp_path / "flat.pt", inflate="center")
    assert "default" not in volume.pretrained_cfg["notes"][0]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(volume.eval()(_depth_constant(x, 9)), flat.eval()(x), atol=1e-4, rtol=0)


def test_mean_inflation_repeats_each_kernel_over_depth():
    flat = create_model("densenet_bc40_k12", pretrained="cifar10")
    volume = create_model("densenet_bc40_k12", pretrained="cifar10", spatial_dims=3, inflate="mean")
    assert "I3D" in volume.pretrained_cfg["notes"][0]
    w2, w3 = flat.features.denseblock2.denselayer3.conv2.weight, volume.features.denseblock2.denselayer3.conv2.weight
    assert w3.shape == (*w2.shape[:2], 3, *w2.shape[2:])
    for d in range(3):
        torch.testing.assert_close(w3[:, :, d], w2 / 3)
    for key in ("features.norm5.running_var", "classifier.weight", "features.transition1.norm.weight"):
        torch.testing.assert_close(volume.state_dict()[key], flat.state_dict()[key], rtol=0, atol=0)
    default = create_model("densenet_bc40_k12", pretrained="cifar10", spatial_dims=3)  # mean is the default
    note = default.pretrained_cfg["notes"][0]
    assert "inflate='mean'" in note and "(the default;" in note
    torch.testing.assert_close(default.features.conv0.weight, volume.features.conv0.weight, rtol=0, atol=0)


def test_inflation_is_refused_where_it_means_nothing(tmp_path):
    from densenets.errors import ConfigError

    with pytest.raises(ConfigError, match="inflate must be one of center, mean"):
        create_model("densenet_bc40_k12", pretrained="cifar10", spatial_dims=3, inflate="middle")
    with pytest.raises(ConfigError, match="inflate= needs 2-D weights"):
        create_model("densenet_bc40_k12", spatial_dims=3, inflate="center")
    with pytest.raises(ConfigError, match="holds no 2-D kernels"):
        create_model("densenet_bc40_k12", pretrained="cifar10", inflate="center")  # a 2-D model


# ---------------------------------------------------------------------------------------
# Volumes as data, through the CLI
# ---------------------------------------------------------------------------------------


def write_volumes(root, n: int = 16, size: int = 10, multilabel: bool = False):
    """Tiny CT-like volumes, half .npy (C, D, H, W) and half .nii.gz (X, Y, Z), with a labels.csv:
    class "lesion" has a bright cube, the position of which varies."""
    import nibabel
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    header = "path,lesion,calcified,split" if multilabel else "path,label,split"
    lines = [header]
    for i in range(n):
        volume = rng.normal(0, 50, (size, size, size)).astype(np.float32) - 500  # Hounsfield-like
        lesion, calcified = i % 2, (i // 2) % 2
        if lesion:
            z, y, x = rng.integers(0, size - 4, 3)
            volume[z : z + 4, y : y + 4, x : x + 4] += 800
        if calcified:
            volume[0, 0, :] += 2000
        if i % 2 == (i // 2) % 2:
            name = f"v{i:02d}.npy"
            np.save(root / name, volume[None])
        else:
            name = f"v{i:02d}.nii.gz"
            nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), root / name)
        split = "test" if i >= n - n // 4 else ("val" if i >= n - n // 2 else "train")
        labels = f"{lesion},{calcified}" if multilabel else ("lesion" if lesion else "clear")
        lines.append(f"{name},{labels},{split}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _train(data, run, *extra):
    from densenets.cli.main import main

    args = ["train", "--data", "csv", "--data-dir", str(data), "--model", "densenet_bc16_k4", "--epochs", "1",
            "--batch-size", "4", "--run-dir", str(run), "--no-progress", *extra]  # fmt: skip
    return main(args)


def test_a_diverged_bf16_volume_run_names_the_depth_two_fault(tmp_path, capsys):
    # torch 2.14.1's bf16 Conv3d weight gradient on the CPU can be NaN at depth 2
    # (docs/volumes/bf16_depth2.py); a run that stops on a NaN loss says so, a 2-D one does not
    data, run = write_volumes(tmp_path / "data"), tmp_path / "run"
    assert _train(data, run, "--volume-size", "8", "8", "8", "--amp", "bf16", "--lr", "1e12", "--epochs", "3") != 0
    err = capsys.readouterr().err
    assert "training stopped" in err and "2 voxels deep" in err


def test_a_csv_of_volumes_trains_evaluates_and_predicts_via_the_cli(tmp_path, capsys):
    import json

    from densenets.cli.main import main

    data, run = write_volumes(tmp_path / "data"), tmp_path / "run"
    assert _train(data, run, "--volume-size", "8", "8", "8", "--intensity-window", "-1000", "400") == 0
    out = capsys.readouterr().out
    assert "clipped to [-1000, 400] and scaled to [0, 1]" in out and "resized to 8x8x8 (as asked)" in out
    assert "input size" not in out  # the images' stem-default note does not apply to volumes (it said "8 px")
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["spatial_dims"] == 3 and config["data"]["preprocess"]["volume_size"] == [8, 8, 8]
    assert config["recipe"]["whiten_stem"] is False  # the imagefolder recipe whitens 2-D stems only

    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics["top1"] == pytest.approx(100 - records[-1]["test_error"], abs=1e-6)

    csv_out = tmp_path / "pred.csv"
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    assert (
        main(
            [
                "predict",
                str(run),
                str(data / "v15.npy"),
                str(data / "v14.nii.gz"),
                str(tmp_path / "broken.npy"),
                "--csv",
                str(csv_out),
            ]
        )
        == 1
    )  # fmt: skip  (1: a file was unreadable)
    lines = csv_out.read_text().splitlines()
    assert len(lines) == 4 and "lesion" in lines[1] and "clear" in lines[1]
    assert "not a readable volume" in lines[3]


def test_multilabel_volumes_report_auroc(tmp_path, capsys):
    data, run = write_volumes(tmp_path / "data", multilabel=True), tmp_path / "run"
    assert _train(data, run, "--spatial-dims", "3") == 0  # their own size (10^3), z-scored
    out = capsys.readouterr().out
    assert "multi-label, 2 classes" in out and "macro AUROC" in out and "z-scored" in out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("nan", "line 3: .*v01.nii.gz holds NaN or Inf values"),
        ("ndim", "line 3: .*v01.npy has 2 dimensions"),
        ("shape", "line 3: volume of 10x10x6, line 2 is 10x10x10; pass --volume-size"),
        ("small", "labels.csv line 2: volumes of 2x2x2 are smaller than densenet_bc16_k4's minimum of 4"),
        ("image", "line 3: a CSV lists images or volumes"),
    ],
)
def test_bad_volumes_stop_naming_the_csv_line(tmp_path, capsys, damage, message):
    import nibabel
    import numpy as np

    data = write_volumes(tmp_path / "data", n=8)
    csv = data / "labels.csv"
    text = csv.read_text()
    if damage == "nan":
        volume = np.zeros((10, 10, 10), np.float32)
        volume[1, 2, 3] = np.nan
        nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), data / "v01.nii.gz")
    elif damage == "ndim":
        np.save(data / "v01.npy", np.zeros((10, 10), np.float32))
        csv.write_text(text.replace("v01.nii.gz", "v01.npy"))
    elif damage == "shape":
        np.save(data / "v01.npy", np.zeros((10, 10, 6), np.float32))
        csv.write_text(text.replace("v01.nii.gz", "v01.npy"))
    elif damage == "small":
        for i in range(8):
            (data / f"v{i:02d}.npy").unlink(missing_ok=True)
            np.save(data / f"v{i:02d}.npy", np.random.default_rng(i).normal(size=(2, 2, 2)).astype(np.float32))
        csv.write_text(text.replace(".nii.gz", ".npy"))
    else:
        (data / "v01.png").write_bytes(b"")
        csv.write_text(text.replace("v01.nii.gz", "v01.png"))
    assert _train(data, tmp_path / "run") != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_training_on_volumes_from_2d_weights_inflates_them_and_says_so(tmp_path, capsys):
    data, run = write_volumes(tmp_path / "data", n=8), tmp_path / "run"
    args = ["--model", "densenet_bc40_k12", "--pretrained", "--volume-size", "8", "8", "8"]
    from densenets.cli.main import main

    assert main(["train", "--data", "csv", "--data-dir", str(data), "--epochs", "1", "--batch-size", "4",
                 "--run-dir", str(run), "--no-progress", *args]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "2-D weights inflated to 3-D, inflate='mean'" in out and "(the default;" in out
    assert "new classifier for 2 classes" in out


# ---------------------------------------------------------------------------------------
# Explain in 3-D: the heat map is a volume
# ---------------------------------------------------------------------------------------


def _tiny_volume_model():
    torch.manual_seed(0)
    model = create_model("densenet_bc16_k4", spatial_dims=3, in_channels=1, num_classes=5)
    randomize_batchnorm(model)
    with torch.no_grad():  # a classifier with some spread, so the maps are not flat
        model.classifier.weight.normal_(0, 0.5)
    return model.eval()


def test_cam_of_a_volume_is_the_classifier_weights_times_the_final_maps():
    import torch.nn.functional as F

    import densenets

    model = _tiny_volume_model()
    x = torch.randn(2, 1, 12, 16, 16, generator=torch.Generator().manual_seed(1))
    features = model.forward_features(x)
    assert features.dim() == 5
    raw = torch.einsum("c,ncdhw->ndhw", model.classifier.weight[3], features).detach()
    # the mean of CAM over the volume plus the bias is the logit: global pooling + linear
    torch.testing.assert_close(raw.mean((1, 2, 3)) + model.classifier.bias[3], model(x)[:, 3].detach())

    def scaled(m):  # ReLU, min-max, trilinear to the input, min-max (pytorch-grad-cam's order, in 3-D)
        flat = m.flatten(1) - m.flatten(1).amin(1, keepdim=True)
        return (flat / (flat.amax(1, keepdim=True) + 1e-7)).view_as(m)

    expected = scaled(F.interpolate(scaled(raw.relu()[:, None]), size=(12, 16, 16), mode="trilinear"))[:, 0]
    cam = densenets.explain(model, x, targets=3)
    assert cam.shape == (2, 12, 16, 16) and cam.min() >= 0
    torch.testing.assert_close(cam.amax((1, 2, 3)), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(cam, expected)
    # Grad-CAM at the final map is CAM (the head is global average pooling + linear), in 3-D too
    torch.testing.assert_close(densenets.explain(model, x, targets=3, method="gradcam"), cam, atol=1e-5, rtol=0)


def test_cli_explains_a_volume_with_three_slices_through_the_peak_and_the_map_as_npy(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from densenets.cli.main import main

    data, run = write_volumes(tmp_path / "data", n=8), tmp_path / "run"
    assert _train(data, run, "--volume-size", "8", "8", "8") == 0
    capsys.readouterr()
    out = tmp_path / "out"
    code = main(["explain", str(run), str(data / "v03.npy"), str(data / "v01.nii.gz"), "--out", str(out), "--json"])
    records = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["overlay"] for r in records] == [str(out / "v03.png"), str(out / "v01.nii.png")]
    for record in records:
        heat = np.load(record["map"])
        assert heat.shape == (1, 8, 8, 8) and heat.min() >= 0 and abs(heat.max() - 1) < 1e-5
        with Image.open(record["overlay"]) as picture:
            picture.load()  # decodes
            width, height = picture.size
        assert width == 432 and height == 168  # 5.4 x 2.1 inches at 80 dpi: 3 slices in one row


def test_volume_slices_go_through_the_peak():
    from densenets.interpret.slices import orthogonal_slices, peak

    heat = torch.zeros(4, 5, 6)
    heat[1, 3, 2] = 1
    assert peak(heat) == (1, 3, 2)
    axial, coronal, sagittal = orthogonal_slices(heat, peak(heat))
    assert axial.shape == (5, 6) and coronal.shape == (4, 6) and sagittal.shape == (4, 5)
    assert axial[3, 2] == coronal[1, 2] == sagittal[1, 3] == 1


# ---------------------------------------------------------------------------------------
# Export and fast inference in 3-D
# ---------------------------------------------------------------------------------------


def test_a_volume_run_exports_to_onnx_and_openvino_checked_against_pytorch(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from densenets.cli.main import main
    from densenets.engine.loading import load_model

    data, run = write_volumes(tmp_path / "data", n=8), tmp_path / "run"
    assert _train(data, run, "--volume-size", "8", "8", "8") == 0
    capsys.readouterr()
    model = load_model(run).model.eval()
    x = torch.randn(3, 1, 12, 8, 16)  # another batch and size than the export's: dynamic depth, height, width
    with torch.no_grad():
        expected = model(x)

    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "checked against PyTorch with onnxruntime" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    if not __import__("importlib").util.find_spec("openvino"):
        pytest.skip("openvino is not installed (densenets[openvino])")
    import openvino as ov

    assert main(["export", str(run), "--format", "openvino", "--out", str(tmp_path / "m.xml")]) == 0
    assert "checked against PyTorch with openvino (IR read back)" in capsys.readouterr().out
    compiled = ov.Core().compile_model(str(tmp_path / "m.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = torch.from_numpy(compiled(x.numpy())[compiled.output(0)].copy())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def _fast_volume_paths():
    from densenets.deploy import calibration as int8_checks
    from densenets.deploy import choice

    paths = []
    if choice.installed("openvino"):
        paths.append(("openvino", "bf16"))
    if choice.installed("openvino", "int8") and int8_checks.int8_cpu_problem() is None:
        paths.append(("openvino", "int8"))
    if choice.installed("onnxruntime", "int8") and int8_checks.int8_cpu_problem() is None:
        paths.append(("onnxruntime", "int8"))
    return paths


@pytest.mark.parametrize(
    ("backend", "precision"),
    [("openvino", "bf16"), ("openvino", "int8"), ("onnxruntime", "int8")],
)
def test_bf16_and_int8_run_a_volume_model_close_to_fp32(backend, precision):
    if (backend, precision) not in _fast_volume_paths():
        pytest.skip(f"{backend} {precision} is not available here (package missing, or int8 without VNNI)")
    from densenets.deploy import optimize_for_inference

    model = _tiny_volume_model()
    g = torch.Generator().manual_seed(2)
    calibration = torch.randn(16, 1, 12, 12, 12, generator=g) if precision == "int8" else None
    fast = optimize_for_inference(model, backend=backend, precision=precision, calibration=calibration)
    x = torch.randn(4, 1, 12, 12, 12, generator=g)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    diff, scale = (got - expected).abs().max().item(), expected.abs().max().item()
    assert diff <= {"bf16": 0.03, "int8": 0.1}[precision] * scale, (diff, scale)
    if precision == "bf16" and "avx512_bf16" in Path("/proc/cpuinfo").read_text():
        assert diff > 0  # it did run in bf16 (a CPU without bf16 instructions would run f32)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, D, H, W\)"):
        fast(torch.randn(1, 1, 12, 12))


def test_the_torch_backend_runs_a_volume_model_in_fp32_and_refuses_bf16_naming_openvino():
    from densenets.deploy import optimize_for_inference

    model = _tiny_volume_model().eval()
    x = torch.randn(2, model.config.in_channels, 8, 8, 8)
    fast = optimize_for_inference(model, backend="torch")  # an eval copy, nothing folded
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x))
    # torch's CPU avg_pool3d has no bf16 kernel: refused in one line, not a NotImplementedError
    with pytest.raises(ValueError, match="spatial_dims=3 .*backend='openvino'"):
        optimize_for_inference(model, backend="torch", precision="bf16")


@pytest.mark.parametrize("mode", ["mean", "center"])
def test_train_inflate_option_chooses_how_2d_weights_become_3d(tmp_path, capsys, mode):
    from densenets.cli.main import main
    from densenets.engine.loading import load_model

    data, run = write_volumes(tmp_path / "data", n=8), tmp_path / "run"
    args = [
        "--model",
        "densenet_bc40_k12",
        "--pretrained",
        "--volume-size",
        "8",
        "8",
        "8",
        "--inflate",
        mode,
        "--lr",
        "1e-12",
        "--epochs",
        "1",
    ]  # fmt: skip  (a step that leaves the convs as they started)
    assert main(["train", "--data", "csv", "--data-dir", str(data), "--batch-size", "4", "--run-dir", str(run),
                 "--no-progress", *args]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"2-D weights inflated to 3-D, inflate={mode!r}" in out and "(the default" not in out
    w2 = create_model("densenet_bc40_k12", pretrained="cifar10").features.denseblock2.denselayer3.conv2.weight
    w3 = load_model(run).model.features.denseblock2.denselayer3.conv2.weight.detach()
    expected = [w2 / 3] * 3 if mode == "mean" else [torch.zeros_like(w2), w2, torch.zeros_like(w2)]
    for d in range(3):
        torch.testing.assert_close(w3[:, :, d], expected[d], atol=1e-6, rtol=0)


def test_train_inflate_is_refused_where_there_is_nothing_to_inflate(tmp_path, capsys):
    data = write_volumes(tmp_path / "data", n=8)
    assert _train(data, tmp_path / "a", "--inflate", "mean") == 2
    assert "inflate needs 2-D weights" in capsys.readouterr().err
    assert _train(data, tmp_path / "b", "--inflate", "sideways", "--pretrained") == 2
    assert "inflate must be one of center, mean" in capsys.readouterr().err
    from densenets.cli.main import main

    from .fakedata import write_image_folder

    images = write_image_folder(tmp_path / "images", size=32)  # a 2-D model: nothing to inflate
    assert main(["train", "--data", "imagefolder", "--data-dir", str(images), "--model", "densenet_bc40_k12",
                 "--pretrained", "--inflate", "mean", "--epochs", "1", "--run-dir", str(tmp_path / "c"),
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "inflate='mean' turns 2-D weights into a 3-D model's; here the model is 2-D" in err, err


# ---------------------------------------------------------------------------------------
# The volume example: digits placed in noisy volumes (docs/make_volumes.py)
# ---------------------------------------------------------------------------------------


def test_make_volumes_writes_digits_at_a_depth_that_densenets_train_reads(tmp_path, capsys):
    import csv
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from densenets.cli.main import main

    script = Path(__file__).parents[1] / "docs" / "make_volumes.py"
    data = tmp_path / "digits3d"
    done = subprocess.run([sys.executable, str(script), str(data), "--count", "40", "--size", "6", "16", "16",
                           "--noise", "0"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with (data / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["split"] for r in rows} == {"train", "val", "test"}
    digits = load_digits()
    for row in rows[:5]:  # without noise each volume is one sklearn digit of its label, 2 slices thick, at some depth
        volume = np.load(data / row["path"])
        assert volume.shape == (6, 16, 16) and volume.dtype == np.float32
        slices = np.flatnonzero(volume.reshape(6, -1).any(1))
        assert len(slices) <= 2 and np.array_equal(volume[slices[0]], volume[slices[-1]])
        plane = volume[slices[0]]
        same_class = digits.images[digits.target == int(row["label"])] / 16.0
        found = any(
            np.allclose(plane[y : y + 8, x : x + 8], digit) and np.isclose(plane.sum(), digit.sum())
            for y in range(9)
            for x in range(9)
            for digit in same_class
        )
        assert found, row

    # noisy, as the example is run: the CLI reads it as a CSV of volumes and trains
    done = subprocess.run([sys.executable, str(script), str(data), "--count", "40", "--size", "6", "16", "16"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    assert main(["train", "--data", "csv", "--data-dir", str(data), "--model", "densenet_bc16_k4", "--epochs", "1",
                 "--batch-size", "8", "--run-dir", str(run), "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "z-scored" in out
    assert json_of(run / "config.json")["model"]["spatial_dims"] == 3
    assert json_of(run / "config.json")["data"]["preprocess"]["volume_size"] == [6, 16, 16]


def json_of(path):
    import json

    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------
# densenets bench --sections volumes (smoke: a tiny DenseNet, --quick)
# ---------------------------------------------------------------------------------------


def test_bench_volumes_section_times_ours_both_modes_and_monai_with_peak_memory():
    from densenets.bench.harness import SECTIONS, BenchConfig
    from densenets.bench.volumes import volumes_section, volumes_table

    assert "volumes" in SECTIONS  # densenets bench --sections volumes
    cfg = BenchConfig(rounds=1, reps=1, warmup=1, precisions=("fp32",), quick=True)  # 3 worker processes
    section = volumes_section(cfg, torch.device("cpu"), lambda line: None)
    rows = section["rows"]
    assert [r["contender"] for r in rows] == ["densenets, normal", "densenets, memory-efficient",
                                             "densenets, memory-efficient full", "MONAI DenseNet121"]  # fmt: skip
    for r in rows:
        assert r["size"] == 32 and len(r["seconds_per_round"]) == 1 and r["seconds"] > 0 and r["peak_mib"] > 0
        assert len(r["speedup_vs_monai"]["per_round"]) == 1
    assert rows[0]["time_vs_normal"]["median"] == 1.0 and rows[3]["speedup_vs_monai"]["median"] == 1.0
    table = "\n".join(volumes_table(section))
    assert "### Volumes: 3-D training steps against MONAI's DenseNet121" in table
    assert table.count("| 32^3 b2 fp32 |") == 4


def test_bench_volumes_only_runs_the_named_contenders():
    from densenets.bench.harness import BenchConfig
    from densenets.bench.volumes import volumes_section, volumes_table

    only = ("32^3, batch 2, fp32: densenets, normal", "32^3, batch 2, fp32: densenets, memory-efficient full")
    cfg = BenchConfig(rounds=1, reps=1, warmup=0, precisions=("fp32",), quick=True, only=only)
    rows = volumes_section(cfg, torch.device("cpu"), lambda line: None)["rows"]
    assert [r["contender"] for r in rows] == ["densenets, normal", "densenets, memory-efficient full"]
    assert rows[1]["memory_vs_normal"] > 0 and rows[1]["speedup_vs_monai"] is None  # MONAI did not run
    assert "| MONAI not run |" in "\n".join(volumes_table({"rows": rows, "note": "x"}))


def test_bench_volumes_openvino_checks_then_times_ours_against_monai_through_the_same_runtime():
    pytest.importorskip("openvino")
    from densenets.bench.harness import SECTIONS, BenchConfig
    from densenets.bench.volumes_openvino import CONTENDERS, volumes_openvino_section, volumes_openvino_table

    assert "volumes-openvino" in SECTIONS
    cfg = BenchConfig(rounds=2, reps=1, precisions=("fp32",), quick=True)
    section = volumes_openvino_section(cfg, lambda line: None)
    rows = section["rows"]
    assert [(r["batch"], r["contender"]) for r in rows] == [(b, c) for b in (1, 2) for c in CONTENDERS]
    for r in rows:
        assert len(r["speedup_vs_monai"]["per_round"]) == 2 and r["seconds"] > 0
        assert r["checked"]["monai_vs_ours_openvino"] <= 1e-4  # the outputs were compared before timing
    assert "OpenVINO " in section["note"] and "threads" in section["note"]
    assert "\n".join(volumes_openvino_table(section)).count("| 32^3 b1 fp32 |") == 2


def test_bench_volumes_openvino_int8_quantizes_both_on_the_same_volumes():
    pytest.importorskip("nncf")
    from densenets.bench.harness import BenchConfig
    from densenets.bench.volumes_openvino import CONTENDERS, LIMITS, calibration_volumes, volumes_openvino_section

    assert all(torch.equal(a, b) for a, b in zip(calibration_volumes(8, 2), calibration_volumes(8, 2), strict=True))
    section = volumes_openvino_section(BenchConfig(rounds=1, reps=1, precisions=("int8",), quick=True), print)
    rows = section["rows"]
    assert [(r["precision"], r["contender"]) for r in rows] == [("int8", c) for _ in (1, 2) for c in CONTENDERS]
    for r in rows:
        quantized = r["checked"][f"{r['contender']} vs fp32 PyTorch"]
        assert 0 < quantized <= LIMITS["int8"]  # int8 really ran (not fp32), and was checked before timing
    assert "both calibrated on the same 2 random volumes" in section["note"]


def damage_monai(monkeypatch) -> None:
    """Make the volumes bench build a MONAI model whose outputs differ from ours (its bias shifted by 1)."""
    from densenets.bench import volumes

    built = volumes.build

    def damaged(impl, quick, memory_efficient=False):
        model = built(impl, quick, memory_efficient)
        if impl == "monai":
            with torch.no_grad():
                model.class_layers.out.bias.add_(1.0)
        return model

    monkeypatch.setattr(volumes, "build", damaged)


def test_bench_volumes_openvino_refuses_to_time_a_monai_model_that_differs(monkeypatch):
    pytest.importorskip("openvino")
    from densenets.bench import volumes_openvino

    damage_monai(monkeypatch)
    x = torch.randn(1, 1, 32, 32, 32)
    runners = volumes_openvino._compiled(True, "fp32", x)
    with pytest.raises(RuntimeError, match="outputs differ beyond 0.0001 of their scale"):
        volumes_openvino.check_outputs(runners, x, "fp32")


def test_bench_volumes_refuses_to_time_a_monai_model_that_differs(monkeypatch):
    from densenets.bench import volumes

    damage_monai(monkeypatch)
    with pytest.raises(RuntimeError, match="differs from ours by 1"):
        volumes.check_same_outputs(True, torch.device("cpu"))


def test_a_volume_run_predicts_in_bf16_and_exports_int8_calibrated_on_its_own_volumes(tmp_path, capsys):
    if ("openvino", "int8") not in _fast_volume_paths():
        pytest.skip("needs openvino and nncf, and a CPU with VNNI for int8")
    from densenets.cli.main import main

    data, run = write_volumes(tmp_path / "data", n=8), tmp_path / "run"
    assert _train(data, run, "--volume-size", "8", "8", "8") == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "v03.npy"), "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "bf16 (approximate" in out and "OpenVINO" in out
    # --calibration auto reads the run's training volumes (it read them as 2-D images and stopped in a traceback)
    code = main(["export", str(run), "--format", "openvino", "--int8", "--calibration", "auto",
                 "--out", str(tmp_path / "m.int8.xml")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "calibrated on 4 images" in out and "top-1 agrees with fp32 PyTorch" in out


def test_bf16_through_pytorch_is_refused_for_a_volume_model_in_one_line(tmp_path, capsys):
    from densenets.cli.main import main

    data, run = write_volumes(tmp_path / "data", n=8), tmp_path / "run"
    assert _train(data, run, "--volume-size", "8", "8", "8") == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "v03.npy"), "--precision", "bf16", "--backend", "torch"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs 2-D models only and this one is 3-D: pass --backend openvino" in err


def test_calibration_batches_must_have_the_models_spatial_dims():
    from densenets.deploy import optimize_for_inference
    from densenets.deploy.calibration import int8_cpu_problem
    from densenets.errors import DataError

    if int8_cpu_problem():
        pytest.skip("int8 needs VNNI on this CPU")
    with pytest.raises(DataError, match=r"shape \(N, 1, D, H, W\); got \(4, 1, 12, 12\)"):
        optimize_for_inference(_tiny_volume_model(), backend="onnxruntime", precision="int8",
                               calibration=torch.rand(4, 1, 12, 12))  # fmt: skip
