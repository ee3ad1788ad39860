"""The benchmark's results as markdown tables (the same text goes to results.md and stdout)."""

from __future__ import annotations


def _ratio(r: dict) -> str:
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def _peaks(env: dict) -> str:
    return ", ".join(f"{p} {g:.0f}" for p, g in env["matmul_peak_gflops"].items())


def speed_table(results: list[dict]) -> list[str]:
    lines = []
    for work in results:
        h = work["headline"]
        lines += [
            f"#### {work['task']} {work['model']}, batch {work['batch']}, {work['size']}x{work['size']}, "
            f"{work['precision']}",
            "",
            f"Headline: **{h['ours']}** / **{h['baseline']}** = **{_ratio(h)}** (median of per-round paired "
            "ratios, min-max in brackets)"
            + (
                f"; against **{h['against_fp32']['baseline']}**: **{_ratio(h['against_fp32'])}**."
                if "against_fp32" in h
                else "."
            ),  # fmt: skip
            "",
            "| implementation | layout | allocator | precision | images/s | ratio (min-max) | against row | GFLOP/s "
            "| % of peak |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in work["rows"]:
            s = row["setting"]
            peak = row["fraction_of_matmul_peak"]
            lines.append(
                f"| {row['impl']} | {s['layout']} | {s['allocator']} | {s['precision']} | {row['images_per_s']:.1f} | "
                f"{_ratio(row['ratio'])} | {row['baseline']} | {row['gflops_per_s']:.0f} | "
                f"{'-' if peak is None else f'{100 * peak:.0f}%'} |"
            )
        lines.append("")
    return lines


def memory_table(mem: dict) -> list[str]:
    lines = []
    if mem.get("rows"):
        depths = sorted({r["depth"] for r in mem["rows"]})
        labels = sorted({r["label"] for r in mem["rows"]})
        lines += ["### Peak memory of one training step (MiB), DenseNet-BC, 32x32", ""]
        lines += ["| implementation | " + " | ".join(f"L={d}" for d in depths) + " | log-log slope |"]
        lines += ["|---|" + "---|" * (len(depths) + 1)]
        for label in labels:
            mine = [r for r in mem["rows"] if r["label"] == label]
            cells = [f"{r['peak_mib']:.0f}" for d in depths for r in mine if r["depth"] == d]
            slope = mem["fits"][label]["loglog_slope"]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {'-' if slope is None else f'{slope:.2f}'} |")
        lines.append("")
    t = mem.get("efficient_target")
    if t is None:
        return lines + ["Memory-efficient target: not measured yet.", ""]
    lines += [f"### Memory-efficient mode, {t['model']} batch {t['batch']}", ""]
    names = {
        "peak_mib_normal": "normal",
        "peak_mib_efficient": "memory-efficient",
        "peak_mib_torchvision_efficient": "torchvision memory-efficient (NCHW)",
    }
    peaks = [f"{what} {t[key]:.0f} MiB" for key, what in names.items() if key in t]
    if peaks:
        lines.append("Peak memory of a step: " + ", ".join(peaks) + ".")
    if "error" in t:
        return lines + [f"Not measured further: {t['error']}", ""]
    lines += [
        f"Memory-efficient mode: {100 * t['memory_ratio']:.0f}% of the normal mode's memory; step "
        f"{t['seconds_efficient']:.2f} s vs {t['seconds_normal']:.2f} s, time ratio {_ratio(t['time_ratio'])} "
        "(memory-efficient / normal).",
        f"Against torchvision's memory-efficient mode ({t['torchvision_row']}, its faster layout): step "
        f"{t['seconds_torchvision_efficient']:.2f} s; ours is {_ratio(t['vs_torchvision'])} as fast.",
        "",
    ]
    return lines


def cpu_line(info: dict, env: dict) -> str:
    """The CPU the bench ran on, its vector flags and physical peak; says so when they could not be read."""
    if info.get("flags") is None:
        return (
            f"CPU: {info['model_name']}, {info['logical_cpus']} logical CPUs; {info.get('unreadable')}: its vector "
            "flags (AVX-512, VNNI, bf16) and clock could not be read, so no physical peak is checked."
        )
    physical = ", ".join(f"{p} {g:.0f}" for p, g in env.get("physical_peak_gflops", {}).items() if g)
    return (
        f"CPU: {info['model_name']} ({info.get('vendor')}, family {info.get('family')} model {info.get('model')}), "
        f"{info['logical_cpus']} logical CPUs at {info.get('mhz') or 0:.0f} MHz as /proc/cpuinfo reports; "
        f"vector flags: {' '.join(f for f in info.get('flags', []) if f.startswith(('avx', 'amx', 'fma')))}; "
        f"physical peak (cores x FLOP/cycle x that clock) GFLOP/s: {physical or 'unknown'}."
        + ("".join(f" **Implausible peak: {w}.**" for w in env.get("peak_warnings", [])))
    )


def to_markdown(results: dict) -> str:
    env = results["environment"]
    cfg = results["config"]
    lines = [
        f"Device: {env.get('gpu', env['cpu'])} ({env['device']}, {env['threads']} threads, {env['cores']} cores), "
        f"torch {env['torch']}; matmul peak GFLOP/s: {_peaks(env)}. {cfg['rounds']} alternated rounds, "
        f"{cfg['reps']} timed calls per contender per round after {cfg['warmup']} warm-up.",
        "",
    ]
    info = env.get("cpuinfo")
    if info and env["device"] == "cpu":
        lines += [cpu_line(info, env), ""]
    for task, title in (("train", "Training (forward + backward + SGD step)"), ("infer", "Inference (eval)")):
        if task in results:
            lines += [f"### {title}", ""] + speed_table(results[task])
    if "memory" in results:
        lines += memory_table(results["memory"])
    if "levers" in results:
        lines += ["### Levers, one at a time (our model, fp32)", "", "| task | lever | images/s | speed-up (min-max) |",
                  "|---|---|---|---|"]  # fmt: skip
        for r in results["levers"]:
            lines.append(f"| {r['task']} {r['model']} b{r['batch']} | {r['lever']} | {r['images_per_s']:.1f} | "
                         f"{_ratio(r['speedup'])} |")  # fmt: skip
        lines.append("")
    if "openvino_graphs" in results:
        lines += ["### Our exact reformulations inside OpenVINO (speed-up against torchvision's graph)", "",
                  "| workload | graph | images/s | speed-up (min-max) |", "|---|---|---|---|"]  # fmt: skip
        for r in results["openvino_graphs"]:
            lines.append(f"| {r['model']} b{r['batch']} {r['precision']} | {r['graph']} | {r['images_per_s']:.1f} | "
                         f"{_ratio(r['speedup'])} |")  # fmt: skip
        lines.append("")
    if "serve" in results:
        lines += serve_table(results["serve"])
    if "volumes" in results:
        from .volumes import volumes_table

        lines += volumes_table(results["volumes"])
    if "volumes_openvino" in results:
        from .volumes_openvino import volumes_openvino_table

        lines += volumes_openvino_table(results["volumes_openvino"])
    return "\n".join(lines)


def serve_table(serve: dict) -> list[str]:
    """``densenets serve`` under load: one row per server and concurrency, against offline batch inference."""
    offline = serve["offline"]["images_per_s"]
    backend = f", {serve['backend']} backend" if serve.get("backend") else ""
    one = serve["offline"].get("batch1_images_per_s")  # runs before serve2 did not time it
    single = (f" One image at a time: {one:.1f} images/s, so batching can gain at most {offline / one:.2f}x "
              "over an unbatched server with no overhead." if one else "")  # fmt: skip
    lines = [f"### densenets serve, {serve['model']} at {serve['size']} px{backend} ({serve['note']})", "",
             f"Offline batch-{serve['offline']['batch']} inference (the ceiling): {offline:.1f} images/s.{single}", "",
             "| server | concurrency | images/s | of offline | p50 ms | p95 ms | p99 ms | failed |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in serve["rows"]:
        speed = r["images_per_s"]
        lines.append(f"| {r['server']} | {r['concurrency']} | {speed:.1f} | {speed / offline:.2f}x | {r['p50_ms']:.1f} "
                     f"| {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['failed']} |")  # fmt: skip
    return [*lines, ""]
