"""Where does ``densenets serve`` spend its time under load? (issue 28, concurrency 16)

    python docs/serve_profile.py [RECORD.json] [--model densenet121] [--size 224] [--requests 160]
                                 [--levels 4 16 16]

Starts ``densenets serve`` as the serve bench does (random weights, the fastest fp32 backend,
``--max-batch 16 --max-wait-ms 10``, adaptive batching), warms it up with 16 requests on 4
connections, then at each concurrency of ``--levels`` sends ``--requests`` one-image requests (the
bench's load generator, in this process) and reads, before and after:

- the server's ``/metrics``: batches run, their sizes, and the seconds spent in forward passes
  (``densenets_batch_seconds``; with OpenVINO a compile for a new input shape counts there too);
- the CPU time of every thread of the server process (``/proc/PID/task/*/stat``): the main thread
  (uvicorn's event loop: HTTP, multipart, JSON), the two busiest others (the batcher thread and
  OpenVINO's worker thread, which run the forward pass on the two cores), and all the rest (the
  decoding thread(s), OpenMP teams, idle threads), with the number of threads alive;
- this process's own CPU time (the load generator).

Prints one block per level; RECORD.json (optional) receives every figure with the machine.
"""

import argparse
import http.client
import json
import os
import platform
import re
import resource
import tempfile
import time
from pathlib import Path

import torch

import densenets
from densenets.bench.serve_load import _image_bytes, _load, _server
from densenets.deploy.choice import default_backend
from densenets.hardware import cpu_info
from densenets.models import create_model

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid``, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def metrics(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()

    def value(name: str) -> float:
        return float(re.search(rf"^{name} (\S+)", text, re.M).group(1))

    buckets = {le: float(n) for le, n in re.findall(r'densenets_batch_size_bucket\{le="([^"]+)"\} (\S+)', text)}
    return {"images": value("densenets_batch_size_sum"), "batches": value("densenets_batch_size_count"),
            "forward_s": value("densenets_batch_seconds_sum"), "size_buckets": buckets}  # fmt: skip


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def level(pid: int, port: int, image: bytes, concurrency: int, requests: int) -> dict:
    cpu0, m0, own0 = thread_cpu(pid), metrics(port), own_cpu()
    row = _load(port, image, concurrency, requests)
    cpu1, m1, own1 = thread_cpu(pid), metrics(port), own_cpu()
    wall = requests / row["images_per_s"]
    spent = {tid: cpu1[tid] - cpu0.get(tid, 0.0) for tid in cpu1}
    main = spent.pop(pid, 0.0)
    busiest = sorted(spent.values(), reverse=True)
    images, batches, forward = (m1[k] - m0[k] for k in ("images", "batches", "forward_s"))
    sizes = {le: m1["size_buckets"][le] - m0["size_buckets"].get(le, 0.0) for le in m1["size_buckets"]}
    return {**row, "concurrency": concurrency, "wall_s": wall, "batches": batches, "mean_batch": images / batches,
            "batches_of_at_most": sizes, "forward_s": forward, "forward_ms_per_image": 1000 * forward / images,
            "forward_busy": forward / wall, "server_cpu_ms_per_request": 1000 * (main + sum(busiest)) / requests,
            "main_thread_ms_per_request": 1000 * main / requests,
            "two_busiest_threads_ms_per_request": 1000 * sum(busiest[:2]) / requests,
            "other_threads_ms_per_request": 1000 * sum(busiest[2:]) / requests, "threads_alive": len(cpu1),
            "load_generator_ms_per_request": 1000 * (own1 - own0) / requests}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", nargs="?", help="write the figures to this JSON file")
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 16, 16])
    args = parser.parse_args()
    image = _image_bytes(args.size)
    backend = default_backend("fp32", "cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="densenets-serve-profile-") as tmp:
        weights = Path(tmp) / f"{args.model}.pth"
        torch.save(create_model(args.model).state_dict(), weights)
        server = _server(weights, args.model, ["--backend", backend, "--max-batch", "16", "--max-wait-ms", "10"])
        with server as port:
            _load(port, image, 4, 16)  # warm-up, as the bench does
            for c in args.levels:
                row = level(server.proc.pid, port, image, c, max(args.requests, c))
                rows.append(row)
                print(f"concurrency {c}: {row['images_per_s']:.1f} img/s, p50 {row['p50_ms']:.0f} ms, "
                      f"p99 {row['p99_ms']:.0f} ms; {row['batches']:.0f} batches of {row['mean_batch']:.2f} on "
                      f"average (at most: {row['batches_of_at_most']}); forward {row['forward_ms_per_image']:.1f} "
                      f"ms/image, busy {row['forward_busy']:.0%} of the time", flush=True)  # fmt: skip
                print(f"  CPU ms per request: server {row['server_cpu_ms_per_request']:.1f} (main thread "
                      f"{row['main_thread_ms_per_request']:.1f}, "
                      f"two busiest {row['two_busiest_threads_ms_per_request']:.1f}, "
                      f"others {row['other_threads_ms_per_request']:.1f}; {row['threads_alive']} threads alive), "
                      f"load generator {row['load_generator_ms_per_request']:.1f}", flush=True)  # fmt: skip
    if args.record:
        levels = " ".join(map(str, args.levels))
        record = {"command": f"python docs/serve_profile.py RECORD.json --model {args.model} --size {args.size} "
                             f"--requests {args.requests} --levels {levels}",
                  "model": args.model, "size": args.size, "backend": backend, "densenets": densenets.__version__,
                  "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_info(),
                  "cores": os.cpu_count(), "rows": rows, "time": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
