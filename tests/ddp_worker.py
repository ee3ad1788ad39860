"""Run under torchrun by test_train_processes.

``agree``: train (per-rank BatchNorm statistics), save this rank's weights; then train again
with BatchNorm on fixed statistics, which makes 2 ranks at batch B each the same computation
as one process at batch 2B, and save those weights too.
Then one whole epoch counting this rank's test-set evaluations: the epoch's own and no other
(the end of the run reuses the epoch's record, decided on rank 0), and the final error each rank returns.
``full-disk``: rank 0's checkpoint writes fail with ENOSPC; every rank must stop with the error.
"""

import errno
import os
import sys
from pathlib import Path

import torch

from batchnorm_fixed import fixed_batchnorm_statistics  # tests/ is on sys.path: this file's folder
from densenets.engine import base_recipe, resolve_recipe
from densenets.engine import checkpoint as checkpoint_module
from densenets.engine.trainer import fit

mode, data_dir, run_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
rank = os.environ["RANK"]


def recipe(**changes):
    settings = dict(model="densenet_bc16_k4", data="cifar10+", data_dir=data_dir, epochs=2, batch_size=20, workers=0)
    return resolve_recipe(base_recipe("cifar"), **{**settings, "device": "cpu", **changes})


if mode == "agree":
    result = fit(recipe(max_steps=6), run_dir, show_progress=False)
    torch.save(result.model.state_dict(), run_dir / f"rank{rank}.pt")
    with fixed_batchnorm_statistics():
        result = fit(recipe(max_steps=3, lr=0.01), run_dir / "fixed-bn", show_progress=False)
    torch.save(result.model.state_dict(), run_dir / "fixed-bn" / f"rank{rank}.pt")

    import densenets.engine.loop as loop_module

    evaluations = []

    def counted(*args, **kwargs):
        evaluations.append(1)
        return real_evaluate(*args, **kwargs)

    real_evaluate = loop_module.evaluate
    ours = [module for name, module in sys.modules.items() if name.startswith("densenets.")]
    for module in ours:  # every module that imported it by name
        if getattr(module, "evaluate", None) is real_evaluate:
            module.evaluate = counted
    result = fit(recipe(epochs=1), run_dir / "one-epoch", show_progress=False)
    (run_dir / "one-epoch" / f"rank{rank}.txt").write_text(f"{len(evaluations)} {result.summary['final_test_error']!r}")
elif mode == "full-disk":
    if rank == "0":

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        checkpoint_module.torch.save = no_space
    fit(recipe(checkpoint_every=2), run_dir, show_progress=False)
