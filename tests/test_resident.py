"""The device-resident training loader: same batches as the DataLoader, the paper's
augmentation in the authors' order, a random stream that depends only on (seed, epoch)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from densenets.cli.main import main
from densenets.data import DataSpec, build_data
from densenets.data.loaders import default_loader, make_train_loader
from densenets.data.resident import PAD, augment_batch, uint8_arrays
from densenets.data.throughput import pipeline_throughput
from densenets.engine import base_recipe, resolve_recipe
from densenets.engine.trainer import fit
from densenets.errors import ConfigError

from .fakedata import write_cifar10, write_svhn


def reference_augment(image_u8: torch.Tensor, mean, std, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """One (H, W, C) uint8 image, step by step: normalise, zero-pad, crop, mirror."""
    x = image_u8.permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    x = F.pad(x, (PAD, PAD, PAD, PAD))
    x = x[:, dy : dy + image_u8.shape[0], dx : dx + image_u8.shape[1]]
    return x.flip(-1) if flip else x


def test_batch_augmentation_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 32, 32, 3), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 2 * PAD + 1, (12, 2), generator=g)
    offsets[0] = torch.tensor([0, 2 * PAD])  # the extreme corners
    offsets[1] = torch.tensor([2 * PAD, 0])
    flips = torch.arange(12) % 2 == 0
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    out = augment_batch(images, torch.tensor(mean), torch.tensor(std), offsets, flips)
    assert out.shape == (12, 3, 32, 32)
    for i in range(12):
        expected = reference_augment(images[i], mean, std, int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]))
        torch.testing.assert_close(out[i], expected)
    # The border is zero after normalising, i.e. the mean colour.
    assert torch.all(out[0, :, :PAD, :] == 0) and torch.all(out[1, :, -PAD:, :PAD] == 0)


def test_unaugmented_batches_equal_the_dataloaders(tmp_path):
    write_cifar10(tmp_path, n_train=50, n_test=10)
    data = build_data(DataSpec("cifar10", str(tmp_path)))
    loaders = [make_train_loader(data, kind, 16, 3, torch.device("cpu")) for kind in ("workers", "resident")]
    for loader in loaders:
        loader.start_epoch(2, 16)  # an epoch's order, resumed after one batch
    pairs = list(zip(*loaders, strict=True))
    assert len(pairs) == len(loaders[1]) == 2
    for (xw, yw), (xr, yr) in pairs:
        assert torch.equal(xw, xr) and torch.equal(yw, yr)


def test_augmentation_stream_is_a_function_of_seed_and_epoch(tmp_path):
    write_cifar10(tmp_path, n_train=60, n_test=10)
    data = build_data(DataSpec("cifar10+", str(tmp_path)))

    def epoch_batches(epoch: int, skip: int = 0, seed: int = 0):
        loader = make_train_loader(data, "resident", 20, seed, torch.device("cpu"))
        loader.start_epoch(epoch, skip)
        return list(loader)

    full = epoch_batches(1)
    again = epoch_batches(1)
    resumed = epoch_batches(1, skip=20)
    assert len(full) == 3 and len(resumed) == 2
    for (a, la), (b, lb) in zip(full, again, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, la), (b, lb) in zip(full[1:], resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(full[0][0], epoch_batches(2)[0][0])
    assert not torch.equal(full[0][0], epoch_batches(1, seed=1)[0][0])
    # Crops and flips really happen: some image differs from its plain normalised self.
    x = torch.cat([b[0] for b in full])
    plain = augment_batch(*_sorted_plain(data, torch.cat([b[1] for b in full]), full))
    assert not torch.equal(x, plain)


def _sorted_plain(data, labels, batches):
    images, _ = uint8_arrays(data.train)
    order = make_train_loader(data, "resident", 20, 0, torch.device("cpu"))
    order.start_epoch(1, 0)
    index = torch.tensor(list(order.sampler))
    mean, std = torch.tensor(data.preprocess["mean"]), torch.tensor(data.preprocess["std"])
    return images[index], mean, std


def test_translate_and_alternating_flips(tmp_path):
    write_cifar10(tmp_path, n_train=40, n_test=10)
    data = build_data(DataSpec("cifar10+", str(tmp_path)))

    def draws(epoch: int, **options):
        loader = make_train_loader(data, "resident", 20, 0, torch.device("cpu"), **options)
        loader.start_epoch(epoch, 0)
        return loader.batches.epoch_draws()

    offsets, _ = draws(0, translate=1)
    assert offsets.min() == 0 and offsets.max() == 2  # shifts of -1, 0 or +1 px
    assert draws(0, translate=0)[0].eq(0).all()
    flips = [draws(e, flip="alternate")[1] for e in range(4)]
    assert torch.equal(flips[0], ~flips[1]) and torch.equal(flips[0], flips[2]) and torch.equal(flips[1], flips[3])
    assert 0 < int(flips[0].sum()) < len(flips[0])  # random once
    random = [draws(e)[1] for e in range(2)]
    assert not torch.equal(random[0], ~random[1])
    # A 1 px shift pads by 1: the batch equals the reference with that padding.
    loader = make_train_loader(data, "resident", 40, 0, torch.device("cpu"), drop_last=False, translate=1)
    loader.start_epoch(0, 0)
    ((x, _),) = list(loader)
    images, _ = uint8_arrays(data.train)
    offsets, flips = loader.batches.epoch_draws()
    order = torch.tensor(list(loader.sampler))
    mean, std = torch.tensor(data.preprocess["mean"]), torch.tensor(data.preprocess["std"])
    expected = augment_batch(images[order], mean, std, offsets[order], flips[order], pad=1)
    torch.testing.assert_close(x, expected)


def test_translate_and_flip_need_the_resident_loader(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=40, n_test=10)
    data = build_data(DataSpec("cifar10+", str(tmp_path / "data")))
    with pytest.raises(ConfigError, match="need the resident loader"):
        make_train_loader(data, "workers", 8, 0, torch.device("cpu"), flip="alternate")
    for bad, message in ((["--translate", "-1"], "translate must be >= 0"), (["--flip", "never"], "flip must be one")):
        code = main(["train", "--data", "cifar10+", "--data-dir", str(tmp_path / "data"), *bad,
                     "--run-dir", str(tmp_path / "run")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_svhn_through_validation_subset_and_concat(tmp_path):
    write_svhn(tmp_path, n=30)
    data = build_data(DataSpec("svhn", str(tmp_path), val_split=6))
    images, labels = uint8_arrays(data.train)
    assert images.shape == (54, 32, 32, 3) and images.dtype == torch.uint8
    loader = make_train_loader(data, "resident", 54, 0, torch.device("cpu"), drop_last=False)
    loader.start_epoch(0, 0)
    ((x, y),) = list(loader)
    for k, i in enumerate(list(loader.sampler)[:5]):
        image, label = data.train[i]
        assert torch.equal(x[k], image) and int(y[k]) == int(label)


def test_resident_refuses_data_it_cannot_hold(tmp_path):
    data = build_data(DataSpec("digits+"))
    with pytest.raises(ConfigError, match="--loader workers"):
        make_train_loader(data, "resident", 8, 0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="loader must be one of"):
        make_train_loader(data, "disk", 8, 0, torch.device("cpu"))
    assert default_loader("cifar10+", "cpu") == "resident" and default_loader("digits+", "cuda") == "workers"


def test_run_records_loader_and_data_wait(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    recipe = resolve_recipe(
        base_recipe("cifar"), model="densenet_bc16_k4", data_dir=str(tmp_path / "data"), epochs=1, batch_size=20
    )
    assert recipe.loader is None  # decided when the device is known
    fit(recipe, tmp_path / "run", show_progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["loader"] == "resident"
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= record["data_wait_seconds"] <= record["train_seconds"]
    assert "data wait" in capsys.readouterr().out


def test_loader_on_the_command_line_and_bad_values(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    code = main(["train", "--data", "digits+", "--loader", "resident", "--max-steps", "1", "--no-progress",
                 "--run-dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--loader workers" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code = main(["train", "--data", "cifar10+", "--set", "loader=disk", "--run-dir", str(tmp_path / "r2")])
    assert code == 2 and "loader must be one of" in capsys.readouterr().err


def test_data_bench_times_both_loaders(tmp_path, capsys):
    write_cifar10(tmp_path, n_train=50, n_test=10)
    code = main(["data-bench", "--data-dir", str(tmp_path), "--batch-size", "10", "--batches", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "workers" in out and "resident" in out and out.count("img/s") == 2
    result = pipeline_throughput(build_data(DataSpec("cifar10+", str(tmp_path))), "resident", 10, 3)
    assert result["images"] == 30 and result["images_per_s"] > 0
    assert main(["data-bench", "--data-dir", str(tmp_path), "--batches", "0"]) == 2
    assert "--batches must be >= 1" in capsys.readouterr().err


def test_plain_dataloader_is_what_the_workers_loader_wraps(tmp_path):
    write_cifar10(tmp_path, n_train=20, n_test=10)
    data = build_data(DataSpec("cifar10+", str(tmp_path)))
    assert isinstance(make_train_loader(data, "workers", 5, 0, torch.device("cpu")).batches, DataLoader)
