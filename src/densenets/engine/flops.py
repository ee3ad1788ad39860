"""What a run cost: training and evaluation FLOPs counted with ``torch.utils.flop_counter``,
its wall time, and the test-accuracy milestones it reached (time to accuracy).

Each distinct step shape (batch x image size x dtype, precision, chunks) is counted once, on
a meta-device copy of the model: FLOPs depend on shapes only, and the copy holds no memory,
draws no random numbers and leaves the run's weights, BatchNorm statistics and gradients
alone. Every step then adds its shape's count, so a partial batch counts at its own size.
FlopCounterMode counts convolutions and matrix products (2 FLOPs a multiply-add); SGD's
update and the EMA of the weights are elementwise and not in the count; Muon's orthogonalisation
(matrix products, ``optimizer="muon"``) is, counted the same way once and added to every step.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..hardware import cpu_info
from .checkpoint import unwrap_model
from .distributed import all_reduce_sum
from .loop import TrainState, train_step
from .recipes import Recipe
from .runtime import Runtime

MILESTONES = (90.0, 93.0, 94.0, 95.0)  # test accuracy (%)
FLOPS_NOTE = (
    "train_flops: forward, loss and backward of every training step (torch.utils.flop_counter.FlopCounterMode, "
    "counted once per step shape on a meta-device copy and multiplied by its steps; SGD's elementwise update is not "
    "counted, Muon's Newton-Schulz matrix products are: update_flops_per_step), summed over processes; "
    "eval_flops: forward passes of every evaluation (test, validation, per epoch; "
    "not the extra test pass of a run stopped mid-epoch by max_steps); train_s: time in the training loop (steps "
    "and waiting for batches, not the counting); wall_s and elapsed_s: wall time since training started, "
    "evaluations included (a resumed run adds its sessions up to their last checkpoint)"
)
SESSIONS_NOTE = (
    "the machine each session of the run trained on (a resumed run adds one), from the step it started at; "
    "a run resumed from a checkpoint written before this record lists the sessions since"
)
MILESTONES_NOTE = (
    "first epoch whose test accuracy reached each level; the test set is evaluated each epoch only to draw the "
    "curve and these milestones, never to select anything"
)


def meta_copy(model: nn.Module) -> nn.Module:
    """``model`` rebuilt on the meta device: same modules and shapes, no memory, the original untouched."""
    memo: dict[int, torch.Tensor] = {}
    for t in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    clone = copy.deepcopy(model, memo)
    for module in clone.modules():  # a copy cannot join the process group; BN is not in the count anyway
        if isinstance(module, nn.SyncBatchNorm):
            module.train(False)
    return clone


def step_shape(images: torch.Tensor, runtime: Runtime, accum_steps: int = 1) -> str:
    """What decides a step's FLOPs, as a key: e.g. ``20x3x32x32 float32, amp bf16, 1 chunk``."""
    amp = str(runtime.amp_dtype).removeprefix("torch.") if runtime.amp_dtype is not None else "none"
    dtype = str(images.dtype).removeprefix("torch.")
    return f"{'x'.join(map(str, images.shape))} {dtype}, amp {amp}, {accum_steps} chunk" + "s" * (accum_steps > 1)


class _NoUpdate(torch.optim.Optimizer):
    """An optimiser that changes nothing: the counted step leaves the update out."""

    def __init__(self, params) -> None:
        super().__init__(params, {})

    def step(self, closure=None) -> None:
        return None


def count_train_step(model: nn.Module, images, targets, runtime: Runtime, recipe: Recipe, pos_weight=None) -> int:
    """FLOPs of one training step of ``model`` (forward, loss, backward) on a batch shaped like ``images``."""
    clone = meta_copy(unwrap_model(model))
    state = TrainState(clone, _NoUpdate(clone.parameters()))
    meta = pos_weight.to("meta") if pos_weight is not None else None
    x, y = torch.empty_like(images, device="meta"), torch.empty_like(targets, device="meta")
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        train_step(state, x, y, runtime, 0.0, recipe.label_smoothing, recipe.accum_steps, meta)
    return int(counter.get_total_flops())


def count_forward(model: nn.Module, images: torch.Tensor, runtime: Runtime) -> int:
    """FLOPs of one forward pass of ``model`` (in its current train/eval mode) on a batch shaped like ``images``."""
    clone = meta_copy(unwrap_model(model))
    x = torch.empty_like(images, device="meta")
    with torch.random.fork_rng(devices=[]), torch.no_grad(), runtime.autocast(), FlopCounterMode(display=False) as c:
        clone(x)
    return int(c.get_total_flops())


class RunCost:
    """Adds each training step's and each evaluation batch's FLOPs, and the time, to ``state.cost``
    (saved with the checkpoints, so a resumed run keeps counting)."""

    def __init__(self, state: TrainState, runtime: Runtime, recipe: Recipe, pos_weight=None) -> None:
        self.state, self.runtime, self.recipe, self.pos_weight = state, runtime, recipe, pos_weight
        fresh = {"train_flops": 0, "eval_flops": 0, "train_s": 0.0, "elapsed_s": 0.0, "train_steps": {}}
        if not state.cost:
            state.cost.update(fresh)
            if state.step:  # resumed from a checkpoint written before the count: it starts here
                state.cost["counted_from_step"] = state.step
        self.cost = state.cost
        self.cost.setdefault("sessions", []).append(session_record(runtime, state.step))
        self._eval: dict[str, int] = {}
        self._base, self._start = self.cost["elapsed_s"], time.perf_counter()

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one step taken on this batch."""
        key = step_shape(images, self.runtime, self.recipe.accum_steps)
        shapes = self.cost["train_steps"]
        if key not in shapes:
            flops = count_train_step(self.state.model, images, targets, self.runtime, self.recipe, self.pos_weight)
            update = getattr(self.state.optimizer, "update_flops", lambda: 0)()  # FilterMuon's matrix products
            shapes[key] = {"steps": 0, "flops_per_step": flops + update}
            if update:
                shapes[key]["update_flops_per_step"] = update
        shapes[key]["steps"] += 1
        self.cost["train_flops"] += shapes[key]["flops_per_step"]

    def eval_batch(self, model: nn.Module, images: torch.Tensor) -> None:
        """Count one evaluation forward pass of ``model`` on this batch (N, C, H, W)."""
        key = step_shape(images, self.runtime)
        if key not in self._eval:
            self._eval[key] = count_forward(model, images, self.runtime)
        self.cost["eval_flops"] += self._eval[key]

    def stamp(self) -> None:
        """Bring ``elapsed_s`` up to now (before a checkpoint is written)."""
        self.cost["elapsed_s"] = self._base + time.perf_counter() - self._start

    def end_epoch(self, train_seconds: float) -> dict:
        """The cumulative figures that go into the epoch's line of metrics.jsonl."""
        self.cost["train_s"] += train_seconds
        self.stamp()
        train_flops, eval_flops = self._all_processes()
        return {
            "train_flops": train_flops,
            "eval_flops": eval_flops,
            "train_s": self.cost["train_s"],
            "elapsed_s": self.cost["elapsed_s"],
        }

    def summary(self, records: list[dict], multilabel: bool) -> dict:
        """The summary.json fields: totals, the count per step shape, and the milestones."""
        self.stamp()
        train_flops, eval_flops = self._all_processes()
        partial = self.state.epoch_sums.get("seconds", 0.0)  # an epoch cut short by max_steps
        return {
            "train_flops": train_flops,
            "eval_flops": eval_flops,
            "wall_s": self.cost["elapsed_s"],
            "train_s": self.cost["train_s"] + partial,
            "train_flops_by_shape": self.cost["train_steps"],
            **({"flops_counted_from_step": self.cost["counted_from_step"]} if "counted_from_step" in self.cost else {}),
            "flops_note": FLOPS_NOTE,
            "sessions": self.cost["sessions"],  # set in __init__, one per session
            "sessions_note": SESSIONS_NOTE,
            "milestones": None if multilabel else milestones(records),
            "milestones_note": "multi-label run: no accuracy milestones" if multilabel else MILESTONES_NOTE,
        }

    def _all_processes(self) -> tuple[int, int]:
        totals = all_reduce_sum([self.cost["train_flops"], self.cost["eval_flops"]], self.runtime.device)
        return int(totals[0]), int(totals[1])


def session_record(runtime: Runtime, step: int) -> dict:
    """Where this session of a run trains: the CPU (model, family/model, usable CPUs, clock), the
    threads, torch, and the GPU if it trains on one; ``from_step``: the step it starts at."""
    cpu = cpu_info()
    record = {
        "from_step": step,
        "cpu": cpu.get("model_name"),
        "cpu_family_model": f"{cpu.get('family')}/{cpu.get('model')}",
        "logical_cpus": cpu.get("logical_cpus"),
        "cpu_mhz": cpu.get("mhz"),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),  # a TorchVersion object would not load under weights_only
        "device": str(runtime.device),
    }
    if runtime.device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(runtime.device)
    return record


def milestones(records: list[dict], levels: tuple[float, ...] = MILESTONES) -> dict:
    """For each test accuracy level (%), the first epoch that reached it with the cumulative
    FLOPs and seconds then; None for a level not reached."""
    reached: dict = {}
    for level in levels:
        # the tolerance keeps 540 of 600 at 90%: 100 - 100 * (1 - 0.9) is not exactly 90.0 in floats
        first = next((r for r in records if 100.0 - r["test_error"] >= level - 1e-9), None)
        reached[f"{level:g}%"] = None
        if first is not None:
            reached[f"{level:g}%"] = {
                "epoch": first["epoch"],
                "test_accuracy": 100.0 - first["test_error"],
                "train_flops": first.get("train_flops"),
                "train_s": first.get("train_s"),
                "elapsed_s": first.get("elapsed_s"),
            }
    return reached


def cost_line(summary: dict) -> str:
    """One line for the end of a run: the compute spent and when each accuracy level was reached."""
    muon = any("update_flops_per_step" in s for s in summary.get("train_flops_by_shape", {}).values())
    update = "Muon's Newton-Schulz products included" if muon else "optimiser update not counted"
    text = (
        f"compute: {summary['train_flops']:.3g} training FLOPs (forward + backward, torch.utils.flop_counter; "
        f"{update}), {summary['eval_flops']:.3g} evaluation FLOPs, "
        f"{summary['train_s']:.1f} s training of {summary['wall_s']:.1f} s wall"
    )
    if summary["milestones"] is None:
        return text
    shown = [
        f"{level} at epoch {m['epoch']} ({m['train_flops']:.3g} FLOPs, {_seconds(m)})"
        for level, m in summary["milestones"].items()
        if m is not None and m["train_flops"] is not None
    ]
    return text + "; test accuracy " + (", ".join(shown) if shown else f"below {MILESTONES[0]:g}%") + " (curve only)"


def _seconds(milestone: dict) -> str:
    """A milestone's time: training seconds (the steps) and wall seconds (evaluations included)."""
    wall = f"{milestone['elapsed_s']:.0f} s wall"
    return wall if milestone.get("train_s") is None else f"{milestone['train_s']:.0f} s training, {wall}"
