"""``densenets data-bench``: images/s of the training input pipeline alone."""

from __future__ import annotations

from ..data.loaders import LOADERS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "data-bench",
        help="images/s of the training input pipeline alone (no model), per loader",
        description="Builds the training loader as `densenets train` does (decode, pad-crop, flip, normalise, "
        "collate; worker processes or device-resident) and times how many images per second it delivers on the "
        "device. Compare with the img/s of a training epoch line.",
    )
    p.add_argument("--data", default="cifar10+", help="data set name (default: cifar10+)")
    p.add_argument("--data-dir", default="data", help="where the data set lies (default: data)")
    p.add_argument("--loader", choices=[*LOADERS, "both"], default="both", help="which loader(s) to time")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64, the paper's)")
    p.add_argument("--batches", type=int, default=50, help="timed batches per loader (default: 50)")
    p.add_argument("--workers", type=int, help="worker processes for the workers loader (default: as train)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.set_defaults(run=run_data_bench)


def run_data_bench(args) -> int:
    from ..data import DataSpec, build_data
    from ..data.throughput import pipeline_throughput
    from ..engine.distributed import DistInfo
    from ..engine.runtime import resolve_device
    from ..errors import ConfigError

    for name in ("batch_size", "batches"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    device = resolve_device(args.device, DistInfo.from_env())
    data = build_data(DataSpec(args.data, args.data_dir))
    kinds = LOADERS if args.loader == "both" else (args.loader,)
    print(f"{args.data}: {len(data.train)} training images, batch {args.batch_size}, on {device}")
    for kind in kinds:
        r = pipeline_throughput(data, kind, args.batch_size, args.batches, device, args.workers)
        speed = f"{r['images_per_s']:.0f} img/s" if r["images_per_s"] else "too few batches to time"
        where = f"{r['workers']} workers" if kind == "workers" else "on the device"
        print(
            f"  {kind:<9} ({where}): {speed} over {r['images']} images in {r['seconds']:.2f} s "
            f"(first batch {r['first_batch_seconds']:.2f} s)"
        )
    return 0
