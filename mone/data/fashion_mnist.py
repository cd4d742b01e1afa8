"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

The package installs the original gzipped IDX files into ``/usr/share/datasets/fashion-mnist/``::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

IDX format (big-endian): image files start with a 16-byte header (magic 0x00000803, count, rows, cols), label files
with an 8-byte header (magic 0x00000801, count), followed by raw uint8 data.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Computed on the 60 000 training images, pixel values scaled to [0, 1]:
#   x = load_fashion_mnist("train").images.float() / 255; x.mean(), x.std()
MEAN = (0.2860,)
STD = (0.3530,)

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _open(path: Path):
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def _find(root: Path, name: str) -> Path:
    for cand in (root / name, root / name[:-3]):  # gzipped or already unpacked
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"Fashion-MNIST file {name!r} not found in {root}. Install the data with: {INSTALL_HINT}"
    )


def _read_idx(path: str | os.PathLike, magic_expected: int, kind: str, ndim: int) -> np.ndarray:
    """An IDX file (gzipped or not) with `ndim` dimensions after the magic number, as a uint8 array."""
    path = Path(path)
    with _open(path) as f:
        data = f.read()
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise ValueError(f"{path}: too short for an IDX {kind} header ({len(data)} bytes)")
    magic, *dims = struct.unpack(">" + "I" * (1 + ndim), data[:header])
    if magic != magic_expected:
        raise ValueError(f"{path}: bad IDX {kind} magic number 0x{magic:08x} (expected 0x{magic_expected:08x})")
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise ValueError(f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes, "
                         f"file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX3 image file (gzipped or not) into a uint8 array (N, rows, cols)."""
    return _read_idx(path, IMAGE_MAGIC, "image", 3)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX1 label file (gzipped or not) into a uint8 array (N,)."""
    return _read_idx(path, LABEL_MAGIC, "label", 1)


class FashionMNIST(Dataset):
    """In-memory Fashion-MNIST split: items are ``(image uint8 (1,28,28), label int)``."""

    classes = list(CLASSES)
    mean = MEAN
    std = STD

    def __init__(self, images: np.ndarray, labels: np.ndarray, split: str = "train"):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.split = split
        self.images = torch.from_numpy(images).unsqueeze(1).contiguous()  # (N,1,28,28) uint8
        self.targets = torch.from_numpy(labels.astype(np.int64))  # (N,) int64
        if len(self.targets) and int(self.targets.max()) >= len(CLASSES):
            raise ValueError(f"label {int(self.targets.max())} out of range for {len(CLASSES)} classes")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])

    def __repr__(self) -> str:
        return f"FashionMNIST(split={self.split!r}, n={len(self)})"


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> FashionMNIST:
    """Load the ``train`` (60 000) or ``test`` (10 000) split. ``root`` defaults to
    ``$MONE_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``."""
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use one of {sorted(_FILES)}")
    root = Path(root or os.environ.get("MONE_FASHION_MNIST") or DEFAULT_ROOT)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST directory {root} not found. Install the data with: {INSTALL_HINT}")
    img_name, lbl_name = _FILES[split]
    images = read_idx_images(_find(root, img_name))
    labels = read_idx_labels(_find(root, lbl_name))
    return FashionMNIST(images, labels, split)
