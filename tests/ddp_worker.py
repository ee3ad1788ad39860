"""Run under torchrun by test_train_processes: train, then save this rank's weights."""

import os
import sys
from pathlib import Path

import torch

from densenets.engine import base_recipe, resolve_recipe
from densenets.engine.trainer import fit

data_dir, run_dir = sys.argv[1], Path(sys.argv[2])
recipe = resolve_recipe(
    base_recipe("cifar"),
    model="densenet_bc16_k4",
    data="cifar10+",
    data_dir=data_dir,
    epochs=2,
    batch_size=20,
    workers=0,
    device="cpu",
    max_steps=6,
)
result = fit(recipe, run_dir, show_progress=False)
torch.save(result.model.state_dict(), run_dir / f"rank{os.environ['RANK']}.pt")
