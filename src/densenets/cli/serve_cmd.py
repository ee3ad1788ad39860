"""``densenets serve``: the HTTP API and web page (the ``serve`` extra)."""

from __future__ import annotations

from ..errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API (predict, explain) with dynamic batching, and a web page")
    p.add_argument("source", help="run folder, checkpoint, weights, exported .json or named weights (as predict)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; others need --api-key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", help="model name, for a bare weights file")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                   help="as predict: auto runs fp32 on the model, bf16/int8 on the fastest installed")  # fmt: skip
    p.add_argument("--calibration", help="int8: folder of calibration images, or 'auto'")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=1, help="server processes, each loading the model (default 1)")
    p.add_argument("--max-batch", type=int, default=16, help="images per forward pass at most")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more images, at most")
    p.add_argument("--batch-wait", choices=("adaptive", "window"), default="adaptive",
                   help="adaptive: wait only while more requests are on their way; window: always")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=256, help="images waiting at most; beyond, 503 + Retry-After")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="request body limit (413 beyond)")
    p.add_argument("--max-files", type=int, default=16, help="images per request at most")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="pixels per image at most (decompression bombs)")
    p.add_argument("--api-key", help="required as 'Authorization: Bearer KEY' (default: $DENSENETS_API_KEY)")
    p.add_argument("--no-auth", action="store_true", help="serve a non-loopback address without an API key")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this origin (repeatable; default none)")
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    try:
        from ..serve.app import serve
    except ImportError as exc:
        raise ConfigError(f"densenets serve needs the serve extra: pip install 'densenets[serve]' ({exc})") from None
    from ..serve.config import ServeConfig

    serve(ServeConfig(
        source=args.source, host=args.host, port=args.port, model_name=args.model, backend=args.backend,
        precision=args.precision, calibration=args.calibration, device=args.device, workers=args.workers,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, batch_wait=args.batch_wait, max_queue=args.max_queue,
        max_body_mb=args.max_body_mb,
        max_files=args.max_files, max_pixels=args.max_pixels, api_key=args.api_key, no_auth=args.no_auth,
        cors_origins=tuple(args.cors_origin),
    ))  # fmt: skip
    return 0
