"""scikit-learn's bundled 8x8 handwritten digits: the real data set that needs no download."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision import transforms as T

TEST_FRACTION = 0.2  # 360 of 1,797 images, stratified by class
SPLIT_SEED = 0


def load_digits_tensors(image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images (N, 1, size, size) scaled to [0, 1]."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0)
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


class TensorImageDataset(Dataset):
    """In-memory (N, C, H, W) images with a per-sample tensor transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def digits_datasets(image_size: int, augment: bool) -> tuple[Dataset, Dataset, Dataset, dict]:
    """(train, train without augmentation, test, preprocess).

    Augmentation is the CIFAR scheme without the flip (digits are not mirror-symmetric):
    pad by 1/8 of the side with background and crop back at random.
    """
    x_train, y_train, x_test, y_test = load_digits_tensors(image_size)
    mean, std = x_train.mean().item(), x_train.std().item()
    preprocess = {"mean": [mean], "std": [std], "resize": image_size, "crop": image_size, "channels": 1}
    normalize = T.Normalize([mean], [std])
    shift = T.Compose([T.RandomCrop(image_size, padding=max(image_size // 8, 1), fill=0.0), normalize])
    return (
        TensorImageDataset(x_train, y_train, shift if augment else normalize),
        TensorImageDataset(x_train, y_train, normalize),
        TensorImageDataset(x_test, y_test, normalize),
        preprocess,
    )
