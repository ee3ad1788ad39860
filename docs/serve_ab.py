"""A/B of two versions of ``densenets serve`` at concurrency 16, alternated (issue 28).

    mkdir OLD && git archive af970fd src | tar -x -C OLD
    python docs/serve_ab.py OLD/src [--rounds 4] [--requests 160]

Starts two servers over the same random DenseNet-121 weights (224 px, OpenVINO fp32,
``--max-batch 16 --max-wait-ms 10``): A runs the package under OLD/src, B the one this script
imports (run it from the checkout with ``PYTHONPATH=src``). Both are started and warmed up first
(an idle server takes no CPU); then each round loads A and B in turn with ``--requests``
one-image requests from 16 keep-alive clients (the serve bench's load generator), the order
reversed every other round, and prints images/s, p99, forward ms per image and mean batch size
(from each server's ``/metrics``).
"""

import argparse
import os
import tempfile
from pathlib import Path

import torch
from serve_profile import metrics

import densenets
from densenets.bench.serve_load import _image_bytes, _load, _server
from densenets.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_src", help="the src folder of the version to compare against (A)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=160)
    args = parser.parse_args()
    image = _image_bytes(224)
    sources = {"A": str(Path(args.old_src).resolve()), "B": str(Path(densenets.__file__).resolve().parents[1])}
    speeds: dict[str, list[float]] = {k: [] for k in sources}
    with tempfile.TemporaryDirectory(prefix="densenets-serve-ab-") as tmp:
        weights = Path(tmp) / "densenet121.pth"
        torch.save(create_model("densenet121").state_dict(), weights)
        servers, ports = {}, {}
        for key, src in sources.items():
            os.environ["PYTHONPATH"] = src
            servers[key] = _server(weights, "densenet121", ["--backend", "openvino", "--max-batch", "16",
                                                            "--max-wait-ms", "10"])  # fmt: skip
            ports[key] = servers[key].__enter__()
            _load(ports[key], image, 4, 16)  # warm-up, as the bench does
        try:
            for r in range(args.rounds):
                for key in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    before = metrics(ports[key])
                    row = _load(ports[key], image, 16, args.requests)
                    after = metrics(ports[key])
                    images = after["images"] - before["images"]
                    forward = 1000 * (after["forward_s"] - before["forward_s"]) / images
                    speeds[key].append(row["images_per_s"])
                    print(f"round {r} {key}: {row['images_per_s']:.1f} img/s, p99 {row['p99_ms']:.0f} ms, forward "
                          f"{forward:.1f} ms/img, mean batch {images / (after['batches'] - before['batches']):.1f}",
                          flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.__exit__()
    for key, values in speeds.items():
        print(f"{key}: mean {sum(values) / len(values):.1f} img/s over {len(values)} rounds")


if __name__ == "__main__":
    main()
