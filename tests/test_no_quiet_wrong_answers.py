"""Issue 13: answers that were wrong or misleading without saying so, now right or labelled."""

import json
import pickle
import sys

import pytest
import torch
from PIL import Image

from densenets import create_model
from densenets.analysis.plots import run_point
from densenets.analysis.summary import count_flops
from densenets.cli import main
from densenets.data import DataSpec, build_data
from densenets.data.transforms import CIFAR10_MEAN, CIFAR10_STD, train_transform
from densenets.engine import base_recipe, resolve_recipe
from densenets.engine.distributed import DistInfo
from densenets.engine.loading import choose_checkpoint
from densenets.engine.loop import evaluate
from densenets.engine.recipes import Recipe
from densenets.engine.runlog import RunLog, reported_result
from densenets.engine.runtime import Runtime, amp_dtype, default_channels_last, model_stem
from densenets.engine.trainer import fit
from densenets.errors import ConfigError, DataError, UserError
from densenets.models import DenseNetConfig
from densenets.models.batchnorm import batchnorm_scale_shift
from densenets.paper import TORCHVISION_GMACS

from .fakedata import write_cifar10


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- untrusted files -------------------------------------------------------------------


def test_a_cifar_batch_carrying_code_never_runs(tmp_path, capsys):
    folder = write_cifar10(tmp_path / "data", n_train=20, n_test=10)
    marker = tmp_path / "code-ran"
    planted = folder / "data_batch_1"
    planted.write_bytes(pickle.dumps({"data": _Evil(marker), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refused to load") as info:
        build_data(DataSpec("cifar10", str(tmp_path / "data")))
    assert str(planted) in str(info.value) and "could run code" in str(info.value)
    code, _, err = run_cli(capsys, "train", "--data", "cifar10", "--data-dir", tmp_path / "data",
                           "--run-dir", tmp_path / "run")  # fmt: skip
    assert code == 2 and str(planted) in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_cifar_batches_in_the_original_protocol_2_still_load(tmp_path):
    folder = write_cifar10(tmp_path / "data", n_train=20, n_test=10)
    for name in ("data_batch_1", "test_batch", "batches.meta"):  # as the real files: Python 2, protocol 2
        entry = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    data = build_data(DataSpec("cifar10", str(tmp_path / "data")))
    assert len(data.train) == 20 and data.class_names[0] == "class0"
    image, label = data.test[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10


# --- fidelity to the authors' code -------------------------------------------------------


def test_cifar_random_crop_pads_with_the_mean_colour():
    """The authors normalise, then zero-pad: the border is the mean colour (0 after normalising), not black."""
    preprocess = {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD), "resize": None, "crop": 32, "channels": 3}
    transform = train_transform(preprocess, "cifar")
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    inside = (1 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    padded_samples = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(white)  # (3, 32, 32)
        is_pad = (out == 0).all(0)
        is_image = torch.isclose(out, inside.view(3, 1, 1), atol=1e-5).all(0)
        assert bool((is_pad | is_image).all()), "a pixel is neither the image nor the mean-colour padding"
        padded_samples += bool(is_pad.any())
    assert padded_samples > 0


def test_ten_crop_sums_the_logits_before_the_argmax():
    """One confident crop outvotes nine mildly opposed ones when logits are summed (the
    authors' code), not when softmax outputs are averaged."""

    class LogitsFromPixels(torch.nn.Module):
        def forward(self, x):  # (N, 2, 1, 1) -> (N, 2): the pixels are the logits
            return x.flatten(1)

    crops = torch.zeros(1, 10, 2, 1, 1)
    crops[0, 0, 0] = 10.0  # crop 1: class 0 by a wide margin
    crops[0, 1:, 1] = 0.5  # crops 2-10: class 1 by a small one
    runtime = Runtime(device=torch.device("cpu"), dist=DistInfo())
    result = evaluate(LogitsFromPixels(), [(crops, torch.tensor([0]))], runtime)
    assert result["top1"] == 100.0  # summed logits: class 0 (10 > 4.5); averaged softmax would pick class 1


# --- reported numbers -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_flops_count_transition_convolutions_before_pooling(name):
    """Our transitions pool first (same output, less work); the count is the paper's, which
    is also what torchvision publishes for the same networks."""
    macs = count_flops(create_model(name), 224) / 2e9
    assert round(macs, 3) == pytest.approx(TORCHVISION_GMACS[name], abs=1e-3)


def test_flops_do_not_depend_on_where_the_transition_pools():
    pool_first = create_model("densenet_bc100_k12")  # no dropout: pool, then conv
    conv_first = create_model("densenet_bc100_k12", dropout=0.2)  # dropout: conv, dropout, pool
    assert count_flops(pool_first, 32) == count_flops(conv_first, 32)


def test_train_help_shows_what_a_run_uses(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS default run (digits): 20; other recipes: cifar 300, svhn 40" in text
    assert "recipe default: 30" not in text and "default: 30" not in text
    assert "--dropout DROPOUT default: 0.2 without data augmentation, 0 with" in text


def test_a_run_folder_without_validation_means_last_pt(tmp_path):
    for val_split, expected in ((0, "last.pt"), (500, "best.pt")):
        run = tmp_path / f"val{val_split}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"recipe": {"val_split": val_split}}))
        (run / "best.pt").write_bytes(b"x")
        (run / "last.pt").write_bytes(b"x")
        path, reason = choose_checkpoint(run)
        assert path.name == expected
        assert ("validation" in reason) and (("test set" in reason) == (val_split == 0))


def test_reported_result_and_plot_follow_the_papers_rule(tmp_path):
    cifar = [{"epoch": e, "test_error": t} for e, t in ((1, 30.0), (2, 20.0), (3, 25.0))]
    assert reported_result(cifar) == {"test_error": 25.0, "epoch": 3, "rule": "final epoch"}
    svhn = [{"epoch": e, "val_error": v, "test_error": t} for e, v, t in ((1, 9.0, 8.0), (2, 5.0, 6.0), (3, 7.0, 4.0))]
    assert reported_result(svhn) == {"test_error": 6.0, "epoch": 2, "rule": "best validation epoch"}
    config = {
        "recipe": {"model": "densenet_bc16_k4", "data": "svhn"},
        "model": create_model("densenet_bc16_k4", num_classes=10).config.to_dict(),
        "data": {"preprocess": {"crop": 32}},
    }
    run = {"dir": tmp_path, "config": config, "metrics": svhn, "summary": {"final_test_error": 4.0}}
    point = run_point(run)
    assert point["error"] == 6.0 and "best validation epoch 2" in point["label"]


# --- one home per rule ------------------------------------------------------------------


def test_unknown_fields_are_reported_the_same_way_everywhere():
    for call, what in (
        (lambda: Recipe.from_dict({"epoch": 3}), "recipe"),
        (lambda: resolve_recipe(base_recipe("cifar"), epoch=3), "recipe"),
        (lambda: DenseNetConfig.from_dict({"growthrate": 3}), "DenseNetConfig"),
        (lambda: create_model("densenet121", growthrate=3), "model setting"),
    ):
        with pytest.raises(ConfigError, match=rf"unknown {what} field\(s\) \['(epoch|growthrate)'\]; did you mean"):
            call()


def test_batchnorm_scale_and_shift_reproduce_eval_mode_batchnorm():
    bn = torch.nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 5, 3, 3)
    scale, shift = batchnorm_scale_shift(bn)
    torch.testing.assert_close(scale.view(1, -1, 1, 1) * x + shift.view(1, -1, 1, 1), bn(x))


def test_runtime_rules_have_public_names():
    assert amp_dtype("bf16") is torch.bfloat16 and amp_dtype("none") is None
    with pytest.raises(ConfigError, match="amp must be one of"):
        amp_dtype("fp8")
    for stem in ("cifar", "imagenet"):  # without autocast the device decides
        assert default_channels_last(torch.device("cpu"), None, stem)
        assert not default_channels_last(torch.device("cuda", 0), None, stem)
    for device in ("cpu", "cuda"):  # under bf16 autocast the network does (docs/benchmarks.md, run 10)
        assert default_channels_last(torch.device(device), torch.bfloat16, "imagenet")
        assert not default_channels_last(torch.device(device), torch.bfloat16, "cifar")
    assert model_stem("densenet121") == "imagenet" and model_stem("densenet_bc100_k12") == "cifar"


# --- TensorBoard ------------------------------------------------------------------------


class _Writer:
    scalars: list = []

    def __init__(self, folder):
        pass

    def add_scalar(self, key, value, step):
        _Writer.scalars.append((key, value, step))

    def flush(self):
        pass

    def close(self):
        pass


def test_tensorboard_mirrors_metrics_and_its_errors_are_not_swallowed(tmp_path, monkeypatch):
    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = _Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _Writer.scalars = []
    log = RunLog(tmp_path)
    log.epoch({"epoch": 1, "test_error": 12.5, "train_loss": 0.7})
    assert log.note is None and ("test_error", 12.5, 1) in _Writer.scalars

    class Broken(_Writer):
        def __init__(self, folder):
            raise PermissionError(13, "Permission denied")

    fake.SummaryWriter = Broken
    with pytest.raises(UserError, match="cannot write TensorBoard logs .*Permission denied"):
        RunLog(tmp_path)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    assert "TensorBoard is not installed" in RunLog(tmp_path).note


# --- training features that must really take effect -------------------------------------


def _tiny(tmp_path, **changes):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    settings = dict(model="densenet_bc16_k4", data="cifar10+", data_dir=str(tmp_path / "data"), epochs=1,
                    batch_size=20, workers=0, device="cpu", max_steps=2)  # fmt: skip
    return resolve_recipe(base_recipe("cifar"), **{**settings, **changes})


def test_bf16_really_autocasts(tmp_path):
    def run(name, **changes):
        return fit(_tiny(tmp_path, **changes), tmp_path / name, show_progress=False).model.state_dict()

    def close(a, b):  # the tolerance for bf16 rounding after 2 steps
        return all(torch.allclose(a[k].float(), b[k].float(), rtol=0.1, atol=0.05) for k in a)

    fp32, bf16 = run("fp32"), run("bf16", amp="bf16")
    differs = [k for k in fp32 if fp32[k].is_floating_point() and not torch.equal(fp32[k], bf16[k])]
    assert differs  # bf16 arithmetic changed the result: autocast was on
    assert close(bf16, fp32)  # ... by bf16 rounding, not by training something else:
    # the same tolerance tells apart a run from another seed, and one from the same start at half the lr
    assert not close(run("seed1", seed=1), fp32)
    assert not close(run("half-lr", lr=0.05), fp32)


def test_compile_really_compiles_and_saves_plain_weights(tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def spy(model, **kwargs):
        compiled.append(type(model).__name__)
        return real_compile(model, backend="eager")  # dynamo tracing without a C++ toolchain

    monkeypatch.setattr(torch, "compile", spy)
    eager = fit(_tiny(tmp_path), tmp_path / "eager", show_progress=False).model.state_dict()
    result = fit(_tiny(tmp_path, compile=True), tmp_path / "compiled", show_progress=False)
    assert compiled == ["DenseNet"]
    saved = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)["model"]
    assert saved.keys() == eager.keys()  # no _orig_mod. prefixes
    # the same training to float rounding (the traced graph runs the layer-by-layer path)
    for key in eager:
        torch.testing.assert_close(saved[key], eager[key], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(result.model.state_dict()[key], eager[key], rtol=1e-3, atol=1e-3)
