"""What a run says and records: its opening lines, each epoch's record and line, the choice
of ``best.pt``, and the summary written to summary.json and printed at the end."""

from __future__ import annotations

import math

from ..data.csv_labels import multilabel_targets
from ..data.resident import PAD, progressive_size
from .build_run import Run
from .checkpoint import unwrap_model
from .distributed import all_reduce_sum
from .loop import TrainState, evaluate
from .multilabel import one_sided_classes
from .muon import NEWTON_SCHULZ_STEPS
from .runlog import is_better, read_metrics, reported_result, unranked_reason, validation_score
from .runtime import bf16_cpu_note
from .tta import TTA_MODES


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
    if r.train_sizes:
        run.log(progressive_line(r.train_sizes, r.epochs))
    if (r.translate, r.flip) != (PAD, "random"):
        flips = "each image mirrored on every other epoch" if r.flip == "alternate" else "random flips"
        run.log(f"augmentation: shifts of up to {r.translate} px (the paper's: {PAD}), {flips}")
    if not r.decay_norm_bias and r.weight_decay:
        muon = r.optimizer == "muon"
        decayed = (
            "linear weights only (convolution filters: Muon holds their norm; "
            if muon
            else "convolution and linear weights only ("
        )
        run.log(f"weight decay {r.weight_decay:g} on {decayed}BatchNorm and biases: none)")
    if r.bias_lr_scale != 1 or r.freeze_norm_scale:
        shifts = f"BatchNorm shifts and biases at {r.bias_lr_scale:g}x the lr" if r.bias_lr_scale != 1 else ""
        scales = "BatchNorm scales held at 1 (lr 0)" if r.freeze_norm_scale else ""
        run.log("; ".join(part for part in (shifts, scales) if part))
    if r.optimizer == "muon":
        run.log(
            f"optimizer: Muon for the convolution filters (peak lr {r.muon_lr:g}: each step turns a filter bank by "
            f"about that fraction of its norm, held at sqrt(out channels); {NEWTON_SCHULZ_STEPS} Newton-Schulz steps "
            f"in fp32, their FLOPs counted; no weight decay on them), SGD for the rest"
        )
    if note := bf16_cpu_note(run.runtime):
        run.log(note)


def progressive_line(sizes: tuple[int, ...], epochs: int) -> str:
    """``progressive resizing: epochs 1-4 at 16 px, 5-8 at 24 px, 9-12 at 32 px (...)``."""
    parts: list[tuple[int, int, int]] = []  # (first, last, size), 1-based epochs
    for epoch in range(epochs):
        size = progressive_size(epoch, epochs, sizes)
        if parts and parts[-1][2] == size:
            parts[-1] = (parts[-1][0], epoch + 1, size)
        else:
            parts.append((epoch + 1, epoch + 1, size))
    shown = ", ".join(f"{a}-{b} at {s} px" if a != b else f"{a} at {s} px" for a, b, s in parts)
    return (
        f"progressive resizing: epochs {shown} (each augmented batch resized, bilinear antialiased; "
        f"evaluation at {sizes[-1]} px)"
    )


def describe_data(run: Run) -> None:
    """Say what was chosen for the user's images (augmentation, channels, splits, labels) in the run's first lines."""
    r, data = run.recipe, run.data
    for note in data.notes:
        run.log(note)
    if data.multilabel:
        describe_multilabel(run)
    if r.data not in ("imagefolder", "csv") or data.spatial_dims != 2:  # volumes: said in their note
        return
    how = "as asked" if r.augment else f"chosen for {data.image_size}px images; set --augment to change"
    grey = "grey images, one channel" if data.in_channels == 1 else "RGB"
    mean, std = ([round(v, 4) for v in data.preprocess[k]] for k in ("mean", "std"))
    run.log(f"augmentation: {data.augment} ({how}); {grey}; normalised with mean {mean}, std {std}")
    if r.freeze_epochs:
        run.log(f"classifier only for the first {r.freeze_epochs} epoch(s), then the whole network")


def describe_multilabel(run: Run) -> None:
    """Loss, positive weights, one-sided classes and how the thresholds will be chosen, for a multi-label run."""
    r, data = run.recipe, run.data
    weights = ""
    if run.pos_weight is not None:
        shown = ", ".join(f"{n} {w:.2f}" for n, w in zip(data.class_names, run.pos_weight.tolist(), strict=True))
        weights = f"; positives weighted negatives/positives per class ({shown})"
    run.log(f"multi-label: sigmoid outputs, binary cross-entropy masked where a label is unknown{weights}")
    warning = one_sided_classes(multilabel_targets(data.train), data.class_names)
    if warning:
        run.log(warning)
    if data.val is not None:
        rule = "max F1" if r.threshold == "f1" else "Youden's J (sensitivity + specificity - 1)"
        run.log(f"operating points: a threshold per class at {rule} on the validation split, saved with the weights "
                "(0.5 for a class without both label values there, named)")  # fmt: skip
    else:
        run.log("operating points: no validation split, so thresholds 0.5 for every class "
                "(give the CSV a split column with val rows, or --val-split N)")  # fmt: skip


def summarise(run: Run, test_loader, wall: float, params: int, val_loader=None, from_step: int = 0) -> dict:
    """The run's summary.json. With test-time augmentation the test set is read once more with it;
    with a validation split too, that split is read with every augmentation mode, to choose one on.
    ``wall`` is this session's wall time; a run resumed at ``from_step`` says so (``wall_s`` adds the
    sessions up)."""
    s = run.state
    is_main = run.runtime.dist.is_main
    records = read_metrics(run.run_dir) if is_main else []
    # Rank 0 alone reads the metrics file: it decides whether its last record is of the final
    # weights and sends the decision, and that record's error, to every rank (the other ranks
    # contribute zeros to the sum). The evaluation is a collective that all ranks join or none.
    stale = not records or records[-1]["step"] != s.step
    key = "test_auroc" if run.data.multilabel else "test_error"  # multi-label: macro AUROC, never an error
    recorded = math.nan if stale or records[-1][key] is None else float(records[-1][key])
    decided = [float(stale), recorded] if is_main else [0.0, 0.0]
    stale, recorded = all_reduce_sum(decided, run.runtime.device)
    final_classes = records[-1].get("test_auroc_classes") if records and not stale else None
    if stale:
        run.log(f"evaluating the weights of step {s.step} on the test set (the last epoch record is older)")
        final = evaluate(s.result_model(unwrap_model(s.model)), test_loader, run.runtime)
        final_result = _finite(final["auroc_macro"]) if run.data.multilabel else final["error"]
        final_classes = final.get("auroc_classes")
    else:
        final_result = _finite(recorded)  # an AUROC recorded as None travels as NaN
    tta = {}
    if run.recipe.tta != "none" and not run.data.multilabel:
        # reported beside the plain figure, never instead of it; the test set is read once more
        result = s.result_model(unwrap_model(s.model))
        with_tta = evaluate(result, test_loader, run.runtime, tta=run.recipe.tta)
        tta = {"tta": run.recipe.tta, "final_test_error_tta": with_tta["error"],
               "final_test_loss_tta": with_tta["loss"]}  # fmt: skip
        if val_loader is not None:
            tta["final_val_error_by_tta"] = {
                mode: evaluate(result, val_loader, run.runtime, tta=mode)["error"] for mode in TTA_MODES
            }
    seconds = sum(rec["train_seconds"] for rec in records)
    images = sum(rec["train_images"] for rec in records)
    # the operating points of the checkpoint eval and predict pick for the run folder
    chosen = s.best if s.best.get("selected_on") == "val" else run.config["data"]["preprocess"]
    multilabel = {
        "thresholds": chosen.get("thresholds"),
        "threshold_source": chosen.get("threshold_source"),
        "threshold_sources": chosen.get("threshold_sources"),
        "thresholds_of": "best.pt" if chosen is s.best else "last.pt",
    } if run.data.multilabel else {}  # fmt: skip
    return {
        "model": run.recipe.model,
        "data": run.recipe.data,
        "parameters": params,
        "epochs_completed": s.epoch,
        "steps": s.step,
        f"final_{key}": final_result,
        **tta,
        **({"final_test_auroc_classes": final_classes} if run.data.multilabel else {}),
        **multilabel,
        "weights_reported": f"EMA of the weights (decay {run.recipe.ema_decay:g})" if s.ema else "the trained weights",
        "best": s.best,
        "best_epoch": best_epoch_line(s, records, run.data.multilabel),
        "reported": reported_result(records) if records else None,
        "wall_seconds": wall,
        **({"wall_seconds_from_step": from_step} if from_step else {}),  # resumed: this session's wall time
        "train_images_per_s": images / seconds if seconds else None,
        "run_dir": str(run.run_dir),
    }


def _done_line(summary: dict) -> str:
    """The first line of a run's summary; the wall time is named as this session's when it was resumed."""
    text = f"done: {summary['epochs_completed']} epochs ({summary['steps']} steps) in {summary['wall_seconds']:.1f}s"
    if summary.get("wall_seconds_from_step"):
        step = summary["wall_seconds_from_step"]
        text += f" (this session, from step {step}; the run's wall time over all sessions below)"
    speed = summary["train_images_per_s"]
    return text + (f", {speed:.0f} train img/s" if speed else "")


def print_summary(run: Run, summary: dict) -> None:
    if run.data.multilabel:
        _print_multilabel_summary(run, summary)
        return
    best = summary["best"]
    if best.get("selected_on") == "val":
        best_text = (
            f"best validation error {best['val_error']:.2f}% at epoch {best['epoch']} "
            f"(test error then {best['test_error']:.2f}%; best.pt)"
        )
    else:
        best_text = summary["best_epoch"]
    run.log(_done_line(summary))
    ema = f"; {summary['weights_reported']}" if run.state.ema is not None else ""
    run.log(
        f"final test error {summary['final_test_error']:.2f}% (accuracy {100 - summary['final_test_error']:.2f}%{ema})"
    )
    if "final_test_error_tta" in summary:
        error = summary["final_test_error_tta"]
        run.log(f"final test error with {summary['tta']} test-time augmentation {error:.2f}% (accuracy "
                f"{100 - error:.2f}%; the figure above is without it)")  # fmt: skip
    if "final_val_error_by_tta" in summary:
        by_mode = ", ".join(f"{mode} {error:.2f}%" for mode, error in summary["final_val_error_by_tta"].items())
        run.log(f"final validation error by test-time augmentation (choose the mode on these): {by_mode}")
    reported = summary["reported"]
    if reported and reported["rule"] != "final epoch":
        run.log(f"reported test error {reported['test_error']:.2f}% ({reported['rule']}, epoch {reported['epoch']})")
    run.log(f"{best_text}; {summary['parameters']:,} parameters; checkpoints in {run.run_dir}")


def _print_multilabel_summary(run: Run, summary: dict) -> None:
    best = summary["best"]
    run.log(_done_line(summary))
    ema = f" ({summary['weights_reported']})" if run.state.ema is not None else ""
    final = {"test_auroc": summary["final_test_auroc"], "test_auroc_classes": summary.get("final_test_auroc_classes")}
    run.log(f"final test macro AUROC {macro(final, 'test', len(run.data.class_names))}{ema}")
    reported = summary["reported"]
    if reported and reported["rule"] != "final epoch":
        run.log(
            f"reported test macro AUROC {_fmt(reported['test_auroc'])} ({reported['rule']}, epoch {reported['epoch']})"
        )
    if best.get("selected_on") == "val":
        best_text = (f"best validation macro AUROC {_fmt(best['val_auroc'])} at epoch {best['epoch']} "
                     f"(test macro AUROC then {_fmt(best['test_auroc'])}; best.pt)")  # fmt: skip
    else:
        best_text = summary["best_epoch"]
    thresholds = summary.get("thresholds")
    if thresholds:
        shown = ", ".join(f"{n} {t:.3f}" for n, t in zip(run.data.class_names, thresholds, strict=True))
        run.log(f"{summary['thresholds_of']} thresholds ({summary['threshold_source']}): {shown}")
    run.log(f"{best_text}; {summary['parameters']:,} parameters; checkpoints in {run.run_dir}")


def _finite(value: float | None) -> float | None:
    """NaN (no class with both labels known) as None, so metrics.jsonl stays plain JSON."""
    return None if value is None or math.isnan(value) else float(value)


def macro(record: dict, prefix: str, classes: int) -> str:
    """A macro AUROC with the number of classes it averages: ``0.8300 over 4 of 5 classes``."""
    over = record.get(f"{prefix}_auroc_classes")
    return _fmt(record[f"{prefix}_auroc"]) + ("" if over is None else f" over {over} of {classes} classes")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def multilabel_figures(prefix: str, result: dict, class_names: list[str]) -> dict:
    """``{prefix}_loss``, ``_auroc`` (macro, the headline), ``_auroc_micro``, ``_ap`` (macro) and per-class
    AUROC and AP of an :func:`evaluate` result on multi-label data."""

    def per_class(values: list[float]) -> dict:
        return {n: _finite(v) for n, v in zip(class_names, values, strict=True)}

    return {
        f"{prefix}_loss": result["loss"],
        f"{prefix}_auroc": _finite(result["auroc_macro"]),
        f"{prefix}_auroc_classes": result["auroc_classes"],  # how many classes the macro mean is over
        f"{prefix}_auroc_micro": _finite(result["auroc_micro"]),
        f"{prefix}_ap": _finite(result["ap_macro"]),
        f"{prefix}_auroc_per_class": per_class(result["auroc"]),
        f"{prefix}_ap_per_class": per_class(result["average_precision"]),
    }


def epoch_record(
    s: TrainState,
    train_metrics: dict,
    test: dict,
    val: dict | None,
    raw_test: dict | None,
    class_names: list[str] | None = None,
    raw_val: dict | None = None,
) -> dict:
    """One line of metrics.jsonl: the epoch's training figures and its test (and validation) results;
    a multi-label run's are AUROC and AP (:func:`multilabel_figures`)."""
    if "auroc_macro" in test:
        record = {"epoch": s.epoch, "step": s.step, **train_metrics, **multilabel_figures("test", test, class_names)}
        if val is not None:
            record.update(multilabel_figures("val", val, class_names))
        if raw_test is not None:
            record.update(raw_test_auroc=_finite(raw_test["auroc_macro"]))
        if raw_val is not None:
            record.update(raw_val_auroc=_finite(raw_val["auroc_macro"]))
        return record
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
    if raw_val is not None:
        record.update(raw_val_error=raw_val["error"])
    return record


def select_best(s: TrainState, record: dict) -> bool:
    """Update ``s.best`` by the one rule for the best epoch (:func:`.runlog.is_better`); True if
    this epoch is it (``best.pt``): the best validation epoch, or the final epoch while validation
    cannot rank epochs (no validation split, or its figure undefined)."""
    if not is_better(record, _as_record(s.best)):
        return False
    metric = "auroc" if "test_auroc" in record else "error"
    ranked = validation_score(record) is not None
    s.best = {
        "epoch": s.epoch,
        "selected_on": "val" if ranked else "final",
        f"val_{metric}": record.get(f"val_{metric}"),
        f"test_{metric}": record[f"test_{metric}"],
    }
    return True


def _as_record(best: dict) -> dict | None:
    """``s.best`` as an epoch record; a checkpoint of an older version kept ``error``/``auroc``
    (of the validation split when ``selected_on`` is ``val``, else of the test set: unranked)."""
    if not best:
        return None
    for metric in ("error", "auroc"):
        if metric in best and f"test_{metric}" in best and f"val_{metric}" not in best:
            value = best[metric] if best.get("selected_on") == "val" else None
            return {f"test_{metric}": best[f"test_{metric}"], f"val_{metric}": value}
    return best


def best_epoch_line(s: TrainState, records: list[dict], multilabel: bool) -> str:
    """One line on which epoch ``best.pt`` holds and why."""
    if not s.best:
        return "no completed epoch"
    if s.best.get("selected_on") == "val":
        what = "highest validation macro AUROC" if multilabel else "lowest validation error"
        return f"best.pt: epoch {s.best['epoch']}, the {what}"
    why = unranked_reason(records) if records else "no epoch record"
    return f"best.pt: the final epoch ({s.best['epoch']}); validation cannot rank epochs: {why}"


def epoch_line(run: Run, record: dict, val: dict | None, is_best: bool) -> str:
    """The line printed at the end of each epoch. With label smoothing the train loss is against
    the smoothed targets, the test loss against the labels: the line says so. With an EMA it adds
    the trained weights' figures the record holds (validation each epoch, test at the end)."""
    smoothing = run.recipe.label_smoothing
    smoothed = f" (smoothed {smoothing:g}, not comparable with test)" if smoothing else ""
    # "*best" marks an epoch validation chose; when it cannot rank epochs each one is only the latest
    is_best = is_best and run.state.best.get("selected_on") == "val"
    if "test_auroc" in record:
        n = len(run.data.class_names)
        val_text = f"  val macro AUROC {macro(record, 'val', n)}" if "val_auroc" in record else ""
        raw = [f"{split} {_fmt(record[f'raw_{split}_auroc'])}" for split in _raw_splits(record, "auroc")]
        if raw:
            val_text += f"  (EMA weights; without EMA macro AUROC {', '.join(raw)})"
        return (
            f"epoch {run.state.epoch:>3}/{run.recipe.epochs}  train loss{smoothed} {record['train_loss']:.4f}  "
            f"test loss {record['test_loss']:.4f} macro AUROC {macro(record, 'test', n)}{val_text}  "
            f"lr {record['lr']:g}  {record['train_seconds']:.1f}s  {record['images_per_s']:.0f} img/s  "
            f"data wait {record['data_wait_seconds']:.1f} s of {record['train_seconds']:.1f} s"
            + ("  *best" if is_best else "")
        )
    val_text = f"  val err {val['error']:5.2f}%" if val is not None else ""
    raw = [f"{split} err {record[f'raw_{split}_error']:5.2f}%" for split in _raw_splits(record, "error")]
    if raw:
        val_text += f"  (EMA weights; without EMA {', '.join(raw)})"
    return (
        f"epoch {run.state.epoch:>3}/{run.recipe.epochs}  train loss{smoothed} {record['train_loss']:.4f} "
        f"err {record['train_error']:5.2f}%  "
        f"test loss {record['test_loss']:.4f} err {record['test_error']:5.2f}%{val_text}  lr {record['lr']:g}  "
        f"{record['train_seconds']:.1f}s  {record['images_per_s']:.0f} img/s  "
        f"data wait {record['data_wait_seconds']:.1f} s of {record['train_seconds']:.1f} s"
        + ("  *best" if is_best else "")
    )


def _raw_splits(record: dict, metric: str) -> list[str]:
    """The splits an EMA run's record has the trained weights' figure for (test at the end only)."""
    return [split for split in ("test", "val") if f"raw_{split}_{metric}" in record]
