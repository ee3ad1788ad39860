"""What a run says and records: its opening lines, each epoch's record and line, the choice
of ``best.pt``, and the summary written to summary.json and printed at the end."""

from __future__ import annotations

from .build_run import Run
from .checkpoint import unwrap_model
from .distributed import all_reduce_sum
from .loop import TrainState, evaluate
from .runlog import read_metrics, reported_result


def describe_run(run: Run, params: int) -> None:
    """The run's first lines: what is trained on what, where it is written, and what was chosen for the data."""
    r = run.recipe
    sizes = run.config["data"]["sizes"]
    run.log(
        f"training {r.model} ({params:,} parameters) on {r.data} "
        f"({sizes['train']} train / {sizes['val']} val / {sizes['test']} test images, {run.data.num_classes} classes) "
        f"for {r.epochs} epochs, batch {r.batch_size}, on {run.runtime.device}"
        + (f" x{run.runtime.dist.world_size} processes" if run.runtime.dist.enabled else "")
    )
    run.log(f"run folder: {run.run_dir}")
    describe_data(run)


def describe_data(run: Run) -> None:
    """Say what was chosen for the user's images (augmentation, channels) in the run's first lines."""
    r, data = run.recipe, run.data
    if r.data not in ("imagefolder",):
        return
    how = "as asked" if r.augment else f"chosen for {data.image_size}px images; set --augment to change"
    grey = "grey images, one channel" if data.in_channels == 1 else "RGB"
    mean, std = ([round(v, 4) for v in data.preprocess[k]] for k in ("mean", "std"))
    run.log(f"augmentation: {data.augment} ({how}); {grey}; normalised with mean {mean}, std {std}")
    if r.freeze_epochs:
        run.log(f"classifier only for the first {r.freeze_epochs} epoch(s), then the whole network")


def summarise(run: Run, test_loader, wall: float, params: int) -> dict:
    s = run.state
    records = read_metrics(run.run_dir) if run.runtime.dist.is_main else []
    # Rank 0 alone can read the metrics file; every rank must agree whether to evaluate
    # (a collective), or the ranks that evaluate wait for the others forever.
    stale = not records or records[-1]["step"] != s.step
    if all_reduce_sum([float(stale)], run.runtime.device)[0] > 0:
        final_error = evaluate(s.result_model(unwrap_model(s.model)), test_loader, run.runtime)["error"]
    else:
        final_error = records[-1]["test_error"]
    seconds = sum(rec["train_seconds"] for rec in records)
    images = sum(rec["train_images"] for rec in records)
    return {
        "model": run.recipe.model,
        "data": run.recipe.data,
        "parameters": params,
        "epochs_completed": s.epoch,
        "steps": s.step,
        "final_test_error": final_error,
        "weights_reported": f"EMA of the weights (decay {run.recipe.ema_decay:g})" if s.ema else "the trained weights",
        "best": s.best,
        "reported": reported_result(records) if records else None,
        "wall_seconds": wall,
        "train_images_per_s": images / seconds if seconds else None,
        "run_dir": str(run.run_dir),
    }


def print_summary(run: Run, summary: dict) -> None:
    best = summary["best"]
    if not best:
        best_text = "no completed epoch"
    elif best["selected_on"] == "val":
        best_text = (
            f"best validation error {best['error']:.2f}% at epoch {best['epoch']} "
            f"(test error then {best['test_error']:.2f}%; best.pt)"
        )
    else:
        best_text = (
            f"lowest test error {best['error']:.2f}% at epoch {best['epoch']} (best.pt, chosen on the test set: "
            "not a result to report; the final epoch is)"
        )
    speed = summary["train_images_per_s"]
    run.log(
        f"done: {summary['epochs_completed']} epochs ({summary['steps']} steps) in {summary['wall_seconds']:.1f}s"
        + (f", {speed:.0f} train img/s" if speed else "")
    )
    ema = f"; {summary['weights_reported']}" if run.state.ema is not None else ""
    run.log(
        f"final test error {summary['final_test_error']:.2f}% (accuracy {100 - summary['final_test_error']:.2f}%{ema})"
    )
    reported = summary["reported"]
    if reported and reported["rule"] != "final epoch":
        run.log(f"reported test error {reported['test_error']:.2f}% ({reported['rule']}, epoch {reported['epoch']})")
    run.log(f"{best_text}; {summary['parameters']:,} parameters; checkpoints in {run.run_dir}")


def epoch_record(s: TrainState, train_metrics: dict, test: dict, val: dict | None, raw_test: dict | None) -> dict:
    """One line of metrics.jsonl: the epoch's training figures and its test (and validation) results."""
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
    if raw_test is not None:
        record.update(raw_test_error=raw_test["error"])
    return record


def select_best(s: TrainState, record: dict, test: dict) -> bool:
    """Update ``s.best`` (on the validation split when there is one, else the test set); True if this epoch is it."""
    selected_on = "val" if "val_error" in record else "test"
    error = record[f"{selected_on}_error"]
    is_best = not s.best or error < s.best["error"]
    if is_best:
        s.best = {"error": error, "epoch": s.epoch, "selected_on": selected_on, "test_error": test["error"]}
    return is_best


def epoch_line(run: Run, record: dict, val: dict | None, raw_test: dict | None, is_best: bool) -> str:
    """The line printed at the end of each epoch."""
    val_text = f"  val err {val['error']:5.2f}%" if val is not None else ""
    if raw_test is not None:
        val_text += f"  (EMA weights; without EMA test err {raw_test['error']:5.2f}%)"
    return (
        f"epoch {run.state.epoch:>3}/{run.recipe.epochs}  train loss {record['train_loss']:.4f} "
        f"err {record['train_error']:5.2f}%  "
        f"test loss {record['test_loss']:.4f} err {record['test_error']:5.2f}%{val_text}  lr {record['lr']:g}  "
        f"{record['train_seconds']:.1f}s  {record['images_per_s']:.0f} img/s  "
        f"data wait {record['data_wait_seconds']:.1f} s of {record['train_seconds']:.1f} s"
        + ("  *best" if is_best else "")
    )
