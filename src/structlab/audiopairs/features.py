"""Clip-level audio features: log-mel and MFCC frames, their summary statistics, a cache and parallel extraction.

Every clip is decoded with :func:`~structlab.audiopairs.audio.load_audio` (any of wav/flac/ogg/mp3,
mixed to mono and resampled to ``FeatureConfig.sr``), padded with silence to ``min_seconds`` and cut
at ``max_seconds``. The power mel spectrogram is computed once; the log-mel frames are its dB values and
the MFCCs are their type-II DCT, exactly as ``librosa.feature.mfcc(y=...)`` does, without computing the
spectrogram a second time. Frames are cached per file under its SHA-256 and the configuration's key, so
a second run over the same corpus only reads ``.npy`` files.

Clip vectors (what the recognisers see, :func:`summary_vector`):

- ``"mfcc"``: mean and standard deviation over frames of the MFCCs, their deltas and delta-deltas
  (6 x ``n_mfcc`` numbers);
- ``"logmel"``: mean and standard deviation of each log-mel band (2 x ``n_mels``);
- ``"mfcc+logmel"``: both, concatenated.

The bag of audio words over the frames is in :mod:`structlab.audiopairs.audiowords`: its codebook must be
fitted on training files only, so it belongs to the classifier pipeline, not to extraction.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from structlab import runtime
from structlab.audiopairs.audio import load_audio

# Bump when the computation changes in a way the configuration does not capture: old cache entries
# then no longer match.
FEATURE_VERSION = 2

FEATURE_SETS: tuple[str, ...] = ("mfcc", "logmel", "mfcc+logmel")
DELTA_WIDTH = 9  # frames; librosa.feature.delta's default Savitzky-Golay window


@dataclass(frozen=True)
class FeatureConfig:
    """How clips become frames. Times in seconds, frequencies in Hz, lengths in samples.

    ``top_db`` clips each clip's log-mel values at that many dB below its loudest bin (librosa's
    ``power_to_db`` default), so silence does not dominate the statistics; None keeps everything.
    """

    sr: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 64
    n_mfcc: int = 20
    fmin: float = 0.0
    fmax: float | None = None
    top_db: float | None = 80.0
    min_seconds: float = 0.5
    max_seconds: float | None = 30.0

    def __post_init__(self) -> None:
        for name in ("sr", "n_fft", "hop_length", "n_mels", "n_mfcc"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc={self.n_mfcc}: expected at most n_mels={self.n_mels}")
        nyquist = self.sr / 2
        fmax = nyquist if self.fmax is None else self.fmax
        if not 0 <= self.fmin < fmax <= nyquist:
            raise ValueError(f"fmin={self.fmin!r}, fmax={self.fmax!r}: expected 0 <= fmin < fmax <= sr/2 = {nyquist}")
        if self.top_db is not None and self.top_db <= 0:
            raise ValueError(f"top_db={self.top_db!r}: expected a positive number of dB or None")
        min_frames_s = DELTA_WIDTH * self.hop_length / self.sr
        if not self.min_seconds >= min_frames_s:
            raise ValueError(
                f"min_seconds={self.min_seconds!r}: expected at least {min_frames_s:.3f} s "
                f"({DELTA_WIDTH} frames, the delta window)"
            )
        if self.max_seconds is not None and self.max_seconds < self.min_seconds:
            raise ValueError(f"max_seconds={self.max_seconds!r}: expected None or >= min_seconds={self.min_seconds}")

    def key(self) -> str:
        """A short hash of this configuration and :data:`FEATURE_VERSION` (names the cache folder)."""
        text = json.dumps({"version": FEATURE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ClipFeatures:
    """Frame features of one clip.

    ``logmel``: (n_mels, n_frames) float32, dB; ``mfcc``: (n_mfcc, n_frames) float32;
    ``duration_s``: the decoded length before padding or cutting.
    """

    logmel: np.ndarray
    mfcc: np.ndarray
    duration_s: float

    @property
    def n_frames(self) -> int:
        return int(self.logmel.shape[1])

    def mfcc_frames(self) -> np.ndarray:
        """MFCCs with deltas and delta-deltas per frame, shape (n_frames, 3 x n_mfcc): the audio words' input."""
        return np.concatenate(_with_deltas(self.mfcc), axis=0).T


@functools.lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float32)


def _with_deltas(mfcc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import librosa

    return mfcc, librosa.feature.delta(mfcc, width=DELTA_WIDTH, order=1), librosa.feature.delta(
        mfcc, width=DELTA_WIDTH, order=2
    )


def compute_features(samples: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> ClipFeatures:
    """Log-mel and MFCC frames of mono ``samples`` (1-D float, at ``cfg.sr`` Hz).

    Clips shorter than ``cfg.min_seconds`` are padded with zeros at the end; longer than
    ``cfg.max_seconds`` are cut. Raises ``ValueError`` for an empty or multi-dimensional array.
    """
    import librosa
    import scipy.fft

    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"samples: expected a non-empty 1-D array, got shape {samples.shape}")
    duration_s = samples.size / cfg.sr
    if cfg.max_seconds is not None:
        samples = samples[: int(round(cfg.max_seconds * cfg.sr))]
    min_len = int(np.ceil(cfg.min_seconds * cfg.sr))
    if samples.size < min_len:
        samples = np.pad(samples, (0, min_len - samples.size))
    # Power spectrogram, then the mel filterbank: librosa.feature.melspectrogram's defaults
    # (centred frames, reflect padding, Hann window, Slaney-normalised filters).
    stft = librosa.stft(samples, n_fft=cfg.n_fft, hop_length=cfg.hop_length)
    power = stft.real**2 + stft.imag**2
    mel = _mel_basis(cfg.sr, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax) @ power
    logmel = librosa.power_to_db(mel, ref=1.0, top_db=cfg.top_db)
    # MFCC = DCT-II (orthonormal) of the log-mel frames, as in librosa.feature.mfcc.
    mfcc = scipy.fft.dct(logmel, axis=0, type=2, norm="ortho")[: cfg.n_mfcc]
    return ClipFeatures(logmel.astype(np.float32), mfcc.astype(np.float32), float(duration_s))


def clip_features(path: str | os.PathLike[str], cfg: FeatureConfig = FeatureConfig()) -> ClipFeatures:
    """Decode ``path`` (resampled to ``cfg.sr``, mono) and compute its frames; see :func:`compute_features`.

    Raises ``FileNotFoundError`` or :class:`~structlab.audiopairs.audio.DecodeError` naming the file.
    """
    return compute_features(load_audio(path, sr=cfg.sr, mono=True), cfg)


def summary_vector(clip: ClipFeatures, feature_set: str = "mfcc") -> np.ndarray:
    """One fixed-length vector of statistics over ``clip``'s frames (see the module docstring), float64."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set={feature_set!r}: expected one of {FEATURE_SETS}")
    parts: list[np.ndarray] = []
    if feature_set in ("mfcc", "mfcc+logmel"):
        for frames in _with_deltas(clip.mfcc):
            parts += [frames.mean(axis=1), frames.std(axis=1)]
    if feature_set in ("logmel", "mfcc+logmel"):
        parts += [clip.logmel.mean(axis=1), clip.logmel.std(axis=1)]
    return np.concatenate(parts).astype(np.float64)


def summary_matrix(clips: Sequence[ClipFeatures], feature_set: str = "mfcc") -> np.ndarray:
    """:func:`summary_vector` of every clip, shape (n_clips, n_features)."""
    if not clips:
        raise ValueError("clips: expected at least one clip")
    return np.stack([summary_vector(c, feature_set) for c in clips])


class FeatureCache:
    """Frames of each file under ``root/<config key>/<sha[:2]>/<sha>.npy``, written atomically.

    One file holds three ``.npy`` arrays in sequence (log-mel, MFCC, duration): plain ``.npy`` reads
    about five times faster than an ``.npz`` archive, which is what a warm run spends its time on.

    The key is the file's SHA-256 (its bytes, wherever it lives) and the :class:`FeatureConfig`; an
    unreadable entry counts as missing and is recomputed.
    """

    def __init__(self, root: str | os.PathLike[str], cfg: FeatureConfig = FeatureConfig()) -> None:
        self.root = Path(root)
        self.cfg = cfg
        self.folder = self.root / cfg.key()

    def path(self, sha256: str) -> Path:
        if not (isinstance(sha256, str) and len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
            raise ValueError(f"sha256={sha256!r}: expected 64 lower-case hex digits")
        return self.folder / sha256[:2] / f"{sha256}.npy"

    def load(self, sha256: str) -> ClipFeatures | None:
        """The cached frames of ``sha256``, or None when absent or unreadable."""
        try:
            with open(self.path(sha256), "rb") as handle:
                logmel, mfcc, duration = (np.load(handle, allow_pickle=False) for _ in range(3))
        except (OSError, ValueError, EOFError):
            return None
        shapes_ok = (
            logmel.ndim == mfcc.ndim == 2 and logmel.shape == (self.cfg.n_mels, mfcc.shape[1])
            and mfcc.shape[0] == self.cfg.n_mfcc and duration.shape == (1,)
        )
        return ClipFeatures(logmel, mfcc, float(duration[0])) if shapes_ok else None

    def save(self, sha256: str, clip: ClipFeatures) -> None:
        """Write ``clip`` under ``sha256``: to a temporary name, then renamed, so a reader never sees half a file.

        Unlike :func:`structlab.atomic.atomic_open` this does not fsync (that was a fifth of the extraction
        time): after a power cut an entry may be lost or truncated, and :meth:`load` then reads it as
        missing (a short read or wrong shapes) and it is recomputed.
        """
        path = self.path(sha256)
        if not self.folder.joinpath("config.json").is_file():
            from structlab.atomic import atomic_write_json

            atomic_write_json(self.folder / "config.json", {"version": FEATURE_VERSION, **asdict(self.cfg)})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                for array in (clip.logmel, clip.mfcc, np.array([clip.duration_s])):
                    np.save(handle, array, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def default_cache_dir() -> Path:
    """The user's cache folder for feature frames (``<structlab cache>/audiopairs-features``)."""
    from structlab import data

    return data.cache_root() / "audiopairs-features"


@dataclass
class ExtractionStats:
    """What one :func:`extract` call did: files computed and read from the cache, seconds of audio computed."""

    computed: int = 0
    cached: int = 0
    audio_seconds_computed: float = 0.0
    workers: int = 1


def _compute_and_store(job: tuple[str, str | None, str | None, FeatureConfig]) -> ClipFeatures:
    path, sha256, cache_root, cfg = job
    clip = clip_features(path, cfg)
    if cache_root is not None and sha256 is not None:
        FeatureCache(cache_root, cfg).save(sha256, clip)
    return clip


def _one_blas_thread():
    """Parallelism comes from worker processes; BLAS threads on top of them only contend for the cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


_WORKER_LIMITS = None


def _warm_worker(cfg: FeatureConfig) -> None:
    global _WORKER_LIMITS
    _WORKER_LIMITS = _one_blas_thread()  # kept for the worker's life
    # Pay librosa's first-call costs (lazy imports, filterbank) once per worker, not once per clip.
    compute_features(np.zeros(int(cfg.min_seconds * cfg.sr) + 1, dtype=np.float32), cfg)


def extract(
    paths: Sequence[str | os.PathLike[str]],
    cfg: FeatureConfig = FeatureConfig(),
    checksums: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
    stats: ExtractionStats | None = None,
) -> list[ClipFeatures]:
    """Frames of every file in ``paths``, in order, reading and filling the cache at ``cache_dir``.

    ``checksums`` are the files' SHA-256 (as a corpus records them; computed here when None and a cache is
    used). Files missing from the cache are computed in ``n_jobs`` worker processes (default: the cores
    this process may use) that live for the whole call, with a progress bar. ``stats``, when given, is
    filled in. Raises ``ValueError`` when ``checksums`` and ``paths`` differ in length, and the decoding
    error of the first file that cannot be read.
    """
    paths = [str(p) for p in paths]
    if checksums is not None and len(checksums) != len(paths):
        raise ValueError(f"checksums: {len(checksums)} given for {len(paths)} paths; expected one per path")
    if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs < 1):
        raise ValueError(f"n_jobs={n_jobs!r}: expected a positive int or None")
    stats = stats if stats is not None else ExtractionStats()
    cache = FeatureCache(cache_dir, cfg) if cache_dir is not None else None
    if cache is not None and checksums is None:
        from structlab.data import sha256_file

        checksums = [sha256_file(p) for p in paths]
    shas: list[str | None] = list(checksums) if checksums is not None else [None] * len(paths)

    out: list[ClipFeatures | None] = [None] * len(paths)
    if cache is not None:
        for i, sha in enumerate(shas):
            out[i] = cache.load(sha)
    todo = [i for i, clip in enumerate(out) if clip is None]
    stats.cached += len(paths) - len(todo)
    workers = min(n_jobs or runtime.cpu_count(), len(todo)) if todo else 0
    stats.workers = max(workers, 1)
    jobs = [(paths[i], shas[i], str(cache.root) if cache else None, cfg) for i in todo]
    bar = runtime.progress(total=len(todo), desc="features", unit="file", disable=None if progress and todo else True)
    with contextlib.closing(bar), _one_blas_thread():
        if workers <= 1:
            results = map(_compute_and_store, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_warm_worker, initargs=(cfg,))
            results = pool.map(_compute_and_store, jobs, chunksize=max(1, len(jobs) // (workers * 16)))
        try:
            for i, clip in zip(todo, results, strict=True):
                out[i] = clip
                stats.computed += 1
                stats.audio_seconds_computed += clip.duration_s
                bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return out  # type: ignore[return-value]  # every slot is filled above


def measure_extraction(
    paths: Sequence[str | os.PathLike[str]],
    checksums: Sequence[str],
    cfg: FeatureConfig = FeatureConfig(),
    n_jobs: int | None = None,
) -> dict[str, float]:
    """Time :func:`extract` over ``paths`` twice, into an empty cache (cold) and again from it (warm).

    Returns seconds of audio, wall and CPU seconds (this process and its workers) of the cold run, wall
    seconds of the warm run, the number of workers and the derived ``x_realtime_per_core`` (audio
    seconds / (cold wall seconds x workers)), ``x_realtime_per_cpu_second`` and ``warm_speedup``.
    """
    import resource
    import tempfile
    import time

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    with tempfile.TemporaryDirectory(prefix="structlab-features-") as cache:
        cold, warm = ExtractionStats(), ExtractionStats()
        cpu0, t0 = cpu(), time.perf_counter()
        extract(paths, cfg, checksums, cache, n_jobs=n_jobs, progress=False, stats=cold)
        cold_s, cold_cpu = time.perf_counter() - t0, cpu() - cpu0
        t0 = time.perf_counter()
        extract(paths, cfg, checksums, cache, n_jobs=n_jobs, progress=False, stats=warm)
        warm_s = time.perf_counter() - t0
    audio_s = cold.audio_seconds_computed
    return {
        "files": len(paths),
        "audio_seconds": audio_s,
        "workers": cold.workers,
        "cold_seconds": cold_s,
        "cold_cpu_seconds": cold_cpu,
        "warm_seconds": warm_s,
        "x_realtime_per_core": audio_s / (cold_s * cold.workers),
        "x_realtime_per_cpu_second": audio_s / cold_cpu,
        "warm_speedup": cold_s / warm_s,
    }
