"""The epoch line marks "*best" only where a validation split chose the epoch."""

from __future__ import annotations

from densenets.engine.trainer import fit

from .fakedata import write_cifar10
from .test_training import tiny_recipe


def test_best_is_marked_only_when_validation_ranks_the_epochs(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=60, n_test=20)
    fit(tiny_recipe(tmp_path / "data", epochs=2), tmp_path / "plain", show_progress=False)
    plain = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(plain) == 2 and not any("*best" in line for line in plain)  # nothing chose them: no marker
    fit(tiny_recipe(tmp_path / "data", epochs=2, val_split=20), tmp_path / "val", show_progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "*best" in lines[0]  # the first ranked epoch is the best so far
