"""Decoding audio files (wav, flac, ogg, mp3) to mono float32 at one sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class DecodeError(ValueError):
    """A file could not be decoded as audio."""


def load_audio(path: str | Path, sr: int = 22050, mono: bool = True) -> np.ndarray:
    """Decode ``path`` to float32 samples in [-1, 1] at ``sr`` Hz (mono: channels averaged).

    libsndfile (through soundfile) reads WAV, FLAC, Ogg Vorbis and MP3; librosa's audioread path is
    the fallback for anything it cannot. Raises :class:`DecodeError` naming the file otherwise.
    """
    if not isinstance(sr, int) or sr <= 0:
        raise ValueError(f"sr={sr!r}: expected a positive int (Hz)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    import soundfile

    try:
        samples, native_sr = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        import warnings

        try:
            import librosa

            # librosa's fallback warns in several lines that do not name the file; the error below does.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                samples, native_sr = librosa.load(path, sr=None, mono=False)
            samples = np.atleast_2d(samples).T.astype(np.float32)
        except Exception as err2:  # noqa: BLE001 - any decoder failure is a decode error
            reason = " ".join(str(err).split()) or type(err).__name__
            raise DecodeError(f"{path}: cannot decode as audio ({reason})") from err2
    if samples.size == 0:
        raise DecodeError(f"{path}: decodes to no samples")
    audio = samples.mean(axis=1) if mono else samples  # (n,) or (n, channels)
    if native_sr != sr:
        import soxr  # librosa's default high-quality resampler

        audio = soxr.resample(audio, native_sr, sr)
    if not mono:
        audio = audio.T  # (channels, n), librosa's convention
    return np.ascontiguousarray(audio, dtype=np.float32)
