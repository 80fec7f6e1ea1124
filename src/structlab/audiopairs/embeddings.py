"""Pretrained sound-effects embeddings (aiSFX, Ma & Lerch, ISMIR 2022) from a local checkpoint file.

aiSFX's CNN (the DCASE cross-task 9-layer CNN: four blocks of two 3x3 convolutions with batch norm
and ReLU, 2x2 max pooling after the first three; mean over frequency, max over time -> 512 numbers) was
trained on sound-effects libraries (UCS categories). Its PyPI wheel ``aisfx`` ships the weights
(``aisfx/models/checkpoint.pth``, 25 MB); nothing is downloaded. The package itself pins
``librosa==0.9.2`` and ``numpy==1.23.0``, so it cannot be a dependency here: the network is written out
below and only its weights are read, from

- a checkpoint file the user gives (aiSFX's ``.pth`` or a ``.safetensors`` with the same keys), or
- the installed wheel, found without importing it (``pip install --no-deps aisfx``).

The ``.pth`` is read with ``torch.load(weights_only=True)``; its only non-tensor content, NumPy
integers in a dataset table, is allowed by name.

Input (aiSFX's librosa path): audio at 44.1 kHz, peak-normalised; power mel spectrogram (2048-sample
window, 1024 hop, 96 HTK mel bands 0-22.05 kHz, filters normalised to unit sum); ``log10(1e4 S + 1)``
divided by 9.4578 (the paper's normalisation); blocks of 100 frames (2.3 s) with 50% overlap (a partial last
block dropped), a short clip zero-padded to one block. A clip's embedding is the mean of its blocks' embeddings.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from structlab import runtime
from structlab.atomic import atomic_open
from structlab.audiopairs.audio import load_audio

SAMPLE_RATE = 44100
N_FFT, HOP = 2048, 1024
N_MELS = 96
BLOCK, BLOCK_HOP = 100, 50  # frames
SPEC_MAX = 9.457798957824707  # aiSFX's 'original' min-max normalisation (min 0)
DIM = 512


def find_aisfx_checkpoint() -> Path | None:
    """The weights file of an installed ``aisfx`` wheel, or None (the package is not imported)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "checkpoint.pth"
    return path if path.is_file() else None


def _network():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class ConvBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.bn2 = nn.BatchNorm2d(c_out)

        def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            return F.max_pool2d(x, pool) if pool > 1 else x

    class SfxEmbeddingNet(nn.Module):
        """(batch, 100 frames, 96 mels) -> (batch, 512)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv_block1 = ConvBlock(1, 64)
            self.conv_block2 = ConvBlock(64, 128)
            self.conv_block3 = ConvBlock(128, 256)
            self.conv_block4 = ConvBlock(256, 512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.unsqueeze(1)
            for block, pool in ((self.conv_block1, 2), (self.conv_block2, 2), (self.conv_block3, 2)):
                x = block(x, pool)
            x = self.conv_block4(x, 1)
            return x.mean(dim=3).amax(dim=2)  # mean over frequency, max over time

    return SfxEmbeddingNet()


def load_embedding_net(checkpoint: str | os.PathLike[str]):
    """The embedding network with the weights in ``checkpoint`` (aiSFX ``.pth`` or ``.safetensors``), in eval mode.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when the file lacks the network's
    weights.
    """
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        from numpy._core.multiarray import scalar

        # aiSFX's file is (state_dict, {dataset: (np.int64 index, n_classes)}): allow exactly those NumPy types.
        allowed = [(scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.int64))]
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj[0] if isinstance(obj, tuple | list) else obj
    prefix = "embedding_net."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or dict(state)
    net = _network()
    missing, unexpected = net.load_state_dict(weights, strict=False)
    if missing:
        raise ValueError(f"checkpoint={str(path)!r}: lacks the embedding network's weights (e.g. {missing[0]})")
    return net.eval()


def sfx_spectrogram(samples: np.ndarray) -> np.ndarray:
    """aiSFX's input for mono ``samples`` at 44.1 kHz: normalised log-mel frames, shape (n_frames, 96)."""
    import librosa

    samples = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    samples = samples / (peak or 1.0)
    if samples.size < N_FFT:  # a clip under 46 ms: zeros after it make one whole window (librosa warns otherwise)
        samples = np.pad(samples, (0, N_FFT - samples.size))
    mel = librosa.feature.melspectrogram(
        y=samples, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, fmin=0.0, fmax=SAMPLE_RATE / 2,
        htk=True, norm=1.0, power=2.0,
    )
    return (np.log10(mel * 1e4 + 1) / SPEC_MAX).T.astype(np.float32)


def blocks(spec: np.ndarray) -> np.ndarray:
    """(n_blocks, 100, 96) half-overlapping blocks of ``spec`` (a partial last block is dropped, as aiSFX
    does); a clip shorter than one block is zero-padded to one."""
    n = max(1, (len(spec) - BLOCK) // BLOCK_HOP + 1)
    padded = np.zeros((max(len(spec), BLOCK), spec.shape[1]), dtype=np.float32)
    padded[: len(spec)] = spec
    return np.stack([padded[i * BLOCK_HOP : i * BLOCK_HOP + BLOCK] for i in range(n)])


def embed(
    paths: Sequence[str | os.PathLike[str]],
    checkpoint: str | os.PathLike[str],
    checksums: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Clip embeddings, shape (n_files, 512): the mean over each clip's blocks.

    With ``cache_dir`` and ``checksums`` each clip's embedding is cached under the checkpoint's and the
    file's SHA-256 (atomic ``.npy`` writes).
    """
    import torch

    from structlab.data import sha256_file

    if checksums is not None and len(checksums) != len(paths):
        raise ValueError(f"checksums: {len(checksums)} given for {len(paths)} paths; expected one per path")
    net = None
    folder = None
    if cache_dir is not None and checksums is not None:
        # -v2: clips under one window are zero-padded to it (v1 computed them from librosa's padding)
        folder = Path(cache_dir) / f"aisfx-{sha256_file(checkpoint)[:16]}-v2"
    out = np.zeros((len(paths), DIM), dtype=np.float32)
    bar = runtime.progress(paths, desc="embeddings", unit="file", disable=None if progress else True)
    for i, path in enumerate(bar):
        entry = folder / checksums[i][:2] / f"{checksums[i]}.npy" if folder is not None else None
        if entry is not None and entry.is_file():
            try:
                out[i] = np.load(entry)
                continue
            except (ValueError, OSError):
                pass  # a damaged entry is recomputed
        if net is None:
            net = load_embedding_net(checkpoint)
        x = torch.from_numpy(blocks(sfx_spectrogram(load_audio(path, sr=SAMPLE_RATE))))
        with torch.no_grad():
            out[i] = net(x).mean(dim=0).numpy()
        if entry is not None:
            with atomic_open(entry, "wb") as handle:
                np.save(handle, out[i])
    return out

