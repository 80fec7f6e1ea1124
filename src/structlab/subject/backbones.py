"""EEG decoders with braindecode's conventions, written here (braindecode pulls torchaudio, which we avoid).

Every model takes ``n_chans``, ``n_outputs`` and ``n_times`` and maps input ``(batch, n_chans, n_times)``
to class scores ``(batch, n_outputs)``. Max-norm constraints are ``torch.nn.utils.parametrize``
parametrisations (:class:`MaxNorm`) rather than in-place renormalisation inside ``forward``, so the layers
stay plain ``nn.Conv2d``/``nn.Linear`` and can be subject-conditioned.

* :class:`EEGNet`: Lawhern et al. 2018 (braindecode ``EEGNetv4``).
* :class:`ShallowConvNet`: Schirrmeister et al. 2017 (braindecode ``ShallowFBCSPNet``).
* :class:`EEGNeX`: Chen et al. 2024, as the authors' released code (braindecode ``EEGNeX`` is a variant),
  one of the two backbones of arXiv 2510.08059.
* :class:`~structlab.subject.transformer.PatchedBrainTransformer`: Klein et al. 2025 (braindecode ``PBT``),
  the patched transformer of arXiv 2510.08059.

:func:`build` makes one by name; ``"braindecode:<Model>"`` builds braindecode's own model where it is
installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from structlab.subject.transformer import PatchedBrainTransformer


class MaxNorm(nn.Module):
    """Parametrisation that rescales each output unit's weights to an L2 norm of at most ``max_norm``."""

    def __init__(self, max_norm: float) -> None:
        super().__init__()
        self.max_norm = max_norm

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        norm = weight.flatten(1).norm(dim=1).clamp(min=self.max_norm)
        return weight * (self.max_norm / norm).reshape(-1, *([1] * (weight.dim() - 1)))


def max_norm(layer: nn.Module, value: float) -> nn.Module:
    """``layer`` with a :class:`MaxNorm` parametrisation on its weight."""
    parametrize.register_parametrization(layer, "weight", MaxNorm(value))
    return layer


def _check(n_chans: int, n_outputs: int, n_times: int) -> None:
    for name, value, minimum in (("n_chans", n_chans, 1), ("n_outputs", n_outputs, 2), ("n_times", n_times, 1)):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}={value!r}: expected an int >= {minimum}")


def _flat_size(features: nn.Module, n_chans: int, n_times: int) -> int:
    with torch.no_grad():
        was = features.training
        features.eval()
        size = features(torch.zeros(1, 1, n_chans, n_times)).numel()
        features.train(was)
    return size


class EEGNet(nn.Module):
    """EEGNet-8,2: temporal filters, depthwise spatial filters (max-norm 1), separable convolution."""

    def __init__(
        self,
        n_chans: int,
        n_outputs: int,
        n_times: int,
        F1: int = 8,
        D: int = 2,
        F2: int = 16,
        kernel_length: int = 64,
        drop_prob: float = 0.25,
    ) -> None:
        super().__init__()
        _check(n_chans, n_outputs, n_times)
        bn = dict(momentum=0.01, eps=1e-3)
        self.features = nn.Sequential(
            nn.Conv2d(1, F1, (1, kernel_length), padding=(0, kernel_length // 2), bias=False),
            nn.BatchNorm2d(F1, **bn),
            max_norm(nn.Conv2d(F1, F1 * D, (n_chans, 1), groups=F1, bias=False), 1.0),
            nn.BatchNorm2d(F1 * D, **bn),
            nn.ELU(),
            nn.AvgPool2d((1, 4)),
            nn.Dropout(drop_prob),
            nn.Conv2d(F1 * D, F1 * D, (1, 16), padding=(0, 8), groups=F1 * D, bias=False),
            nn.Conv2d(F1 * D, F2, 1, bias=False),
            nn.BatchNorm2d(F2, **bn),
            nn.ELU(),
            nn.AvgPool2d((1, 8)),
            nn.Dropout(drop_prob),
            nn.Flatten(),
        )
        self.classifier = max_norm(nn.Linear(_flat_size(self.features, n_chans, n_times), n_outputs), 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)))


class _SafeLog(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.clamp(min=1e-6))


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class ShallowConvNet(nn.Module):
    """Shallow ConvNet: temporal then spatial convolution, squaring, mean pooling, log (an FBCSP analogue)."""

    def __init__(
        self,
        n_chans: int,
        n_outputs: int,
        n_times: int,
        n_filters_time: int = 40,
        filter_time_length: int = 25,
        n_filters_spat: int = 40,
        pool_time_length: int = 75,
        pool_time_stride: int = 15,
        drop_prob: float = 0.5,
    ) -> None:
        super().__init__()
        _check(n_chans, n_outputs, n_times)
        if n_times < filter_time_length + pool_time_length - 1:
            raise ValueError(
                f"n_times={n_times}: expected at least {filter_time_length + pool_time_length - 1} samples "
                "(filter_time_length + pool_time_length - 1)"
            )
        self.features = nn.Sequential(
            nn.Conv2d(1, n_filters_time, (1, filter_time_length)),
            nn.Conv2d(n_filters_time, n_filters_spat, (n_chans, 1), bias=False),
            nn.BatchNorm2d(n_filters_spat, momentum=0.1),
            _Square(),
            nn.AvgPool2d((1, pool_time_length), stride=(1, pool_time_stride)),
            _SafeLog(),
            nn.Dropout(drop_prob),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(_flat_size(self.features, n_chans, n_times), n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)))


class AddChannelDim(nn.Module):
    """``(batch, n_chans, n_times) -> (batch, 1, n_chans, n_times)``: the EEG as a one-channel image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)


class AvgPoolSame(nn.Module):
    """Average pooling over time of size and stride ``k`` with Keras/TensorFlow ``padding='same'``.

    For inputs of ``n_times`` samples (fixed by the model) the output has ``ceil(n_times / k)`` steps; where
    the length is not a multiple of ``k`` the missing samples are split as TensorFlow splits them (the
    extra one at the end) and left out of the average.
    """

    def __init__(self, k: int, n_times: int) -> None:
        super().__init__()
        self.k = k
        total = -(-n_times // k) * k - n_times
        self.padding = (total // 2, total - total // 2)
        # 1 / (samples inside the input) of each window: only the border windows differ from 1/k
        count = F.avg_pool2d(F.pad(torch.ones(1, 1, 1, n_times), self.padding), (1, k))
        self.register_buffer("correction", 1.0 / count, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, self.padding), (1, self.k)) * self.correction

    def extra_repr(self) -> str:
        return f"k={self.k}, padding={self.padding}"


class EEGNeX(nn.Module):
    """EEGNeX-8,32 (Chen et al., Biomed. Signal Process. Control 87, 105475, 2024), the backbone of arXiv 2510.08059.

    As in the authors' released Keras model (``EEGNeX_8_32`` in github.com/chenxiachan/EEGNeX,
    ``BenchmarkModels.py``), with the module names of braindecode's ``EEGNeX``:

    * ``block_1``: temporal conv 1 -> ``filter_1`` (1 x 64, 'same', no bias), BN, ELU;
    * ``block_2``: temporal conv ``filter_1`` -> ``filter_2`` (1 x 64, 'same', no bias), BN;
    * ``block_3``: depthwise spatial conv (n_chans x 1, depth multiplier 2, max-norm 1), BN, ELU,
      average pooling (1 x 4, 'same'), dropout 0.5;
    * ``block_4``: dilated temporal conv ``2 filter_2 -> filter_2`` (1 x 16, dilation 2, 'same'), BN;
    * ``block_5``: dilated temporal conv ``filter_2 -> filter_1`` (1 x 16, dilation 4, 'same'), BN, ELU,
      average pooling (1 x 4, 'same'), dropout 0.5, flatten;
    * ``final_layer``: dense layer (max-norm 0.25) to the class scores.

    braindecode's ``EEGNeX`` differs from the authors' code in three places, each an argument here:
    no ELU after block 1 (``elu_block_1=False``), a second pooling of 1 x 8 (``avg_pool_block5=8``)
    and pooling windows shifted by one sample (``nn.AvgPool2d(padding=(0, 1))``, ``pool="braindecode"``).
    Batch normalisation is per feature map with Keras' momentum and epsilon (the Keras code, with
    ``channels_first`` data and Keras' default ``axis=-1``, normalises per time step instead, which the paper
    does not describe; we follow the paper and braindecode there).
    """

    def __init__(
        self,
        n_chans: int,
        n_outputs: int,
        n_times: int,
        filter_1: int = 8,
        filter_2: int = 32,
        depth_multiplier: int = 2,
        kernel_block_1_2: int = 64,
        kernel_block_4: int = 16,
        dilation_block_4: int = 2,
        avg_pool_block4: int = 4,
        kernel_block_5: int = 16,
        dilation_block_5: int = 4,
        avg_pool_block5: int = 4,
        drop_prob: float = 0.5,
        elu_block_1: bool = True,
        pool: Literal["same", "braindecode"] = "same",
    ) -> None:
        super().__init__()
        _check(n_chans, n_outputs, n_times)
        if pool not in ("same", "braindecode"):
            raise ValueError(f"pool={pool!r}: expected 'same' (Keras, the authors' code) or 'braindecode'")
        filter_3 = filter_2 * depth_multiplier
        bn = dict(momentum=0.01, eps=1e-3)  # Keras' BatchNormalization defaults

        def pooling(k: int, length: int) -> nn.Module:
            return AvgPoolSame(k, length) if pool == "same" else nn.AvgPool2d((1, k), padding=(0, 1))

        if pool == "same":
            after_pool_4 = -(-n_times // avg_pool_block4)
        else:
            after_pool_4 = (n_times + 2 - avg_pool_block4) // avg_pool_block4 + 1

        self.block_1 = nn.Sequential(
            AddChannelDim(),
            nn.Conv2d(1, filter_1, (1, kernel_block_1_2), padding="same", bias=False),
            nn.BatchNorm2d(filter_1, **bn),
            *([nn.ELU()] if elu_block_1 else []),
        )
        self.block_2 = nn.Sequential(
            nn.Conv2d(filter_1, filter_2, (1, kernel_block_1_2), padding="same", bias=False),
            nn.BatchNorm2d(filter_2, **bn),
        )
        self.block_3 = nn.Sequential(
            max_norm(nn.Conv2d(filter_2, filter_3, (n_chans, 1), groups=filter_2, bias=False), 1.0),
            nn.BatchNorm2d(filter_3, **bn),
            nn.ELU(),
            pooling(avg_pool_block4, n_times),
            nn.Dropout(drop_prob),
        )
        self.block_4 = nn.Sequential(
            nn.Conv2d(filter_3, filter_2, (1, kernel_block_4), dilation=(1, dilation_block_4), padding="same",
                      bias=False),
            nn.BatchNorm2d(filter_2, **bn),
        )
        self.block_5 = nn.Sequential(
            nn.Conv2d(filter_2, filter_1, (1, kernel_block_5), dilation=(1, dilation_block_5), padding="same",
                      bias=False),
            nn.BatchNorm2d(filter_1, **bn),
            nn.ELU(),
            pooling(avg_pool_block5, after_pool_4),
            nn.Dropout(drop_prob),
            nn.Flatten(),
        )
        features = nn.Sequential(self.block_1, self.block_2, self.block_3, self.block_4, self.block_5)
        with torch.no_grad():
            was = features.training
            features.eval()
            flat = features(torch.zeros(1, n_chans, n_times)).shape[1]
            features.train(was)
        self.final_layer = max_norm(nn.Linear(flat, n_outputs), 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_5(self.block_4(self.block_3(self.block_2(self.block_1(x)))))
        return self.final_layer(x)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "eegnet": EEGNet,
    "shallow": ShallowConvNet,
    "eegnex": EEGNeX,
    "pbt": PatchedBrainTransformer,
}


def build(name: str, n_chans: int, n_outputs: int, n_times: int, **kwargs) -> nn.Module:
    """The backbone called ``name`` (see :data:`BACKBONES`), or ``"braindecode:<Model>"`` where installed.

    Raises:
        ValueError: unknown name.
        ImportError: a braindecode model was asked for and braindecode is not installed.
    """
    if not isinstance(name, str):
        raise TypeError(f"name={name!r}: expected a backbone name (str)")
    if name.startswith("braindecode:"):
        try:
            import braindecode.models as models
        except ImportError as err:
            raise ImportError(f"name={name!r}: braindecode is not installed (pip install braindecode)") from err
        cls = getattr(models, name.split(":", 1)[1], None)
        if cls is None:
            raise ValueError(f"name={name!r}: braindecode.models has no such model")
        return cls(n_chans=n_chans, n_outputs=n_outputs, n_times=n_times, **kwargs)
    if name not in BACKBONES:
        raise ValueError(
            f"name={name!r}: unknown backbone; expected one of {sorted(BACKBONES)} or 'braindecode:<Model>'"
        )
    return BACKBONES[name](n_chans, n_outputs, n_times, **kwargs)
