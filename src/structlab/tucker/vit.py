"""A small Vision Transformer whose (non-causal) attention is any of MHA, GQA, MLA or Tucker Attention.

Images are cut into non-overlapping patches, each linearly embedded; a learned class token is
prepended, learned position embeddings are added, and the class token's final state is classified.
:class:`ImageClassificationTask` trains it with the shared loop of :mod:`structlab.tucker.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structlab.tucker.blocks import AttentionSpec, Block, init_attention


@dataclass
class ViTConfig:
    """The ViT's shape: square ``image_size`` images with ``channels`` channels, ``n_classes`` classes."""

    image_size: int = 28
    patch_size: int = 7
    channels: int = 1
    n_classes: int = 10
    n_layer: int = 4
    d_model: int = 64
    attention: AttentionSpec | str | dict[str, Any] = field(default_factory=AttentionSpec)
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        self.attention = AttentionSpec.coerce(self.attention)
        for name in ("image_size", "patch_size", "channels", "n_classes", "n_layer", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size}: expected a divisor of image_size={self.image_size}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r}: expected in [0, 1)")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    """Patch embedding, class token, learned positions, ``n_layer`` non-causal blocks, linear head."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.patch_embed = nn.Conv2d(config.channels, d, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, config.n_patches + 1, d) * 0.02)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.attention.build(d, causal=False, rope=False, bias=config.bias, dropout=config.dropout),
                  bias=config.bias, dropout=config.dropout)
            for _ in range(config.n_layer)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.n_classes)
        # timm's ViT initialisation: N(0, 0.02) weights, zero biases, for every attention kind alike.
        for block in self.blocks:
            for linear in (block.mlp.fc, block.mlp.proj):
                nn.init.normal_(linear.weight, std=0.02)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            init_attention(block.attn, std=0.02, out_std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, n_classes) for ``images`` (batch, channels, image_size, image_size)."""
        c, s = self.config.channels, self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"images: shape {tuple(images.shape)}; expected (batch, {c}, {s}, {s})")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (batch, patches, d)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class ImageClassificationTask:
    """Images and labels as a :class:`~structlab.tucker.train.Task`: random training batches, a fixed
    evaluation set; metrics are loss and accuracy.

    ``images`` are uint8 (n, height, width) or (n, channels, height, width); they are scaled by
    ``scale`` and standardised with the training set's mean and standard deviation.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        eval_images: np.ndarray,
        eval_labels: np.ndarray,
        scale: float = 255.0,
    ) -> None:
        train = _as_float(images, scale)
        self.mean, self.std = float(train.mean()), float(train.std())
        self.images = (train - self.mean) / self.std
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if len(self.images) != len(self.labels):
            raise ValueError(f"labels: {len(self.labels)} for {len(self.images)} images")
        self.eval_set = ((_as_float(eval_images, scale) - self.mean) / self.std,
                         torch.as_tensor(np.asarray(eval_labels), dtype=torch.long))

    def sample(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(self.images), (batch_size,), generator=generator)
        return self.images[rows], self.labels[rows]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "loss": F.cross_entropy(logits.float(), labels, reduction="none"),
            "accuracy": (logits.argmax(dim=-1) == labels).double(),
        }


def load_images(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) of ``name``: Fashion-MNIST with its own
    split (``"fashion-mnist"``), or scikit-learn's digits (``"digits"``) split by a fixed rule (every
    fifth image is a test image). Raises ``DataNotFoundError`` when the data set is absent."""
    from structlab import images

    if name == "fashion-mnist":
        train_x, train_y, _ = images.load_fashion_mnist("train")
        test_x, test_y, _ = images.load_fashion_mnist("test")
        return train_x, train_y, test_x, test_y
    if name != "digits":
        raise ValueError(f"data={name!r}: expected 'fashion-mnist' or 'digits'")
    x, y, _ = images.load_digits()
    test = np.arange(len(y)) % 5 == 0
    return x[~test], y[~test], x[test], y[test]


def _as_float(images: np.ndarray, scale: float) -> torch.Tensor:
    array = torch.from_numpy(np.asarray(images, dtype=np.float32) / scale)  # a copy: the IDX buffers are read-only
    return array[:, None] if array.dim() == 3 else array
