"""The paper's ResNet baselines: published sizes, the shared model surface, one training step
each, and the same engine, export and loading paths as the DenseNets."""

import json

import pytest
import torch
import torchvision

from densenets import create_model, list_models
from densenets.engine import base_recipe, resolve_recipe
from densenets.engine.loading import load_model
from densenets.engine.loop import TrainState, train_step
from densenets.engine.runtime import make_runtime
from densenets.engine.trainer import fit
from densenets.errors import ConfigError
from densenets.models import CifarResNetConfig, build_model, config_from_dict, get_config
from densenets.models.weights import guess_name, infer_config
from densenets.paper import TABLE2_BASELINES, baseline_params_m

from .conftest import randomize_batchnorm
from .fakedata import write_cifar10

CIFAR_BASELINES = [
    "resnet110",
    "resnet110_sd",
    "resnet1202",
    "resnet1202_sd",
    "preact_resnet164",
    "preact_resnet1001",
    "wrn16_8",
    "wrn28_10",
    "wrn16_4_dropout",
]
IMAGENET_BASELINES = ["resnet34", "resnet50", "resnet101", "resnet152"]
TOO_DEEP_FOR_A_CPU_STEP = {"preact_resnet1001", "resnet1202", "resnet1202_sd"}  # parameter counts only


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_baseline_is_registered_beside_the_densenets():
    assert set(CIFAR_BASELINES) | set(IMAGENET_BASELINES) <= set(list_models())
    assert list_models("wrn*") == ["wrn16_4_dropout", "wrn16_8", "wrn28_10"]
    # Every Table 2 row that names a model names a registered one.
    assert {row["model"] for row in TABLE2_BASELINES if row["model"]} <= set(CIFAR_BASELINES)


# Table 2's parameter column, printed to 0.1M: within 2% (the rounding alone allows 3% at 1.7M).
@pytest.mark.parametrize(
    ("name", "paper_millions"),
    [
        ("resnet110", 1.7),
        ("resnet110_sd", 1.7),
        ("preact_resnet164", 1.7),
        ("preact_resnet1001", 10.2),
        ("wrn16_8", 11.0),
        ("wrn28_10", 36.5),
        ("wrn16_4_dropout", 2.7),
    ],
)
def test_parameter_counts_within_two_percent_of_table_2(name, paper_millions):
    assert baseline_params_m(name) == paper_millions
    assert abs(n_params(create_model(name)) / (paper_millions * 1e6) - 1) < 0.02


@pytest.mark.parametrize("name", ["resnet1202", "resnet1202_sd"])
def test_resnet1202_has_he_et_al_s_19_4m_not_table_2s_10_2m(name):
    # Table 2 prints 10.2M for the 1202-layer network; He et al. 2016a (Table 6) give 19.4M.
    params = n_params(create_model(name))
    assert abs(params / 19.4e6 - 1) < 0.02
    assert abs(params / 10.2e6 - 1) > 0.5


@pytest.mark.parametrize("name", IMAGENET_BASELINES)
def test_imagenet_resnets_are_torchvisions_own(name):
    from torchvision.models import get_model_weights

    model = create_model(name)
    assert n_params(model) == get_model_weights(name).IMAGENET1K_V1.meta["num_params"]
    reference = getattr(torchvision.models, name)()
    assert list(model.state_dict()) == list(reference.state_dict())  # torchvision's key names


def test_torchvision_weights_load_and_outputs_match(tmp_path):
    reference = torchvision.models.resnet34()
    randomize_batchnorm(reference)
    ours = create_model("resnet34")
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
    inferred = infer_config(reference.state_dict())
    assert guess_name(inferred) == "resnet34" and inferred.num_classes == 1000
    # A bare weights file, as torchvision ships it, is recognised by its keys (eval, predict, export).
    torch.save(reference.state_dict(), tmp_path / "resnet34-weights.pth")
    loaded = load_model(tmp_path / "resnet34-weights.pth")
    assert loaded.name == "resnet34" and len(loaded.class_names) == 1000
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x))


def test_shortcut_types_as_the_papers_have_them():
    convs = lambda m: [n for n, c in m.named_modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    # Option A: identity with zero padding, no projection anywhere (2 convs a unit + stem).
    assert len(convs(create_model("resnet110"))) == 2 * 54 + 1
    # Pre-activation and wide nets project where the shape changes: once per stage.
    assert sum("shortcut" in n for n in convs(create_model("preact_resnet164"))) == 3
    assert sum("shortcut" in n for n in convs(create_model("wrn16_8"))) == 3
    # With option B the basic ResNet gains its two projections (conv + BN).
    assert n_params(create_model("resnet110", shortcut="B")) > n_params(create_model("resnet110"))


def _tiny_step(model: torch.nn.Module, size: int, batch: int = 4) -> float:
    runtime = make_runtime(resolve_recipe(base_recipe("cifar"), device="cpu"), None)
    state = TrainState(model=model.train(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    images = torch.randn(batch, model.config.in_channels, size, size)
    targets = torch.arange(batch) % max(model.config.num_classes, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loss, _ = train_step(state, images, targets, runtime, lr=0.1)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert torch.isfinite(loss) and changed > 0
    return changed / len(before)


@pytest.mark.parametrize("name", [n for n in CIFAR_BASELINES if n not in TOO_DEEP_FOR_A_CPU_STEP])
def test_one_training_step_on_tiny_data(name):
    torch.manual_seed(0)
    model = create_model(name)
    changed = _tiny_step(model, size=8)
    if model.config.stochastic_depth == 0:
        assert changed == 1.0  # every parameter moved
    else:
        assert 0.5 < changed < 1.0  # some units were skipped for this mini-batch


@pytest.mark.parametrize("name", IMAGENET_BASELINES)
def test_one_training_step_of_the_imagenet_resnets(name):
    model = create_model(name, num_classes=10)
    assert _tiny_step(model, size=32, batch=2) == 1.0


@pytest.mark.parametrize("name", ["resnet110", "preact_resnet164", "wrn16_8", "resnet50"])
def test_the_model_surface_the_engine_and_analysis_use(name):
    model = create_model(name).eval()
    size = 64 if model.config.stem == "imagenet" else 16
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        blocks = model.forward_blocks(x)
        features = model.forward_features(x)
        logits = model(x)
        pooled = model.forward_head(features, pre_logits=True)
    assert [b.shape[1] for b in blocks] == [info["num_chs"] for info in model.feature_info]
    assert [size // b.shape[-1] for b in blocks] == [info["reduction"] for info in model.feature_info]
    assert features.shape[1] == model.num_features and pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(features), logits)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.config.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    config = model.config
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert type(build_model(config)) is type(model)


def test_stochastic_depth_survival_decays_linearly_and_scales_at_test_time():
    model = create_model("resnet110_sd")
    units = [u for stage in (model.layer1, model.layer2, model.layer3) for u in stage]
    assert len(units) == 54
    assert units[-1].survival == pytest.approx(0.5) and units[26].survival == pytest.approx(1 - 27 / 54 * 0.5)
    torch.manual_seed(0)
    last = units[-1].train()
    skipped = sum(last._skipped() for _ in range(2000)) / 2000
    assert abs(skipped - 0.5) < 0.05
    last.eval()
    assert not any(last._skipped() for _ in range(50))
    # At test time the branch is weighted by p_l: the same unit with p_l = 1 gives another output.
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        scaled = last(x)
        last.survival = 1.0
        assert not torch.allclose(scaled, last(x))


def test_wide_resnet_dropout_sits_once_in_every_unit():
    model = create_model("wrn16_8", dropout=0.3)
    calls = []
    original = torch.nn.functional.dropout
    try:
        torch.nn.functional.dropout = lambda t, *a, **k: (calls.append(1), original(t, *a, **k))[1]
        model(torch.randn(1, 3, 8, 8))
    finally:
        torch.nn.functional.dropout = original
    assert len(calls) == 6  # 16 layers: 3 stages of 2 units


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("resnet110", {"memory_efficient": True}, "no concatenations to recompute"),
        ("resnet50", {"memory_efficient": True}, "no concatenations to recompute"),
        ("resnet50", {"dropout": 0.2}, "has no dropout"),
        ("resnet110", {"depth": 111}, "depth 111 is impossible"),
        ("preact_resnet164", {"shortcut": "C"}, "shortcut must be A"),
        ("resnet110", {"stochastic_depth": 1.0}, "stochastic_depth must be in"),
        ("wrn28_10", {"growth_rate": 12}, "unknown model setting"),
    ],
)
def test_bad_settings_say_what_is_wrong(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, **overrides)


def test_dropout_default_is_the_baselines_own_paper():
    # The DenseNet rule (0.2 without augmentation) is for DenseNets; He et al. use no dropout.
    assert resolve_recipe(base_recipe(data="cifar10"), model="resnet110").dropout == 0.0
    assert resolve_recipe(base_recipe(data="svhn"), model="wrn16_4_dropout").dropout == 0.4
    assert resolve_recipe(base_recipe(data="cifar10"), model="densenet40_k12").dropout == 0.2
    assert resolve_recipe(base_recipe(data="cifar10"), model="resnet110", dropout=0.1).dropout == 0.1


def test_the_same_engine_trains_evaluates_and_exports_a_baseline(tmp_path):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    recipe = resolve_recipe(
        base_recipe("cifar"), model="resnet110_sd", data="cifar10+", data_dir=str(tmp_path / "data"),
        epochs=1, batch_size=20, workers=0,
    )  # fmt: skip
    result = fit(recipe, tmp_path / "run", show_progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["family"] == "resnet_cifar" and config["model"]["stochastic_depth"] == 0.5
    assert result.summary["epochs_completed"] == 1 and result.summary["parameters"] == n_params(result.model)
    loaded = load_model(tmp_path / "run")
    assert loaded.model.config == get_config("resnet110_sd") and loaded.name == "resnet110_sd"
    from densenets.export.formats import export_model

    out = export_model(tmp_path / "run", "torchscript", tmp_path / "m.pt")
    assert out["max_abs_diff"] < 1e-4


def test_feature_reuse_is_for_densenets_only():
    from densenets.analysis.feature_reuse import feature_reuse

    with pytest.raises(ConfigError, match="dense connections"):
        feature_reuse(create_model("resnet110"))


def test_one_config_record_for_every_family_and_no_dead_field():
    """The three config classes share to_dict/from_dict (models/configs.py); the ResNet configs
    have no memory_efficient field, and a file written when they had one still loads."""
    for name in ("densenet_bc100_k12", "resnet110", "resnet50"):
        config = get_config(name)
        data = json.loads(json.dumps(config.to_dict()))
        assert data["family"] == type(config).family and config_from_dict(data) == config
        assert "memory_efficient" not in data
        assert config_from_dict({**data, "memory_efficient": False}) == config


def test_config_dataclass_is_frozen_and_names_its_family():
    config = CifarResNetConfig()
    with pytest.raises(AttributeError):
        config.depth = 20
    assert config.to_dict()["family"] == "resnet_cifar"
    assert config_from_dict({k: v for k, v in get_config("densenet40_k12").to_dict().items()}).growth_rate == 12


def test_summary_sets_each_baseline_against_its_published_count(capsys):
    from densenets.cli import main

    for name, expected in (
        ("resnet110", "1,727,962 (Table 2: 1.7M, rounded; ours +1.6%)"),
        ("resnet1202_sd", "(He et al. 2016a: 19.4M, rounded; ours +0.1%; Table 2 prints 10.2M)"),
        ("resnet50", "25,557,032 (torchvision's published count: 25,557,032, exact match)"),
    ):
        assert main(["summary", name]) == 0
        out = capsys.readouterr().out
        assert expected in out and "units" in out
    assert main(["summary", "resnet50", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["macs"] / 1e9 == pytest.approx(summary["torchvision"]["gmacs"], abs=0.001)
