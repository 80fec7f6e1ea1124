"""Image data sets shared by two parts: Fashion-MNIST (tucker ViT, relumip verification) and digits."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np

from structlab import data

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array of its stored shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: holds {array.size} elements, header says {shape}")
    return array.reshape(shape)


def load_fashion_mnist(
    split: Literal["train", "test"] = "train", download: bool = False
) -> tuple[np.ndarray, np.ndarray, data.Resolution]:
    """Fashion-MNIST images (n, 28, 28) uint8, labels (n,) int64 and where they came from."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    where = data.resolve("fashion-mnist", download=download)
    stem = "train" if split == "train" else "t10k"
    images = read_idx(where.path / f"{stem}-images-idx3-ubyte.gz")
    labels = read_idx(where.path / f"{stem}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels, where


def load_digits() -> tuple[np.ndarray, np.ndarray, data.Resolution]:
    """scikit-learn's digits: images (1797, 8, 8) uint8 in 0..16, labels (1797,) int64."""
    where = data.resolve("digits")
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64), where
