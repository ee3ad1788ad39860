"""densenets.explain: CAM and Grad-CAM maps, equal to pytorch-grad-cam and captum on the
documented layer, leaving the model's mode, gradients, flags and hooks as they were."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import densenets
from densenets import DenseNet, DenseNetConfig, create_model
from densenets.errors import ConfigError
from densenets.models.resnet_cifar import CifarResNet, CifarResNetConfig

from .conftest import randomize_batchnorm


def tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "densenet":  # plain DenseNet, CIFAR stem
        model = DenseNet(DenseNetConfig(growth_rate=4, block_sizes=(2, 2), stem="cifar", init_channels=8,
                                        bottleneck=False, compression=1.0, num_classes=5))  # fmt: skip
    elif kind == "densenet_bc":
        model = create_model("densenet_bc16_k4", num_classes=5)
    elif kind == "densenet_imagenet":
        model = DenseNet(DenseNetConfig(growth_rate=4, block_sizes=(1, 2), init_channels=8, num_classes=5))
    elif kind == "resnet_basic":
        model = CifarResNet(CifarResNetConfig("basic", 8, num_classes=5))
    elif kind == "resnet_preact":
        model = CifarResNet(CifarResNetConfig("preact_bottleneck", 11, shortcut="B", num_classes=5))
    else:  # torchvision's ResNet (Figure 3's baselines)
        model = create_model("resnet34", num_classes=5)
    randomize_batchnorm(model)
    with torch.no_grad():  # a classifier with some spread, so the maps are not flat
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    return model.eval()


KINDS = ["densenet", "densenet_bc", "densenet_imagenet", "resnet_basic", "resnet_preact", "resnet_torchvision"]


def inputs(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
def test_the_named_final_map_is_forward_features_post_relu_without_parameters(kind):
    model, x = tiny(kind), inputs()
    layer = model.get_submodule(model.feature_map_layer)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    logits = model(x)
    handle.remove()
    assert len(seen) == 1
    assert torch.equal(seen[0], model.forward_features(x))
    assert seen[0].min() >= 0 and torch.allclose(model.forward_head(seen[0]), logits)
    if kind.startswith("densenet"):
        assert model.features[-1] is layer and isinstance(layer, nn.ReLU) and not layer.inplace
        assert not list(layer.parameters()) and not any("relu5" in k for k in model.state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_cam_is_gradcam_at_the_final_map_and_scaled_to_the_input(kind):
    model, x = tiny(kind), inputs(size=64 if "imagenet" in kind or "torchvision" in kind else 32)
    cam = densenets.explain(model, x)
    assert cam.shape == (2, *x.shape[-2:])
    assert cam.min() >= 0 and torch.allclose(cam.amax((1, 2)), torch.ones(2), atol=1e-5)
    torch.testing.assert_close(cam, densenets.explain(model, x, method="gradcam"), atol=1e-5, rtol=0)


def test_cam_is_the_classifier_weights_times_the_final_maps():
    model, x = tiny("densenet_bc"), inputs()
    features = model.forward_features(x)
    raw = torch.einsum("c,nchw->nhw", model.classifier.weight[3], features)
    # the spatial mean of CAM plus the bias is the logit: the head is global pooling + linear
    torch.testing.assert_close(raw.mean((1, 2)) + model.classifier.bias[3], model(x)[:, 3])
    expected = densenets.interpret.normalise(raw[:, None], x.shape[-2:])[:, 0]
    torch.testing.assert_close(densenets.explain(model, x, targets=3), expected)


@pytest.mark.parametrize("layer", ["features.relu5", "features.denseblock2", "features.transition1"])
def test_gradcam_equals_pytorch_grad_cam_and_captum(layer):
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("captum")
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = tiny("densenet_bc"), inputs(3)
    targets = [1, 4, 2]
    ours = densenets.explain(model, x, targets=torch.tensor(targets), method="gradcam", layer=layer)
    module = model.get_submodule(layer)
    with GradCAM(model=model, target_layers=[module]) as grad_cam:
        theirs = torch.from_numpy(grad_cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets]))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    raw = LayerGradCam(model, module).attribute(x, target=targets)  # (N, 1, h, w), before ReLU and resize
    captum = densenets.interpret.normalise(raw, x.shape[-2:])[:, 0]
    torch.testing.assert_close(ours, captum, atol=1e-5, rtol=0)
    if layer == "features.relu5":
        assert module is model.features[-1]


def test_targets_by_name_several_or_per_image():
    model, x = tiny("densenet_bc"), inputs(2)
    names = ["cat", "dog", "car", "ship", "frog"]
    several = densenets.explain(model, x, targets=["dog", 3], class_names=names)
    assert several.shape == (2, 2, 32, 32)
    torch.testing.assert_close(several[:, 0], densenets.explain(model, x, targets=1))
    model.pretrained_cfg = {**model.pretrained_cfg, "class_names": names}
    torch.testing.assert_close(several[:, 1], densenets.explain(model, x, targets="ship"))
    per_image = densenets.explain(model, x, targets=torch.tensor([[0, 1], [2, 3]]), method="gradcam")
    assert per_image.shape == (2, 2, 32, 32)
    torch.testing.assert_close(per_image[1, 0], densenets.explain(model, x, targets=2, method="gradcam")[1])
    top = model(x).argmax(1)
    torch.testing.assert_close(densenets.explain(model, x), densenets.explain(model, x, targets=top))
    with pytest.raises(ConfigError, match="unknown class 'horse'"):
        densenets.explain(model, x, targets="horse")
    with pytest.raises(ConfigError, match="not in 0..4"):
        densenets.explain(model, x, targets=5)


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_model_mode_gradients_flags_and_hooks_are_as_before(method):
    model, x = tiny("densenet_bc"), inputs(2)
    model.train()
    model.features.denseblock2.eval()  # a mixed model: one block frozen in eval mode
    model.features.conv0.weight.requires_grad_(False)
    model(x).sum().backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.classifier.weight.grad = None  # some None, some set
    grads["classifier.weight"] = None
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    calls = []
    model.features.relu5.register_forward_hook(lambda m, i, o: calls.append("forward"))
    model.features.norm5.register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    model.register_forward_pre_hook(lambda m, i: calls.append("pre"))

    def hook_counts():
        return {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                    len(m._backward_pre_hooks)) for n, m in model.named_modules()}  # fmt: skip

    hooks = hook_counts()
    densenets.explain(model, x, method=method)
    assert calls[:2] == ["pre", "forward"]  # the user's hooks stay and run
    assert hook_counts() == hooks
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for n, p in model.named_parameters():
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n
    assert not x.requires_grad and x.grad is None


def test_explain_runs_in_eval_mode_whatever_the_models_mode():
    model, x = tiny("densenet_bc"), inputs(2)
    expected = densenets.explain(model, x, method="gradcam")
    running = model.features.norm5.running_mean.clone()
    torch.testing.assert_close(densenets.explain(model.train(), x, method="gradcam"), expected)
    assert torch.equal(model.features.norm5.running_mean, running) and model.training


def test_memory_efficient_models_and_grey_inputs_give_the_same_maps():
    model, x = tiny("densenet_bc"), inputs(2)
    expected = densenets.explain(model, x, method="gradcam")
    model.set_memory_efficient(True)
    torch.testing.assert_close(densenets.explain(model.train(), x, method="gradcam"), expected)
    grey = DenseNet(DenseNetConfig(growth_rate=4, block_sizes=(1, 1), stem="cifar", init_channels=8,
                                   in_channels=1, num_classes=3))  # fmt: skip
    assert densenets.explain(grey, torch.randn(2, 1, 28, 28), method="gradcam").shape == (2, 28, 28)


def test_fast_inference_modules_and_inference_mode_are_refused_in_one_line():
    model, x = tiny("densenet_bc"), inputs(1)
    for backend in ("torch", None):  # None: the default backend (OpenVINO when installed)
        fast = densenets.optimize_for_inference(model, backend=backend)
        for method in ("cam", "gradcam"):
            with pytest.raises(ConfigError, match="optimize_for_inference") as info:
                densenets.explain(fast, x, method=method)
            assert "\n" not in str(info.value)
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode"):
        densenets.explain(model, x)


def test_a_layer_that_runs_twice_or_is_unknown_is_refused():
    model, x = tiny("resnet_torchvision"), inputs(1, 64)
    with pytest.raises(ConfigError, match="ran 2 times"):  # torchvision's BasicBlock runs one ReLU twice
        densenets.explain(model, x, method="gradcam", layer="layer4.2.relu")
    with pytest.raises(ConfigError, match="no layer 'layer9'"):
        densenets.explain(model, x, method="gradcam", layer="layer9")
    with pytest.raises(ConfigError, match="use method='gradcam'"):
        densenets.explain(model, x, layer="layer3")


def test_torchvisions_densenet_state_dict_loads_and_gives_the_same_outputs():
    from densenets.bench.reference import torchvision_twin

    model = tiny("densenet_bc")
    twin = torchvision_twin(model).eval()
    ours = DenseNet(model.config).eval()
    ours.load_state_dict(twin.state_dict())
    x = inputs(2)
    torch.testing.assert_close(ours(x), twin(x), atol=1e-4, rtol=1e-4)  # ours pools before the 1x1 conv
    assert set(ours.state_dict()) == set(twin.state_dict())
    torch.testing.assert_close(ours.features(x), F.relu(twin.features(x)), atol=1e-4, rtol=1e-4)


def write_pngs(folder, grey: bool = False):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(2)
    for i in range(2):
        pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    if grey:
        Image.fromarray(pixels[..., 0]).save(folder / "grey.png")
    (folder / "broken.png").write_bytes(b"not a png")


def test_cli_explains_named_weights_grey_images_and_skips_unreadable_files(tmp_path, capsys):
    from densenets.cli.main import main

    write_pngs(tmp_path / "in", grey=True)
    code = main(["explain", "densenet_bc40_k12.cifar10", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--top-k", "2", "--method", "gradcam"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and len(lines) == 4  # one line per image; the unreadable one named
    assert "broken.png: skipped, not a readable image" in lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grey.png", "img0.png", "img1.png"]
    assert all("gradcam" in line and line.count("%") == 2 for line in lines[1:])
    code = main(["explain", "densenet_bc40_k12.cifar10", str(tmp_path / "in" / "img0.png"), "--out",
                 str(tmp_path / "out2"), "--class", "frog"])  # fmt: skip
    assert code == 0 and "frog" in capsys.readouterr().out


def test_cli_refuses_exported_runtime_models_and_unknown_classes(tmp_path, capsys):
    from densenets.cli.main import main

    write_pngs(tmp_path / "in")
    assert main(["explain", "model.onnx", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs gradients" in err and len(err.splitlines()) == 1
    code = main(["explain", "densenet_bc40_k12.cifar10", str(tmp_path / "in"), "--out", str(tmp_path), "--class", "x"])
    assert code == 2 and "unknown class 'x'" in capsys.readouterr().err


def multilabel_checkpoint(path, thresholds):
    """A hand-made checkpoint carrying the multi-label keys (multilabel, thresholds, class_names)."""
    model = tiny("densenet_bc")
    with torch.no_grad():  # probabilities ~ sigmoid(bias): 0.95, 0.05, 0.88, 0.01, 0.73
        model.classifier.weight.normal_(0, 0.001)
        model.classifier.bias.copy_(torch.tensor([3.0, -3.0, 2.0, -5.0, 1.0]))
    preprocess = {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": None, "crop": 32, "channels": 3,
                  "multilabel": True, "thresholds": thresholds}  # fmt: skip
    data = {"preprocess": preprocess, "class_names": ["a", "b", "c", "d", "e"]}
    torch.save({"model": model.state_dict(), "config": {"model": model.config.to_dict(), "data": data}}, path)


def test_cli_multilabel_explains_every_class_above_its_threshold(tmp_path, capsys):
    from densenets.cli.main import main

    write_pngs(tmp_path / "in")
    multilabel_checkpoint(tmp_path / "ml.pt", [0.5, 0.5, 0.9, 0.5, 0.5])
    assert main(["explain", str(tmp_path / "ml.pt"), str(tmp_path / "in" / "img0.png"), "--out", str(tmp_path / "o"),
                 "--json"]) == 0  # fmt: skip
    (record,) = __import__("json").loads(capsys.readouterr().out)
    assert [e["class"] for e in record["explained"]] == ["a", "e"]  # c (0.88) is under its 0.9 threshold
    assert "thresholds" in record["note"] and record["explained"][0]["probability"] == pytest.approx(0.95, abs=0.01)
    multilabel_checkpoint(tmp_path / "none.pt", [0.99] * 5)
    main(["explain", str(tmp_path / "none.pt"), str(tmp_path / "in" / "img0.png"), "--out", str(tmp_path / "o")])
    assert "no class reaches its threshold" in capsys.readouterr().out


def test_peak_cells_names_the_tile_of_each_maps_maximum():
    maps = torch.zeros(2, 3, 32, 32)
    maps[0, 0, 3, 20] = 1  # top right
    maps[0, 1, 16, 15] = 1  # bottom left (row 16 is the lower half)
    maps[0, 2, 31, 31] = 1
    maps[1, :, 0, 0] = 1
    assert densenets.interpret.peak_cells(maps).tolist() == [[1, 2, 3], [0, 0, 0]]
    assert densenets.interpret.peak_cells(maps[0, 2], grid=(4, 4)).item() == 15


def test_cli_explains_a_real_multilabel_run_at_its_saved_thresholds(tmp_path, capsys):
    import json

    from densenets.cli.main import main

    from .test_multilabel import write_chexpert_run_data

    data, run = tmp_path / "data", tmp_path / "run"
    write_chexpert_run_data(data)
    assert main(["train", "--data", "csv", "--data-dir", str(data), "--model", "densenet_bc16_k4", "--image-size",
                 "16", "--epochs", "1", "--batch-size", "8", "--run-dir", str(run), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    images = sorted((data / "img").iterdir())[:4]
    assert main(["explain", str(run), *map(str, images), "--out", str(tmp_path / "maps"), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert main(["predict", str(run), *map(str, images), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    for ours, theirs in zip(records, predicted, strict=True):  # the classes predict calls positive
        positives = theirs["positives"] or [max(theirs["probabilities"], key=theirs["probabilities"].get)]
        assert [e["class"] for e in ours["explained"]] == positives
        for e in ours["explained"]:
            assert e["probability"] == pytest.approx(theirs["probabilities"][e["class"]], abs=1e-5)


@pytest.mark.parametrize("kind", ["densenet_imagenet", "resnet_basic", "resnet_preact", "resnet_torchvision"])
def test_gradcam_equals_pytorch_grad_cam_on_every_family_at_its_named_final_map(kind):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = tiny(kind), inputs(2, 64)
    ours = densenets.explain(model, x, targets=torch.tensor([3, 0]), method="gradcam")
    with GradCAM(model=model, target_layers=[model.get_submodule(model.feature_map_layer)]) as grad_cam:
        theirs = torch.from_numpy(grad_cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in (3, 0)]))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
