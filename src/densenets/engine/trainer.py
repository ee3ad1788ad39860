"""``fit``: build a run (:mod:`.build_run`), train it epoch by epoch, evaluate, checkpoint and
report (:mod:`.reporting`); Ctrl-C saves and stops (:mod:`.interrupt`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn
from torch.utils.data import DataLoader

from ..data.loaders import TrainLoader, default_loader, default_workers, make_train_loader
from ..data.samplers import ShardSampler
from ..errors import TrainingDiverged, TrainingInterrupted, UserError
from ..models.pretrained import cfg_from_preprocess
from .build_run import RESUME_OVERRIDES, Run, build_run, non_finite_tensors, recipe_to_run
from .checkpoint import load_checkpoint, unwrap_model
from .distributed import DistInfo, all_reduce_sum, average_buffers, barrier, init_distributed
from .flops import RunCost, cost_line
from .interrupt import ignore_sigint, install_sigint, restore_sigint
from .loop import TrainState, evaluate, new_epoch_sums, train_one_epoch
from .multilabel import DEFAULT_THRESHOLD, choose_thresholds, threshold_sources
from .recipes import Recipe
from .reporting import describe_run, epoch_line, epoch_record, print_summary, select_best, summarise
from .runfolder import RunFolder
from .runlog import BEST, LAST, SUMMARY, RunLog, read_metrics, write_json
from .runtime import make_runtime, tune_cpu_allocator

__all__ = ["RESUME_OVERRIDES", "FitResult", "fit", "non_finite_tensors"]


@dataclass
class FitResult:
    summary: dict
    model: nn.Module  # the trained model, unwrapped from DDP / torch.compile


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
    The folder is locked for the run's life; a run that fails before its first checkpoint
    removes the folder it created.
    """
    dist = DistInfo.from_env()
    folder = RunFolder(run_dir)
    recipe = recipe_to_run(recipe, folder.path, resume, resume_overrides)
    runtime = make_runtime(recipe, dist)
    if recipe.loader is None:  # decided once and recorded: resume must use the same augmentation stream
        recipe = replace(recipe, loader=default_loader(recipe.data, runtime.device.type))
    if runtime.device.type == "cpu":
        tune_cpu_allocator()
    init_distributed(dist, runtime.device)
    failed = True
    try:
        run = build_run(recipe, runtime, folder, resume)
        summary = _train(run, show_progress)
        failed = False
        model = run.state.result_model(unwrap_model(run.state.model))
        data = run.config["data"]  # what the checkpoints record: densenets.load gives the same pretrained_cfg
        model.pretrained_cfg = cfg_from_preprocess(data["preprocess"], data["num_classes"], data["class_names"])
        return FitResult(summary, model)
    finally:
        if dist.is_main:
            folder.close(failed=failed)


def _loaders(run: Run) -> tuple[TrainLoader, DataLoader, DataLoader | None]:
    r, dist, data = run.recipe, run.runtime.dist, run.data
    train = make_train_loader(
        data,
        r.loader,
        run.per_rank_batch,
        r.seed,
        run.runtime.device,
        workers=r.workers,
        rank=dist.rank,
        world_size=dist.world_size,
        drop_last=run.drop_last,
        channels_last=run.runtime.channels_last,
        worker_init_fn=ignore_sigint,
        train_sizes=r.train_sizes,
        epochs=r.epochs,
        translate=r.translate,
        flip=r.flip,
    )
    pin = run.runtime.device.type == "cuda"
    workers = r.workers if r.workers is not None else default_workers(run.runtime.device.type)

    def eval_loader(dataset):
        return DataLoader(
            dataset,
            batch_size=max(run.per_rank_batch, 64),
            sampler=ShardSampler(len(dataset), dist.rank, dist.world_size),
            num_workers=workers,
            pin_memory=pin,
            worker_init_fn=ignore_sigint if workers else None,
        )

    return train, eval_loader(data.test), eval_loader(data.val) if data.val is not None else None


def _train(run: Run, show_progress: bool) -> dict:
    r, s = run.recipe, run.state
    train_loader, test_loader, val_loader = _loaders(run)
    metrics_log = run.on_main(lambda: RunLog(run.run_dir)) or RunLog(run.run_dir, enabled=False)
    if metrics_log.note:
        run.log(metrics_log.note)
    params = sum(p.numel() for p in unwrap_model(s.model).parameters())
    describe_run(run, params)
    started, first_step = time.perf_counter(), s.step  # a resumed run: this session's start
    cost = RunCost(s, run.runtime, r, run.pos_weight)

    def save(*names: str) -> None:
        cost.stamp()
        run.save(*names)

    def on_step(state: TrainState) -> None:
        if run.runtime.dist.enabled and _any_rank(state.stop_requested, run):
            state.stop_requested = True
        if r.checkpoint_every and state.step % r.checkpoint_every == 0:
            save(LAST)

    previous_handler = install_sigint(s)
    try:
        while not _training_over(run, s.epoch):
            done_in_epoch = s.step - s.epoch * run.steps_per_epoch
            train_loader.start_epoch(s.epoch, done_in_epoch * run.per_rank_batch)
            try:
                train_metrics = train_one_epoch(
                    s, train_loader, r, run.runtime, run.steps_per_epoch, on_step, show_progress, run.pos_weight, cost
                )
            except TrainingDiverged as exc:
                raise _diverged_message(run, exc) from None
            if s.stop_requested:
                save(LAST)
                raise TrainingInterrupted(
                    f"interrupted at step {s.step}; checkpoint saved. "
                    f"Continue with: densenets train --resume {run.run_dir}"
                )
            if s.step < (s.epoch + 1) * run.steps_per_epoch:  # stopped by max_steps inside the epoch
                average_buffers(unwrap_model(s.model))
                save(LAST)
                break
            try:
                _end_epoch(run, train_metrics, test_loader, val_loader, metrics_log, cost)
            except TrainingDiverged as exc:
                raise _diverged_message(run, exc) from None
    finally:
        restore_sigint(previous_handler)
        metrics_log.close()
    barrier()
    summary = summarise(run, test_loader, time.perf_counter() - started, params, val_loader, first_step)
    records = run.on_main(lambda: read_metrics(run.run_dir)) or []
    summary.update(cost.summary(records, run.data.multilabel))
    run.on_main(lambda: write_json(run.run_dir / SUMMARY, summary))
    print_summary(run, summary)
    run.log(cost_line(summary))
    return summary


def _end_epoch(run: Run, train_metrics: dict, test_loader, val_loader, metrics_log: RunLog, cost: RunCost) -> None:
    s = run.state
    trained = unwrap_model(s.model)
    average_buffers(trained)
    model = s.result_model(trained)
    raw_test = raw_val = None
    if s.ema is not None:  # the trained weights too, so the EMA's effect is measured, not assumed:
        average_buffers(model)  # on the validation split each epoch, on the test set at the end only
        if _training_over(run, s.epoch + 1):
            raw_test = evaluate(trained, test_loader, run.runtime, cost=cost)
        raw_val = evaluate(trained, val_loader, run.runtime, cost=cost) if val_loader is not None else None
    test = evaluate(model, test_loader, run.runtime, cost=cost)
    val = evaluate(model, val_loader, run.runtime, cost=cost) if val_loader is not None else None
    s.epoch += 1
    s.epoch_sums = new_epoch_sums()
    record = epoch_record(s, train_metrics, test, val, raw_test, run.data.class_names, raw_val)
    record.update(cost.end_epoch(train_metrics["train_seconds"]))  # cumulative, for curves against compute
    if run.data.multilabel:  # saved with the checkpoints below, read by predict and eval
        thresholds, source, sources = _thresholds(run, val)
        chosen = {"thresholds": thresholds, "threshold_source": source, "threshold_sources": sources}
        run.config["data"]["preprocess"].update(chosen)
        record["thresholds"] = dict(zip(run.data.class_names, thresholds, strict=True))
    is_best = select_best(s, record)
    if is_best and run.data.multilabel:  # best.pt's own operating points, for the summary
        s.best.update(chosen)
    cost.stamp()
    run.save(*([BEST] if is_best else []), LAST)
    run.on_main(lambda: metrics_log.epoch(record))
    run.log(epoch_line(run, record, val, is_best))


def _thresholds(run: Run, val: dict | None) -> tuple[list[float], str, dict[str, str]]:
    """Per-class operating points of this epoch's weights: chosen on the validation split, else 0.5;
    with a line on how, and how for each class (a class without both labels in validation: 0.5)."""
    names = run.data.class_names
    if val is None:
        why = "the run had no validation split"
        return [DEFAULT_THRESHOLD] * len(names), f"0.5 for every class: {why}", dict.fromkeys(names, f"0.5: {why}")
    sources = threshold_sources(val["targets"], run.recipe.threshold, names)
    rule = {"f1": "max F1", "youden": "max Youden's J"}[run.recipe.threshold]
    source = f"{rule} on the validation split ({val['count']} images, epoch {run.state.epoch})"
    fallback = [n for n, how in sources.items() if how.startswith(f"{DEFAULT_THRESHOLD}:")]
    if fallback:
        source += f"; {DEFAULT_THRESHOLD} for {', '.join(fallback)}: not both label values in validation"
    return choose_thresholds(val["probs"], val["targets"], run.recipe.threshold), source, sources


def _diverged_message(run: Run, exc: TrainingDiverged) -> TrainingDiverged:
    kept = f"{run.run_dir / LAST} (step {_saved_step(run)})" if (run.run_dir / LAST).exists() else "none yet"
    hint = ""
    if run.recipe.amp == "bf16" and run.data.spatial_dims == 3 and run.runtime.device.type == "cpu":
        hint = (
            " With bf16 on a CPU, torch's 3-D convolution gradient can turn NaN where a dense block sees "
            "volumes 2 voxels deep (docs/volumes.md): choose a depth that leaves 3 or more at the last block."
        )
    return TrainingDiverged(
        f"{exc}; training stopped. Last good checkpoint: {kept}. "
        f"Try a lower --lr, or --amp none if mixed precision is on.{hint}"
    )


def _training_over(run: Run, epochs_done: int) -> bool:
    """Whether no epoch follows once ``epochs_done`` epochs are done: all epochs, or ``max_steps`` reached."""
    return epochs_done >= run.recipe.epochs or _step_limit_reached(run)


def _step_limit_reached(run: Run) -> bool:
    return bool(run.recipe.max_steps) and run.state.step >= run.recipe.max_steps


def _saved_step(run: Run) -> int | str:
    try:
        return int(load_checkpoint(run.run_dir / LAST)["step"])
    except UserError:
        return "unreadable"


def _any_rank(flag: bool, run: Run) -> bool:
    return all_reduce_sum([float(flag)], run.runtime.device)[0] > 0
