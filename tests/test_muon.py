"""Muon for the convolution filters (``--optimizer muon``): the orthogonalisation, the step, the
parameter groups, the counted FLOPs and a run that says what it used."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from densenets.engine.build_run import _make_optimizer
from densenets.engine.loop import TrainState, train_step
from densenets.engine.muon import NEWTON_SCHULZ_STEPS, FilterMuon, orthogonalise
from densenets.engine.recipes import Recipe
from densenets.engine.runtime import make_runtime
from densenets.engine.trainer import fit
from densenets.errors import ConfigError
from densenets.models import create_model

from .fakedata import write_cifar10
from .test_training import TINY_MODEL, tiny_recipe


@pytest.mark.parametrize("shape", [(12, 108), (48, 20), (3, 16, 16)])
def test_orthogonalise_gives_the_polar_factor_within_newton_schulz_tolerance(shape):
    torch.manual_seed(0)
    g = torch.randn(shape) * 50  # the scale of the input does not matter
    o = orthogonalise(g)
    assert o.shape == g.shape and o.dtype == torch.float32
    singular = torch.linalg.svdvals(o)
    assert singular.min() > 0.6 and singular.max() < 1.25  # the quintic's band around 1
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (o * (u @ vh)).sum((-2, -1)) / (o.norm(dim=(-2, -1)) * (u @ vh).norm(dim=(-2, -1)))
    assert (cosine > 0.95).all()  # it points along U V^T


def _tiny_grads(model: torch.nn.Module) -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(model(x), y).backward()


def test_filters_take_the_orthogonalised_nesterov_step_from_a_bank_held_at_sqrt_out_norm():
    torch.manual_seed(0)
    model = create_model(TINY_MODEL, num_classes=3)
    _tiny_grads(model)
    recipe = Recipe(lr=0.1, momentum=0.9, weight_decay=5e-4, optimizer="muon", muon_lr=0.05)
    reference = copy.deepcopy(model)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        q.grad = p.grad.clone()  # deepcopy leaves the gradients behind
    sgd = torch.optim.SGD(
        [p for p in reference.parameters() if p.ndim <= 2], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = _make_optimizer(recipe, model)
    for group in optimizer.param_groups:
        group["lr"] = recipe.lr * group.get("lr_scale", 1.0)
    optimizer.step()
    sgd.step()
    filters = 0
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if p.ndim <= 2:  # BatchNorm, biases, classifier: exactly torch's SGD
            assert torch.allclose(p, q, atol=1e-7), name
            continue
        filters += 1
        m, n = p.shape[0], math.prod(p.shape[1:])
        grad = p.grad.reshape(m, n)
        nesterov = grad + 0.9 * grad  # the first step: the buffer is the gradient
        held = before[name] * math.sqrt(m) / before[name].norm()
        expected = held - 0.05 * math.sqrt(max(1, m / n)) * orthogonalise(nesterov).view_as(p)
        assert torch.allclose(p, expected, atol=1e-6), name
        assert p.norm().item() == pytest.approx(math.sqrt(m), rel=0.3)
    assert filters == sum(1 for p in model.parameters() if p.ndim > 2) > 0


def test_muon_groups_the_filters_apart_without_weight_decay():
    model = create_model(TINY_MODEL, num_classes=3)
    recipe = Recipe(lr=0.2, weight_decay=5e-4, decay_norm_bias=False, optimizer="muon", muon_lr=0.05)
    optimizer = _make_optimizer(recipe, model)
    assert isinstance(optimizer, FilterMuon)
    orthogonal = [g for g in optimizer.param_groups if g["orthogonal"]]
    assert len(orthogonal) == 1 and orthogonal[0]["weight_decay"] == 0.0
    assert orthogonal[0]["lr_scale"] == pytest.approx(0.25)
    assert {id(p) for p in orthogonal[0]["params"]} == {id(p) for p in model.parameters() if p.ndim > 2}
    decayed = [p for g in optimizer.param_groups if g["weight_decay"] == 5e-4 for p in g["params"]]
    assert [p.ndim for p in decayed] == [2]  # the classifier's weight
    assert isinstance(_make_optimizer(Recipe(), model), torch.optim.SGD)  # the default is unchanged


def test_an_orthogonal_group_refuses_a_matrix_and_a_frozen_bank_stays_as_it_is():
    layer = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="3 or more dimensions"):
        FilterMuon([{"params": [layer.weight], "orthogonal": True}], lr=0.1)
    conv = torch.nn.Conv2d(2, 4, 3)
    conv.weight.grad = torch.randn_like(conv.weight)
    before = conv.weight.detach().clone()
    FilterMuon([{"params": [conv.weight], "orthogonal": True}], lr=0.0).step()
    assert torch.equal(conv.weight, before)


def test_muon_state_round_trips_through_a_checkpoint():
    torch.manual_seed(0)
    model = create_model(TINY_MODEL, num_classes=3)
    recipe = Recipe(lr=0.1, optimizer="muon")
    state = TrainState(model=model, optimizer=_make_optimizer(recipe, model))
    runtime = make_runtime(Recipe(device="cpu"))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    train_step(state, x, y, runtime, lr=0.1)
    twin = copy.deepcopy(model)
    twin_state = TrainState(model=twin, optimizer=_make_optimizer(recipe, twin))
    twin_state.optimizer.load_state_dict(copy.deepcopy(state.optimizer.state_dict()))  # as saved and read back
    train_step(state, x, y, runtime, lr=0.1)
    train_step(twin_state, x, y, runtime, lr=0.1)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_recipe_refuses_an_unknown_optimizer_and_a_non_positive_muon_lr():
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, muon"):
        Recipe(optimizer="adam")
    with pytest.raises(ConfigError, match="muon_lr"):
        Recipe(muon_lr=0)


def test_a_muon_run_says_so_and_counts_the_newton_schulz_flops(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=40, n_test=30)
    recipe = tiny_recipe(
        tmp_path / "data", epochs=1, optimizer="muon", muon_lr=0.05, weight_decay=5e-4, decay_norm_bias=False
    )
    fit(recipe, tmp_path / "run", show_progress=False)
    out = capsys.readouterr().out
    assert "weight decay 0.0005 on linear weights only (convolution filters: Muon holds their norm;" in out
    assert "optimizer: Muon for the convolution filters (peak lr 0.05" in out
    assert "Muon's Newton-Schulz products included" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["optimizer"] == "muon" and config["recipe"]["muon_lr"] == 0.05
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    model = create_model(TINY_MODEL, num_classes=10)
    expected = 0  # per iteration on the wide side (m <= n): X X^T, its square, and the product with X
    for p in model.parameters():
        if p.ndim > 2:
            m, n = sorted((p.shape[0], math.prod(p.shape[1:])))
            expected += NEWTON_SCHULZ_STEPS * (4 * m * m * n + 2 * m**3)
    shapes = summary["train_flops_by_shape"].values()
    assert all(s["update_flops_per_step"] == expected for s in shapes)
    assert summary["train_flops"] == sum(s["steps"] * s["flops_per_step"] for s in shapes)
