"""Does ``densenets serve`` keep its memory flat over 10,000 requests? (issue 28)

    python docs/serve_soak.py [RECORD.json] [--requests 10000] [--every 1000] [--concurrency 8]

Starts ``densenets serve`` on a free loopback port over a tiny model (DenseNet-BC-16, k=4,
random weights, 32 px; dynamic batching on: ``--max-batch 16 --max-wait-ms 10``), sends
``--requests`` one-image requests from ``--concurrency`` keep-alive clients (the load generator
of ``densenets bench --sections serve``), and reads the server's resident size (psutil if
installed, else VmRSS in /proc/PID/status) after a 200-request warm-up and then every
``--every`` requests. Prints the series and the growth (last sample minus the one after the
first ``--every`` requests, once allocator and caches have settled; and minus the warm-up
sample); RECORD.json (optional) receives every figure with the machine and package versions.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import densenets
from densenets.bench.serve_load import _image_bytes, _load, _server
from densenets.hardware import cpu_info
from densenets.models import create_model

NAME, SIZE = "densenet_bc16_k4", 32


def resident_mb(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", nargs="?", help="write the figures to this JSON file")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    image = _image_bytes(SIZE)
    samples, failed = [], 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="densenets-serve-soak-") as tmp:
        weights = Path(tmp) / f"{NAME}.pth"
        torch.save(create_model(NAME).state_dict(), weights)
        server = _server(weights, NAME, ["--max-batch", "16", "--max-wait-ms", "10"])
        with server as port:
            pid = server.proc.pid
            failed += _load(port, image, args.concurrency, 200)["failed"]  # warm-up
            samples.append({"requests": 0, "rss_mb": resident_mb(pid)})
            print(f"after warm-up (200 requests): {samples[-1]['rss_mb']:.1f} MB resident", flush=True)
            done = 0
            while done < args.requests:
                n = min(args.every, args.requests - done)
                row = _load(port, image, args.concurrency, n)
                done += n
                failed += row["failed"]
                samples.append({"requests": done, "rss_mb": resident_mb(pid), "p50_ms": row["p50_ms"],
                                "p99_ms": row["p99_ms"]})  # fmt: skip
                print(f"{done:>6} requests: {samples[-1]['rss_mb']:.1f} MB resident "
                      f"(p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms)", flush=True)  # fmt: skip
    settled = samples[1] if len(samples) > 2 else samples[0]
    growth = samples[-1]["rss_mb"] - settled["rss_mb"]
    since_warmup = samples[-1]["rss_mb"] - samples[0]["rss_mb"]
    seconds = time.perf_counter() - start
    print(f"growth over the last {samples[-1]['requests'] - settled['requests']} requests: {growth:+.1f} MB "
          f"({since_warmup:+.1f} MB since the warm-up); {failed} failed; {seconds:.0f} s")  # fmt: skip
    if args.record:
        record = {
            "command": "python docs/serve_soak.py " + " ".join(
                f"--{k} {v}" for k, v in (("requests", args.requests), ("every", args.every),
                                          ("concurrency", args.concurrency))),  # fmt: skip
            "model": f"{NAME}, random weights, {SIZE} px", "server": "--max-batch 16 --max-wait-ms 10, 1 worker",
            "rss_source": "psutil" if _has_psutil() else "/proc/PID/status VmRSS",
            "samples": samples, "growth_mb": growth, "growth_since_warmup_mb": since_warmup, "failed": failed,
            "seconds": seconds, "cpu": cpu_info().get("model_name"),
            "python": platform.python_version(), "torch": torch.__version__, "densenets": densenets.__version__,
        }  # fmt: skip
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(record, indent=1) + "\n")


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
