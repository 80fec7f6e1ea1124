"""An audio fingerprint of decoded audio that survives re-encoding and gain changes (Haitsma & Kalker 2002).

Haitsma and Kalker, "A Highly Robust Audio Fingerprinting System" (ISMIR 2002): the signal is cut into
overlapping frames, each frame's spectrum into 33 bands, and each frame gives one 32-bit sub-fingerprint
whose bit m is the sign of an energy difference across bands *and* frames (their eq. 1):

    F(n, m) = 1  if  d(n, m) = E(n, m) - E(n, m+1) - (E(n-1, m) - E(n-1, m+1)) > 0,  else 0.

A gain change scales every E(n, m) by one factor and so leaves every sign unchanged; lossy re-encoding
perturbs the energies a little and flips the bits whose |d(n, m)| is small. As in the paper's
reliability refinement, we also keep for each frame which 16 of its 32 bits are *strong* (largest
|d|, relative to each other) and compare clips on the bits that are strong in both: they rarely flip.

Two clips hold the same audio when, at the best alignment within a few frames (encoders add delay and
padding), the bit error rate (BER) over their strong bits is small everywhere: overall and in every
window of ``WINDOW`` frames (0.37 s, the paper's block), so that an edit in one place (a horn added to
one of two otherwise equal clips) is not averaged away. Unrelated audio gives a BER near 0.5. Frames of
(near) silence carry no information and are masked out.

Parameters follow the paper scaled to short sound effects: 11,025 Hz, 1,024-sample frames (93 ms) with a
hop of 128 (11.6 ms, the paper's hop), 33 mel-spaced bands from 100 Hz to 5 kHz.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 11025
FRAME = 1024
HOP = 128
N_BANDS = 33  # 32 bits from 33 bands
F_MIN, F_MAX = 100.0, 5000.0
SILENCE_DB = -60.0  # frames this far below the clip's loudest frame are masked out
WINDOW = 32  # frames in one block of the windowed BER (0.37 s)
MAX_SHIFT = 10  # alignments tried, in frames either way (0.12 s)
_VERSION = 2
_HEADER = "<BId"


@dataclass(frozen=True)
class Fingerprint:
    """Per frame: sub-fingerprint ``bits`` and ``strong``-bit mask ((n,) uint32), ``valid`` (n,) bool.

    ``duration`` is the clip's length in seconds.
    """

    bits: np.ndarray
    strong: np.ndarray
    valid: np.ndarray
    duration: float

    def to_bytes(self) -> bytes:
        """A compact blob for the corpus database (8 bytes and 1 bit per frame)."""
        header = struct.pack(_HEADER, _VERSION, len(self.bits), self.duration)
        return (
            header
            + self.bits.astype("<u4").tobytes()
            + self.strong.astype("<u4").tobytes()
            + np.packbits(self.valid).tobytes()
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> Fingerprint:
        version, n, duration = struct.unpack_from(_HEADER, blob)
        if version != _VERSION:
            raise ValueError(f"fingerprint version {version}: expected {_VERSION}")
        offset = struct.calcsize(_HEADER)
        bits = np.frombuffer(blob, "<u4", n, offset).astype(np.uint32)
        strong = np.frombuffer(blob, "<u4", n, offset + 4 * n).astype(np.uint32)
        valid = np.unpackbits(np.frombuffer(blob, np.uint8, offset=offset + 8 * n))[:n].astype(bool)
        return cls(bits, strong, valid, duration)

    def keys(self) -> np.ndarray:
        """Distinct sub-fingerprints of the valid frames (for finding candidate matches)."""
        return np.unique(self.bits[self.valid])


def _band_edges() -> np.ndarray:
    """FFT-bin index where each of the N_BANDS mel-spaced bands starts (and where the last one ends)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731 - the HTK mel scale
    edges_hz = 700.0 * (10 ** (np.linspace(mel(F_MIN), mel(F_MAX), N_BANDS + 1) / 2595.0) - 1.0)
    return np.searchsorted(np.fft.rfftfreq(FRAME, 1.0 / SAMPLE_RATE), edges_hz)


_EDGES = _band_edges()
_WINDOW = np.hanning(FRAME).astype(np.float32)
_WEIGHTS = 1 << np.arange(31, -1, -1, dtype=np.uint64)


def band_energies(samples: np.ndarray) -> np.ndarray:
    """E(n, m): (n_frames, N_BANDS) band energies of mono ``samples`` at ``SAMPLE_RATE``."""
    import scipy.fft

    x = np.asarray(samples, dtype=np.float32)
    if x.size < FRAME + HOP:  # clips shorter than two frames: zero-padded
        x = np.pad(x, (0, FRAME + HOP - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP] * _WINDOW
    spectrum = scipy.fft.rfft(frames, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    return np.add.reduceat(power[:, _EDGES[0] : _EDGES[-1]], _EDGES[:-1] - _EDGES[0], axis=1).astype(np.float64)


def fingerprint(samples: np.ndarray, sr: int = SAMPLE_RATE) -> Fingerprint:
    """Fingerprint of mono ``samples`` (1-D float array) at ``sr`` Hz, which must be ``SAMPLE_RATE``.

    Decode with ``load_audio(path, sr=SAMPLE_RATE, mono=True)``. Raises ``ValueError`` for an empty or
    multi-dimensional array.
    """
    if sr != SAMPLE_RATE:
        raise ValueError(f"sr={sr!r}: expected {SAMPLE_RATE} (decode with load_audio(path, sr={SAMPLE_RATE}))")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"samples: expected a non-empty 1-D array, got shape {x.shape}")
    energy = band_energies(x)
    band_diff = energy[:, :-1] - energy[:, 1:]  # E(n, m) - E(n, m+1)
    d = band_diff[1:] - band_diff[:-1]  # eq. 1, frames 1..n-1
    magnitude = np.abs(d)
    strong = magnitude > np.median(magnitude, axis=1, keepdims=True)
    loudness = energy.sum(axis=1)
    floor = loudness.max() * 10 ** (SILENCE_DB / 10) if loudness.max() > 0 else np.inf
    valid = (loudness[1:] > floor) & (loudness[:-1] > floor)
    return Fingerprint(_pack(d > 0), _pack(strong), valid, x.size / sr)


def _pack(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint64) @ _WEIGHTS).astype(np.uint32)


@dataclass(frozen=True)
class Match:
    """How two fingerprints compare at their best alignment."""

    ber: float  # bit error rate over the bits strong in both, all frames
    window_ber: float  # the largest BER of any WINDOW-frame block
    shift: int  # frames by which b is shifted against a
    frames: int  # frames compared


@lru_cache(maxsize=4096)
def _shift_index(n: int, m: int) -> np.ndarray:
    return np.arange(n)[None, :] + np.arange(2 * m + 1)[:, None]


def compare(a: Fingerprint, b: Fingerprint, max_shift: int = MAX_SHIFT) -> Match:
    """Compare ``a`` and ``b`` at every alignment within ``max_shift`` frames; the best (lowest BER) wins.

    At shift s, frame i of ``a`` meets frame i + s of ``b``. With no comparable frame the result is a
    BER of 1.0; with few (a clip of a few frames) the BER rests on few bits, so callers verify such
    clips on the audio itself.
    """
    m, n = max_shift, len(a.bits)
    index = _shift_index(n, m)
    take = min(len(b.bits), n + m)

    def windows(x: np.ndarray) -> np.ndarray:  # (2m + 1, n): row m + s is b shifted by s
        padded = np.zeros(n + 2 * m, dtype=x.dtype)
        padded[m : m + take] = x[:take]
        return padded[index]

    both = a.valid & windows(b.valid)
    mask = np.where(both, a.strong & windows(b.strong), 0).astype(np.uint32)
    errors = np.bitwise_count((a.bits ^ windows(b.bits)) & mask).astype(np.float64)
    counted = np.bitwise_count(mask).astype(np.float64)
    total = counted.sum(axis=1)
    usable = total > 0
    if not usable.any():
        return Match(1.0, 1.0, 0, 0)
    ber = np.where(usable, errors.sum(axis=1) / np.maximum(total, 1), np.inf)
    row = int(np.argmin(ber))
    k = min(WINDOW, n)
    e = np.convolve(errors[row], np.ones(k), "valid")
    c = np.convolve(counted[row], np.ones(k), "valid")
    full = c >= 4 * k  # blocks with enough strong bits to judge (a quarter of the frames valid)
    window = float((e[full] / c[full]).max()) if full.any() else float(ber[row])
    return Match(float(ber[row]), window, row - m, int(both[row].sum()))


def same_duration(a: float, b: float, tolerance: float = 0.01, slack: float = 0.06) -> bool:
    """Durations that re-encoding could give one clip: equal within ``tolerance`` (relative) + ``slack`` s.

    The slack covers an MP3 encoder's delay and padding (two 1,152-sample frames at 44.1 kHz); a clip
    trimmed by more is another clip.
    """
    return abs(a - b) <= slack + tolerance * max(a, b)


def level_deviation(samples_a: np.ndarray, samples_b: np.ndarray) -> float:
    """How far two aligned clips' band levels differ after removing one gain, in dB (90th percentile).

    Compares log band energies frame by frame over the bands and frames within 40 dB of each clip's
    loudest; the median difference (the gain) is removed first. Re-encoding moves levels by about 1 dB,
    different processing of one recording by several. Align first (:func:`align`).
    """
    ea = 10 * np.log10(band_energies(samples_a) + 1e-12)
    eb = 10 * np.log10(band_energies(samples_b) + 1e-12)
    n = min(len(ea), len(eb))
    ea, eb = ea[:n], eb[:n]
    mask = (ea > ea.max() - 40) & (eb > eb.max() - 40)
    if mask.sum() < 4:
        return float("inf")
    d = (ea - eb)[mask]
    return float(np.percentile(np.abs(d - np.median(d)), 90))


def align(samples_a: np.ndarray, samples_b: np.ndarray, max_lag: float = 0.15) -> tuple[np.ndarray, np.ndarray, int]:
    """Crop two clips (mono, ``SAMPLE_RATE``) to their overlap at the lag of greatest cross-correlation
    within ``max_lag`` seconds; returns (a, b, lag in samples; positive when ``a`` starts later)."""
    from scipy.signal import fftconvolve

    x = np.asarray(samples_a, dtype=np.float64)
    y = np.asarray(samples_b, dtype=np.float64)
    c = fftconvolve(x, y[::-1], mode="full")
    mid, reach = len(y) - 1, int(max_lag * SAMPLE_RATE)
    lo, hi = max(0, mid - reach), min(len(c), mid + reach + 1)
    lag = int(np.argmax(np.abs(c[lo:hi]))) + lo - mid
    xa, ya = (x[lag:], y) if lag >= 0 else (x, y[-lag:])
    n = min(len(xa), len(ya))
    return xa[:n], ya[:n], lag


def waveform_residual(samples_a: np.ndarray, samples_b: np.ndarray) -> tuple[float, float]:
    """How much of aligned ``a`` one gain times ``b`` leaves unexplained: (overall, worst window).

    ``b`` is scaled by the least-squares gain; the residual energy is divided by ``a``'s energy, overall
    and per 0.37 s window (windows within 30 dB of the loudest). Re-encoding leaves a small residual
    everywhere; an edit (a horn mixed into one part) leaves a large one where it is. Align first.
    """
    xa, ya = np.asarray(samples_a, dtype=np.float64), np.asarray(samples_b, dtype=np.float64)
    n = min(len(xa), len(ya))
    xa, ya = xa[:n], ya[:n]
    if n == 0 or xa @ xa == 0 or ya @ ya == 0:
        return 1.0, 1.0
    residual = xa - (xa @ ya) / (ya @ ya) * ya
    overall = float(residual @ residual / (xa @ xa))
    k = min(4 * FRAME, n)
    energy = np.convolve(xa**2, np.ones(k), "valid")[:: max(k // 4, 1)]
    error = np.convolve(residual**2, np.ones(k), "valid")[:: max(k // 4, 1)]
    loud = energy > energy.max() * 1e-3
    return overall, float((error[loud] / energy[loud]).max())
