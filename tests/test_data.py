import pickle

import pytest
import torch

from densenets.data import DATASETS, DataSpec, build_data
from densenets.errors import DataError

from .fakedata import write_cifar10, write_cifar100, write_image_folder, write_svhn


def test_every_data_set_name_is_known():  # noqa: D103
    assert set(DATASETS) == {
        "digits",
        "digits+",
        "cifar10",
        "cifar10+",
        "cifar100",
        "cifar100+",
        "svhn",
        "imagenet",
        "imagefolder",
        "csv",
    }


@pytest.mark.parametrize("name", ["cifar10", "cifar10+"])
def test_cifar10_loads_from_python_pickles(tmp_path, name):
    write_cifar10(tmp_path, n_train=100, n_test=40)
    data = build_data(DataSpec(name, str(tmp_path)))
    assert (len(data.train), len(data.test), data.num_classes, data.in_channels) == (100, 40, 10, 3)
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    assert data.class_names[0] == "class0"
    assert data.augment == ("cifar" if name.endswith("+") else "none")


@pytest.mark.parametrize("name", ["cifar100", "cifar100+"])
def test_cifar100_loads_from_python_pickles(tmp_path, name):
    write_cifar100(tmp_path)
    data = build_data(DataSpec(name, str(tmp_path)))
    assert (len(data.train), len(data.test), data.num_classes) == (200, 100, 100)
    assert data.test[0][0].shape == (3, 32, 32)


def _crops_of(image: torch.Tensor, padding: int = 4) -> list[torch.Tensor]:
    """Every ``padding``-shifted crop of ``image`` zero-padded by ``padding``, flipped and not."""
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    size = image.shape[-1]
    crops = [padded[:, i : i + size, j : j + size] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]
    return crops + [crop.flip(-1) for crop in crops]


def test_cifar_normalisation_and_augmentation(tmp_path):
    folder = write_cifar10(tmp_path)
    plain = build_data(DataSpec("cifar10", str(tmp_path)))
    augmented = build_data(DataSpec("cifar10+", str(tmp_path), seed=3))
    # CIFAR-10's per-channel statistics, applied to the pixels as stored in the pickle
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    for part, file in ((plain.train, "data_batch_1"), (plain.test, "test_batch")):
        with open(folder / file, "rb") as f:
            raw = pickle.load(f, encoding="latin1")["data"][0]
        pixels = torch.tensor(raw, dtype=torch.float32).reshape(3, 32, 32) / 255
        torch.testing.assert_close(part[0][0], (pixels - mean) / std)
    # The authors' order: normalise, then zero-pad 4 and crop, then flip; so every augmented
    # image is one of the 162 crops of the normalised image (its border is the mean colour).
    seen = set()
    for epoch in range(6):
        augmented.train.set_epoch(epoch)
        image = augmented.train[5][0]
        matches = [k for k, crop in enumerate(_crops_of(plain.train[5][0])) if torch.allclose(crop, image)]
        assert matches, f"epoch {epoch}: not a padded crop of the normalised image"
        seen.add(matches[0])
    assert len(seen) > 1  # random across epochs
    # ... but a pure function of (seed, epoch, index): a second build with the seed draws the same
    again = build_data(DataSpec("cifar10+", str(tmp_path), seed=3))
    other = build_data(DataSpec("cifar10+", str(tmp_path), seed=4))
    same = differs = 0
    for epoch in range(4):
        for part in (augmented.train, again.train, other.train):
            part.set_epoch(epoch)
        same += torch.equal(again.train[5][0], augmented.train[5][0])
        differs += not torch.equal(other.train[5][0], augmented.train[5][0])
    assert same == 4 and differs >= 1


def test_svhn_uses_train_plus_extra_and_raw_pixels(tmp_path):
    write_svhn(tmp_path, n=30)
    data = build_data(DataSpec("svhn", str(tmp_path)))
    assert (len(data.train), len(data.test), data.num_classes) == (60, 30, 10)
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and x.min() >= 0.0 and x.max() <= 1.0  # pixels / 255
    labels = {int(data.test[i][1]) for i in range(len(data.test))}
    assert labels <= set(range(10)) and 0 in labels  # label 10 became digit 0


def test_svhn_validation_split_holds_out_images(tmp_path):
    write_svhn(tmp_path, n=30)
    data = build_data(DataSpec("svhn", str(tmp_path), val_split=6))
    assert len(data.train) == 54 and len(data.val) == 6


def test_imagenet_layout_and_preprocessing(tmp_path):
    write_image_folder(tmp_path / "imagenet", classes=3, per_class=4, size=40)
    data = build_data(DataSpec("imagenet", str(tmp_path), image_size=32))
    assert data.num_classes == 3 and len(data.train) == 12 and len(data.test) == 6
    assert data.train[0][0].shape == (3, 32, 32)
    assert data.test[0][0].shape == (3, 32, 32)
    assert data.preprocess["resize"] == round(32 * 256 / 224)


def test_imagefolder_without_split_is_split_per_class(tmp_path):
    write_image_folder(tmp_path, classes=3, per_class=10, split=False)
    data = build_data(DataSpec("imagefolder", str(tmp_path), image_size=24))
    assert data.num_classes == 3 and len(data.train) + len(data.test) == 30
    assert len(data.test) == 6  # 20% of each class
    assert data.train[0][0].shape == (3, 24, 24)


def test_digits_is_real_and_fixed():
    a = build_data(DataSpec("digits"))
    b = build_data(DataSpec("digits"))
    assert (len(a.train), len(a.test), a.num_classes, a.in_channels) == (1437, 360, 10, 1)
    assert a.train[0][0].shape == (1, 16, 16)
    torch.testing.assert_close(a.test[17][0], b.test[17][0])
    counts = torch.bincount(torch.stack([a.test[i][1] for i in range(len(a.test))]), minlength=10)
    assert counts.min() >= 35  # stratified


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "data_batch_1.*--download"),
        ("cifar100+", "cifar-100-python.*--download"),
        ("svhn", "train_32x32.mat"),
        ("imagenet", "train/<class>"),
        ("imagefolder", "image folder not found"),
    ],
)
def test_missing_data_says_what_and_how(tmp_path, name, expected):
    with pytest.raises(DataError, match=expected):
        build_data(DataSpec(name, str(tmp_path / "nowhere")))


def test_incomplete_cifar_names_the_missing_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as info:
        build_data(DataSpec("cifar10", str(tmp_path)))
    assert "data_batch_1" not in str(info.value)


def test_corrupt_file_is_a_data_error(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="CIFAR-10"):
        build_data(DataSpec("cifar10", str(tmp_path)))


def test_unknown_data_set_suggests_names():
    with pytest.raises(DataError, match="cifar10"):
        build_data(DataSpec("cifar11"))
