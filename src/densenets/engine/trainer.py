"""``fit``: build everything a recipe names, train, evaluate, checkpoint, resume."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .. import __version__
from ..data import DataBundle, DataSpec, build_data
from ..data.determinism import derive_seed
from ..data.samplers import ResumableSampler, ShardSampler
from ..errors import ConfigError, TrainingDiverged, TrainingInterrupted, UserError
from ..models import DenseNet, DenseNetConfig, get_config
from ..models.pretrained import PretrainedEntry, get_weights_entry
from ..models.weights import fetch_pretrained, load_backbone
from .checkpoint import (
    FORMAT,
    capture_rng,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
    state_dict_from,
    unwrap_model,
)
from .distributed import (
    DistInfo,
    all_reduce_sum,
    average_buffers,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from .loop import TrainState, evaluate, train_one_epoch
from .recipes import Recipe
from .runlog import BEST, CONFIG, LAST, SUMMARY, RunLog, read_json, write_json
from .runtime import Runtime, make_runtime, tune_cpu_allocator


@dataclass
class Run:
    """Everything built from a recipe, shared by the epoch loop and the checkpoint writer."""

    recipe: Recipe
    runtime: Runtime
    run_dir: Path
    data: DataBundle
    model_config: DenseNetConfig
    config: dict
    state: TrainState
    steps_per_epoch: int
    per_rank_batch: int
    drop_last: bool

    def log(self, message: str) -> None:
        if self.runtime.dist.is_main:
            print(message, flush=True)

    def save(self, name: str) -> None:
        """Rank 0 writes the checkpoint; every rank's state is identical under DDP.

        Weights that are no longer finite are never written over a good checkpoint.
        """
        if not self.runtime.dist.is_main:
            return
        s = self.state
        params = list(unwrap_model(s.model).parameters())
        if not torch.stack([p.detach().isfinite().all() for p in params]).all().item():
            raise TrainingDiverged(f"the weights became NaN or infinite by step {s.step} (epoch {s.epoch + 1})")
        payload = {
            "format": FORMAT,
            "model": unwrap_model(s.model).state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scaler": s.scaler.state_dict() if s.scaler is not None else None,
            "step": s.step,
            "epoch": s.epoch,
            "best": dict(s.best),
            "epoch_sums": dict(s.epoch_sums),
            "rng": capture_rng(),
            "config": self.config,
        }
        save_checkpoint(self.run_dir / name, payload)


@dataclass
class FitResult:
    summary: dict
    model: nn.Module  # the trained model, unwrapped from DDP / torch.compile


# What may change when a run is resumed: how it executes, never what it computes.
RESUME_OVERRIDES = ("max_steps", "workers", "checkpoint_every", "device")


def fit(
    recipe: Recipe | None,
    run_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    resume_overrides: dict | None = None,
) -> FitResult:
    """Train as ``recipe`` says, writing everything to ``run_dir``.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint; the recipe
    then comes from the run's config.json, with only ``RESUME_OVERRIDES`` changeable.
    """
    dist = DistInfo.from_env()
    run_dir = Path(run_dir)
    if resume:
        recipe = Recipe.from_dict(read_json(run_dir / CONFIG)["recipe"])
        changes = resume_overrides or {}
        bad = sorted(set(changes) - set(RESUME_OVERRIDES))
        if bad:
            raise ConfigError(f"cannot change {bad} when resuming; only {', '.join(RESUME_OVERRIDES)} may change")
        recipe = replace(recipe, **changes)
    elif recipe is None:
        raise ConfigError("fit needs a recipe unless resume=True")
    runtime = make_runtime(recipe, dist)
    if runtime.device.type == "cpu":
        tune_cpu_allocator()
    init_distributed(dist, runtime.device)
    try:
        run = _build(recipe, runtime, run_dir, resume)
        summary = _train(run, show_progress)
        return FitResult(summary, unwrap_model(run.state.model))
    finally:
        shutdown_distributed()


def _build(recipe: Recipe, runtime: Runtime, run_dir: Path, resume: bool) -> Run:
    dist = runtime.dist
    if not resume and (run_dir / LAST).exists():
        raise UserError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --run-dir"
        )
    if dist.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run folder {run_dir}: {exc.strerror}") from exc
    entry = get_weights_entry(recipe.model, recipe.pretrained) if recipe.pretrained else None
    data = build_data(_data_spec(recipe, entry))
    model_config = get_config(
        recipe.model,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        dropout=recipe.dropout,
        init=recipe.init,
    )
    config = {
        "recipe": recipe.to_dict(),
        "model": model_config.to_dict(),
        "data": {
            "name": data.name,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "preprocess": data.preprocess,
            "augment": data.augment,
            "class_names": data.class_names,
            "sizes": {"train": len(data.train), "val": len(data.val) if data.val else 0, "test": len(data.test)},
        },
        "environment": {
            "densenets": __version__,
            "torch": str(torch.__version__),
            "device": str(runtime.device),
            "world_size": dist.world_size,
        },
    }
    if resume:
        saved = read_json(run_dir / CONFIG)
        if DenseNetConfig.from_dict(saved["model"]) != model_config:
            raise UserError(f"{run_dir}/{CONFIG} describes a different model than the recipe builds")
        config = saved
    elif dist.is_main:
        write_json(run_dir / CONFIG, config)

    if recipe.batch_size % dist.world_size:
        raise ConfigError(f"batch_size {recipe.batch_size} is not divisible by the {dist.world_size} processes")
    per_rank_batch = recipe.batch_size // dist.world_size

    torch.manual_seed(derive_seed(recipe.seed, "init"))
    model: nn.Module = DenseNet(model_config, memory_efficient=recipe.memory_efficient)
    if recipe.weights and not resume:
        _init_from_weights(model, recipe.weights, dist.is_main)
    elif entry is not None and not resume:
        _init_from_pretrained(model, entry, dist.is_main)
    if recipe.sync_bn and runtime.device.type != "cuda":
        raise ConfigError(
            "sync_bn needs CUDA (torch's SyncBatchNorm is GPU-only); CPU ranks use per-rank BN statistics"
        )
    if recipe.sync_bn and dist.enabled:
        if recipe.memory_efficient:
            raise ConfigError("sync_bn cannot be combined with memory_efficient (recomputation would sync twice)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        _param_groups(model, recipe),
        lr=recipe.lr,
        momentum=recipe.momentum,
        dampening=0.0,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )
    if dist.enabled:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids)
    if recipe.compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.needs_grad_scaler else None
    state = TrainState(model=model, optimizer=optimizer, scaler=scaler)

    per_rank_samples = -(-len(data.train) // dist.world_size)
    drop_last = per_rank_samples >= per_rank_batch
    steps_per_epoch = per_rank_samples // per_rank_batch if drop_last else 1
    run = Run(recipe, runtime, run_dir, data, model_config, config, state, steps_per_epoch, per_rank_batch, drop_last)
    if resume:
        remove_stale_temporaries(run_dir)
        _restore(run)
    return run


def _data_spec(recipe: Recipe, entry: PretrainedEntry | None) -> DataSpec:
    """What to load; with named weights, at their input size, channels and normalisation."""
    spec = DataSpec(
        recipe.data, recipe.data_dir, recipe.download, recipe.image_size, recipe.val_split, recipe.seed,
        recipe.verify_images, recipe.skip_bad_images, recipe.augment,
    )  # fmt: skip
    if entry is None:
        return spec
    return replace(
        spec,
        image_size=recipe.image_size or entry.input_size[-1],
        mean=tuple(entry.mean),
        std=tuple(entry.std),
        channels=entry.input_size[0],
    )


def _init_from_pretrained(model: DenseNet, entry: PretrainedEntry, verbose: bool) -> None:
    """Start from named weights; the classifier is new unless the classes match the weights'."""
    replaced = load_backbone(model, fetch_pretrained(entry), entry.file_name)
    model.pretrained_cfg = {**entry.pretrained_cfg(), "num_classes": model.config.num_classes}
    if verbose:
        head = f"new classifier for {model.config.num_classes} classes" if replaced else "its classifier kept"
        size = "x".join(str(s) for s in entry.input_size)
        print(f"starting from {entry.name} ({entry.file_name}): {head}; input {size}, "
              f"mean {list(entry.mean)}, std {list(entry.std)}", flush=True)  # fmt: skip


def _param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """One group, or with ``freeze_epochs`` the classifier apart from a backbone held at lr 0."""
    if not recipe.freeze_epochs:
        return [{"params": list(model.parameters())}]
    head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    return [{"params": body, "frozen_epochs": recipe.freeze_epochs}, {"params": head}]


def _describe_data(run: Run) -> None:
    """Say what was chosen for the user's images (augmentation, channels) in the run's first lines."""
    r, data = run.recipe, run.data
    if r.data not in ("imagefolder",):
        return
    how = "as asked" if r.augment else f"chosen for {data.image_size}px images; set --augment to change"
    grey = "grey images, one channel" if data.in_channels == 1 else "RGB"
    run.log(f"augmentation: {data.augment} ({how}); {grey}; normalised with mean {data.preprocess['mean']}")
    if r.freeze_epochs:
        run.log(f"classifier only for the first {r.freeze_epochs} epoch(s), then the whole network")


def _init_from_weights(model: DenseNet, path: str, verbose: bool) -> None:
    """Start from pretrained weights; a classifier for another number of classes is re-initialised."""
    state = state_dict_from(load_checkpoint(path))
    theirs = state.get("classifier.weight")
    if load_backbone(model, state, path) and verbose:
        print(f"{path}: {theirs.shape[0]} classes in the file, {model.config.num_classes} in the data: "
              "classifier re-initialised", flush=True)  # fmt: skip


def _restore(run: Run) -> None:
    ckpt = load_checkpoint(run.run_dir / LAST, map_location=run.runtime.device)
    s = run.state
    try:
        unwrap_model(s.model).load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        if s.scaler is not None and ckpt.get("scaler"):
            s.scaler.load_state_dict(ckpt["scaler"])
        s.step, s.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        s.best = dict(ckpt.get("best") or {})
        s.epoch_sums = dict(ckpt["epoch_sums"])
        restore_rng(ckpt["rng"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{run.run_dir / LAST}: cannot resume from it ({type(exc).__name__}: {exc})") from exc
    run.log(f"resuming {run.run_dir} at step {s.step} (epoch {s.epoch + 1}/{run.recipe.epochs})")


def _loaders(run: Run) -> tuple[DataLoader, ResumableSampler, DataLoader, DataLoader | None]:
    r, dist, data = run.recipe, run.runtime.dist, run.data
    pin = run.runtime.device.type == "cuda"
    workers = r.workers if r.workers is not None else (8 if pin else 0)
    sampler = ResumableSampler(
        data.train,
        num_replicas=dist.world_size,
        rank=dist.rank,
        seed=derive_seed(r.seed, "order") % 2**31,
        drop_last=False,
    )
    train = DataLoader(
        data.train,
        batch_size=run.per_rank_batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=run.drop_last,
        generator=torch.Generator(),
    )

    def eval_loader(dataset):
        return DataLoader(
            dataset,
            batch_size=max(run.per_rank_batch, 64),
            sampler=ShardSampler(len(dataset), dist.rank, dist.world_size),
            num_workers=workers,
            pin_memory=pin,
        )

    return train, sampler, eval_loader(data.test), eval_loader(data.val) if data.val is not None else None


def _train(run: Run, show_progress: bool) -> dict:
    r, s = run.recipe, run.state
    train_loader, sampler, test_loader, val_loader = _loaders(run)
    metrics_log = RunLog(run.run_dir, enabled=run.runtime.dist.is_main)
    params = sum(p.numel() for p in unwrap_model(s.model).parameters())
    sizes = run.config["data"]["sizes"]
    run.log(
        f"training {r.model} ({params:,} parameters) on {r.data} "
        f"({sizes['train']} train / {sizes['val']} val / {sizes['test']} test images, {run.data.num_classes} classes) "
        f"for {r.epochs} epochs, batch {r.batch_size}, on {run.runtime.device}"
        + (f" x{run.runtime.dist.world_size} processes" if run.runtime.dist.enabled else "")
    )
    run.log(f"run folder: {run.run_dir}")
    _describe_data(run)

    def on_step(state: TrainState) -> None:
        if run.runtime.dist.enabled and _any_rank(state.stop_requested, run):
            state.stop_requested = True
        if r.checkpoint_every and state.step % r.checkpoint_every == 0:
            run.save(LAST)

    started = time.perf_counter()
    previous_handler = _install_sigint(s)
    try:
        while s.epoch < r.epochs and not _step_limit_reached(run):
            sampler.set_epoch(s.epoch)
            if hasattr(run.data.train, "set_epoch"):
                run.data.train.set_epoch(s.epoch)
            done_in_epoch = s.step - s.epoch * run.steps_per_epoch
            sampler.set_skip(done_in_epoch * run.per_rank_batch)
            train_loader.generator.manual_seed(derive_seed(r.seed, "workers", s.epoch, run.runtime.dist.rank))
            try:
                train_metrics = train_one_epoch(
                    s, train_loader, r, run.runtime, run.steps_per_epoch, on_step, show_progress
                )
            except TrainingDiverged as exc:
                raise _diverged_message(run, exc) from None
            if s.stop_requested:
                run.save(LAST)
                raise TrainingInterrupted(
                    f"interrupted at step {s.step}; checkpoint saved. "
                    f"Continue with: densenets train --resume {run.run_dir}"
                )
            if s.step < (s.epoch + 1) * run.steps_per_epoch:  # stopped by max_steps inside the epoch
                average_buffers(unwrap_model(s.model))
                run.save(LAST)
                break
            try:
                _end_epoch(run, train_metrics, test_loader, val_loader, metrics_log)
            except TrainingDiverged as exc:
                raise _diverged_message(run, exc) from None
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        metrics_log.close()
    barrier()
    summary = _summary(run, test_loader, time.perf_counter() - started, params)
    if run.runtime.dist.is_main:
        write_json(run.run_dir / SUMMARY, summary)
        _print_summary(run, summary)
    return summary


def _end_epoch(run: Run, train_metrics: dict, test_loader, val_loader, metrics_log: RunLog) -> None:
    s, r = run.state, run.recipe
    model = unwrap_model(s.model)
    average_buffers(model)
    test = evaluate(model, test_loader, run.runtime)
    val = evaluate(model, val_loader, run.runtime) if val_loader is not None else None
    s.epoch += 1
    s.epoch_sums = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
    record = {
        "epoch": s.epoch,
        "step": s.step,
        **train_metrics,
        "test_loss": test["loss"],
        "test_error": test["error"],
        "test_top5_error": 100.0 - test["top5"],
    }
    if val is not None:
        record.update(val_loss=val["loss"], val_error=val["error"])
    selected_on = "val" if val is not None else "test"
    error = record[f"{selected_on}_error"]
    is_best = not s.best or error < s.best["error"]
    if is_best:
        s.best = {"error": error, "epoch": s.epoch, "selected_on": selected_on, "test_error": test["error"]}
        run.save(BEST)
    run.save(LAST)
    metrics_log.epoch(record)
    val_text = f"  val err {val['error']:5.2f}%" if val is not None else ""
    run.log(
        f"epoch {s.epoch:>3}/{r.epochs}  train loss {record['train_loss']:.4f} err {record['train_error']:5.2f}%  "
        f"test loss {test['loss']:.4f} err {test['error']:5.2f}%{val_text}  lr {record['lr']:g}  "
        f"{record['train_seconds']:.1f}s  {record['images_per_s']:.0f} img/s" + ("  *best" if is_best else "")
    )


def _summary(run: Run, test_loader, wall: float, params: int) -> dict:
    from .runlog import read_metrics

    records = read_metrics(run.run_dir) if run.runtime.dist.is_main else []
    last = records[-1] if records else None
    if last is None or last["step"] != run.state.step:
        test = evaluate(unwrap_model(run.state.model), test_loader, run.runtime)
        final_error = test["error"]
    else:
        final_error = last["test_error"]
    seconds = sum(rec["train_seconds"] for rec in records)
    images = sum(rec["train_images"] for rec in records)
    return {
        "model": run.recipe.model,
        "data": run.recipe.data,
        "parameters": params,
        "epochs_completed": run.state.epoch,
        "steps": run.state.step,
        "final_test_error": final_error,
        "best": run.state.best,
        "wall_seconds": wall,
        "train_images_per_s": images / seconds if seconds else None,
        "run_dir": str(run.run_dir),
    }


def _print_summary(run: Run, summary: dict) -> None:
    best = summary["best"]
    best_text = (
        f"best {best['selected_on']} error {best['error']:.2f}% at epoch {best['epoch']} "
        f"(test error then {best['test_error']:.2f}%)"
        if best
        else "no completed epoch"
    )
    speed = summary["train_images_per_s"]
    run.log(
        f"done: {summary['epochs_completed']} epochs ({summary['steps']} steps) in {summary['wall_seconds']:.1f}s"
        + (f", {speed:.0f} train img/s" if speed else "")
    )
    run.log(f"final test error {summary['final_test_error']:.2f}% (accuracy {100 - summary['final_test_error']:.2f}%)")
    run.log(f"{best_text}; {summary['parameters']:,} parameters; checkpoints in {run.run_dir}")


def _diverged_message(run: Run, exc: TrainingDiverged) -> TrainingDiverged:
    kept = f"{run.run_dir / LAST} (step {_saved_step(run)})" if (run.run_dir / LAST).exists() else "none yet"
    return TrainingDiverged(
        f"{exc}; training stopped. Last good checkpoint: {kept}. "
        "Try a lower --lr, or --amp none if mixed precision is on."
    )


def _step_limit_reached(run: Run) -> bool:
    return bool(run.recipe.max_steps) and run.state.step >= run.recipe.max_steps


def _saved_step(run: Run) -> int | str:
    try:
        return int(load_checkpoint(run.run_dir / LAST)["step"])
    except UserError:
        return "unreadable"


def _any_rank(flag: bool, run: Run) -> bool:
    return all_reduce_sum([float(flag)], run.runtime.device)[0] > 0


def _install_sigint(state: TrainState):
    """First Ctrl-C: finish the current step, save, exit. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if state.stop_requested:
            raise KeyboardInterrupt
        state.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", flush=True)

    return signal.signal(signal.SIGINT, handler)
