"""``densenets bench --sections volumes-openvino``: 3-D DenseNet-121 inference through OpenVINO,
ours against MONAI's ``DenseNet121`` through OpenVINO.

Like for like: both models hold the same weights (seed 0; MONAI's loaded from ours) and go
through the same code in one worker process -- ``deploy.openvino.OpenVinoModule``: OpenVINO's
``convert_model`` of the eval fp32 module, one static compile per input shape, the same compile
settings (the precision hint, ``LATENCY``, torch's thread count) -- so the same OpenVINO version
and threads. Before anything is timed, each compiled model's outputs are checked: fp32 against
its PyTorch module and ours against MONAI's (1e-4 of the logits' scale), bf16 within 10% of the
scale of fp32 PyTorch, int8 within 25% (both figures go in the report). int8 is NNCF's
post-training quantization of each converted model, both calibrated on the same random volumes
(8 of them, 2 with ``--quick``, z-scored like the inputs; the quantized models are then compiled and
checked like the others). Then, for each volume size, batch (1 and
4) and precision (fp32, bf16, int8), rounds alternate the two contenders' order; in each round a
contender makes one untimed call and ``max(reps, 5)`` timed calls (their median). The speed-up
is MONAI's time over ours, paired round by round (median, min-max).

``--quick`` runs a tiny DenseNet at 32^3 (batch 1 and 2): it checks the harness only.
Run as a worker: ``python -m densenets.bench.volumes_openvino SPEC``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch

SIZE, BATCHES = 96, (1, 4)
CALIBRATION = {False: 8, True: 2}  # by --quick: volumes NNCF calibrates int8 on (the same for both contenders)
LIMITS = {"fp32": 1e-4, "bf16": 0.1, "int8": 0.25}  # largest output difference from fp32 PyTorch / logits' scale
CONTENDERS = ("densenets through OpenVINO", "MONAI DenseNet121 through OpenVINO")


def calibration_volumes(size: int, count: int) -> list[torch.Tensor]:
    """``count`` random z-scored volumes (1, 1, size, size, size), the same on every call."""
    g = torch.Generator().manual_seed(1000)
    return [torch.randn(1, 1, size, size, size, generator=g) for _ in range(count)]


def _compiled(quick: bool, precision: str, example: torch.Tensor) -> dict:
    """Ours and MONAI's (same weights) as OpenVINO modules, and their eval PyTorch modules."""
    from ..deploy.graph import plain_eval_copy
    from ..deploy.openvino import OpenVinoModule
    from .volumes import build

    modules = {CONTENDERS[0]: plain_eval_copy(build("densenets", quick)), CONTENDERS[1]: build("monai", quick).eval()}
    calibration = calibration_volumes(example.shape[-1], CALIBRATION[quick]) if precision == "int8" else None
    return {label: (module, OpenVinoModule(module, example, precision, calibration=calibration))
            for label, module in modules.items()}  # fmt: skip


def check_outputs(runners: dict, x: torch.Tensor, precision: str) -> dict:
    """Largest differences, relative to the fp32 logits' scale; raises if the models are not the same."""
    with torch.no_grad():
        reference = runners[CONTENDERS[0]][0](x)
        monai_torch = runners[CONTENDERS[1]][0](x)
        outputs = {label: runner(x) for label, (_, runner) in runners.items()}
    scale = max(1.0, reference.abs().max().item())
    diffs = {"monai_vs_ours_pytorch": (monai_torch - reference).abs().max().item() / scale}
    for label, out in outputs.items():
        diffs[f"{label} vs fp32 PyTorch"] = (out - reference).abs().max().item() / scale
    diffs["monai_vs_ours_openvino"] = (outputs[CONTENDERS[1]] - outputs[CONTENDERS[0]]).abs().max().item() / scale
    limit = LIMITS[precision]
    if max(diffs.values()) > limit or diffs["monai_vs_ours_pytorch"] > 1e-4:
        raise RuntimeError(f"OpenVINO {precision}: outputs differ beyond {limit:g} of their scale {diffs}: not timed")
    return diffs


def run_worker(spec: dict) -> dict:
    """Every workload of the section in this process: checks, then alternated timed rounds."""
    size, reps, workloads = spec["size"], max(spec["reps"], 5), []
    for precision in spec["precisions"]:
        # converted (and for int8 quantized) once per precision; each input shape compiles on first use
        runners = _compiled(spec["quick"], precision, torch.zeros(1, 1, size, size, size))
        for batch in spec["batches"]:
            x = torch.randn(batch, 1, size, size, size, generator=torch.Generator().manual_seed(batch))
            diffs = check_outputs(runners, x, precision)
            times: dict[str, list[float]] = {label: [] for label in CONTENDERS}
            for r in range(spec["rounds"]):
                for label in CONTENDERS[r % 2 :] + CONTENDERS[: r % 2]:
                    runner = runners[label][1]
                    runner(x)  # untimed
                    calls = []
                    for _ in range(reps):
                        start = time.perf_counter()
                        runner(x)
                        calls.append(time.perf_counter() - start)
                    times[label].append(statistics.median(calls))
            workloads.append({"size": size, "batch": batch, "precision": precision, "times": times, "diffs": diffs})
    import openvino

    return {"workloads": workloads, "openvino": openvino.__version__, "threads": torch.get_num_threads(),
            "timed_calls_per_round": reps}  # fmt: skip


def volumes_openvino_section(cfg, log) -> dict:
    """Rows: per size, batch and precision, ours and MONAI's through OpenVINO, with the paired speed-up."""
    from ..deploy.openvino import check_openvino
    from .timing import paired_ratio

    check_openvino("int8" if "int8" in cfg.precisions else "fp32")
    precisions = [p for p in cfg.precisions if p in LIMITS] or ["fp32"]
    spec = {"quick": cfg.quick, "size": 32 if cfg.quick else SIZE, "batches": (1, 2) if cfg.quick else BATCHES,
            "precisions": precisions, "rounds": cfg.rounds, "reps": cfg.reps}  # fmt: skip
    log(f"volumes-openvino: {len(CONTENDERS)} contenders x {cfg.rounds} rounds, sizes {spec['size']}^3, "
        f"batches {spec['batches']}, {', '.join(precisions)}")  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "densenets.bench.volumes_openvino", json.dumps(spec)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"bench volumes-openvino worker failed: {done.stderr.strip()[-800:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for w in result["workloads"]:
        monai = w["times"][CONTENDERS[1]]
        for label in CONTENDERS:
            rows.append({
                "size": w["size"], "batch": w["batch"], "precision": w["precision"], "contender": label,
                "seconds": statistics.median(w["times"][label]), "seconds_per_round": w["times"][label],
                "speedup_vs_monai": paired_ratio(monai, w["times"][label]), "checked": w["diffs"],
            })  # fmt: skip
    model = "tiny DenseNet (--quick): checks the harness only" if cfg.quick else "DenseNet-121"
    note = (f"{model}, OpenVINO {result['openvino']}, {result['threads']} threads, LATENCY hint, "
            f"{result['timed_calls_per_round']} timed calls per contender per round")  # fmt: skip
    if "int8" in precisions:
        note += f"; int8: NNCF, both calibrated on the same {CALIBRATION[cfg.quick]} random volumes"
    return {"rows": rows, "note": note}


def volumes_openvino_table(section: dict) -> list[str]:
    """Markdown: one row per size, batch, precision and contender."""
    lines = [f"### Volumes: 3-D inference through OpenVINO against MONAI's DenseNet121 ({section['note']})", "",
             "| workload | contender | ms/call | volumes/s | speed-up vs MONAI | max diff / scale vs fp32 PyTorch |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in section["rows"]:
        s = r["speedup_vs_monai"]
        diff = r["checked"][f"{r['contender']} vs fp32 PyTorch"]
        lines.append(f"| {r['size']}^3 b{r['batch']} {r['precision']} | {r['contender']} | {1000 * r['seconds']:.1f} | "
                     f"{r['batch'] / r['seconds']:.2f} | {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}) | "
                     f"{diff:.1e} |")  # fmt: skip
    return [*lines, ""]


if __name__ == "__main__":
    print(json.dumps(run_worker(json.loads(sys.argv[1]))))
