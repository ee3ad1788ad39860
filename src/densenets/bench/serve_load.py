"""``densenets bench --sections serve``: ``densenets serve`` under a bounded load on loopback.

Throughput and p50/p95/p99 latency at several concurrencies, for the server with dynamic
batching, the same server with batching off (``--max-batch 1``), and offline batch inference
of the same module (the ceiling). The server runs as its own process (``python -m densenets
serve``), so this module imports nothing from ``densenets.serve``.
"""

from __future__ import annotations

import http.client
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CONCURRENCY = (1, 4, 16, 64)
BOUNDARY = "densenets-bench-boundary"


def serve_section(quick: bool, log, requests_per_level: int | None = None) -> dict:
    """``{"model", "size", "offline": {...}, "rows": [{"server", "concurrency", "images_per_s", "p50_ms", ...}]}``."""
    from ..data.transforms import image_transform
    from ..deploy.choice import default_backend
    from ..deploy.precision import with_precision
    from ..engine.loading import load_model
    from ..models import create_model

    name, size = ("densenet_bc16_k4", 32) if quick else ("densenet121", 224)
    levels = (1, 4) if quick else CONCURRENCY
    count = requests_per_level or (16 if quick else 256)
    with tempfile.TemporaryDirectory(prefix="densenets-bench-serve-") as tmp:
        weights = Path(tmp) / f"{name}.pth"  # random weights: speed does not depend on them
        torch.save(create_model(name).state_dict(), weights)
        image = _image_bytes(size)
        loaded = load_model(weights, name)
        # the fastest fp32 backend on this CPU (OpenVINO when installed), for the servers and the ceiling alike
        backend = default_backend("fp32", "cpu")
        loaded.model, _ = with_precision(loaded, "fp32", None, backend, "cpu")
        x = image_transform(loaded.preprocess)(Image.open(io.BytesIO(image)))
        offline = _offline(loaded, x, 2 if quick else 5)
        log(f"serve: offline batch-16 {offline['images_per_s']:.1f} img/s, batch-1 "
            f"{offline['batch1_images_per_s']:.1f} img/s ({name}, {size} px, {backend})")  # fmt: skip
        rows = []
        on = ["--backend", backend]
        batched = [*on, "--max-batch", "16", "--max-wait-ms", "10"]
        # Two workers share the cores: each gets half of them, as one worker gets all (torch's default).
        half = str(max(1, (os.cpu_count() or 2) // 2))
        for label, args, threads in (("batched (max-batch 16, 10 ms)", batched, None),
                                     ("unbatched (max-batch 1)", [*on, "--max-batch", "1", "--max-wait-ms", "0"], None),
                                     ("batched, 2 workers", [*batched, "--workers", "2"], half)):  # fmt: skip
            with _server(weights, name, args, threads) as port:
                _load(port, image, 4, 16)  # warm-up, on several connections: every worker answers some
                for c in levels:
                    row = {"server": label, "concurrency": c, **_load(port, image, c, max(count, c))}
                    log(f"serve: {label}, concurrency {c}: {row['images_per_s']:.1f} img/s, "
                        f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")  # fmt: skip
                    rows.append(row)
    return {"model": name, "size": size, "backend": backend, "offline": offline, "rows": rows,
            "note": "1 worker process unless the row says 2 (each then on half the cores); adaptive batching; "
                    "random weights; loopback; requests of one image each"}  # fmt: skip


def _offline(loaded, x: torch.Tensor, rounds: int) -> dict:
    """Offline inference of ``x`` through ``loaded``: batches of 16 (the ceiling) and the same 16
    images one at a time (what batching is measured against), alternated round by round."""
    from ..engine.prediction import predict_batch

    batch = x[None].expand(16, *x.shape).contiguous()
    singles = [row[None] for row in batch]
    predict_batch(loaded, batch), predict_batch(loaded, singles[0])  # warm-up (and OpenVINO's compile of each shape)
    seconds = {16: 0.0, 1: 0.0}
    for _ in range(rounds):
        start = time.perf_counter()
        predict_batch(loaded, batch)
        seconds[16] += time.perf_counter() - start
        start = time.perf_counter()
        for single in singles:
            predict_batch(loaded, single)
        seconds[1] += time.perf_counter() - start
    return {"batch": 16, "images_per_s": 16 * rounds / seconds[16], "batch1_images_per_s": 16 * rounds / seconds[1],
            "rounds": rounds}  # fmt: skip


class _server:
    def __init__(self, weights: Path, name: str, args: list[str], threads: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "densenets", "serve", str(weights), "--model", name, "--port", str(self.port),
               "--max-queue", "1024", *args]  # fmt: skip
        env = os.environ.copy() if threads is None else {**os.environ, "OMP_NUM_THREADS": threads}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def __enter__(self) -> int:
        for _ in range(3000):
            if self.proc.poll() is not None:
                raise RuntimeError(f"densenets serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return self.port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("densenets serve did not start")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _load(port: int, image: bytes, concurrency: int, total: int) -> dict:
    """``total`` one-image requests from ``concurrency`` clients, each on its own keep-alive connection."""
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()  # fmt: skip
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    latencies: list[float] = []
    failures = [0]
    lock, left = threading.Lock(), [total]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            start = time.perf_counter()
            conn.request("POST", "/v1/predict", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            with lock:
                latencies.append(time.perf_counter() - start)
                failures[0] += response.status != 200
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = sorted(1000 * v for v in latencies)
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else ms * 99
    return {"requests": total, "failed": failures[0], "images_per_s": total / elapsed,
            "p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98]}  # fmt: skip


def _image_bytes(size: int) -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()
