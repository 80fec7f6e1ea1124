"""Synthetic multi-subject SSVEP-like EEG with a controlled low-rank subject shift.

Each trial mixes a few latent sources into the channels, ``x = M_s z + noise``:

* an SSVEP source oscillating at the class's flicker frequency and its second harmonic (none for
  "rest"), with a random phase per trial;
* an alpha source (10 Hz), stronger at rest;
* background sources of band-limited noise.

Subject ``s`` mixes them with ``M_s = M_0 + shift * U_s V_s^T / sqrt(n_chans)``, where ``U_s`` (n_chans, q)
and ``V_s`` (n_sources, q) are random: a rank-``q`` change of the spatial patterns, the kind of shift a
rank-``q`` subject adapter on a spatial filter can undo exactly. Each session adds a smaller rank-1
shift (``session_shift``). ``shift = 0`` gives subjects that differ only in their noise.

Results on these trials are synthetic: :func:`generate` records ``structlab.data.synthetic(...)`` in
``trials.info["data"]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import signal

from structlab import data
from structlab.subject.trials import Trials

CLASSES = ("rest", "13Hz", "21Hz", "17Hz")  # the SSVEP exoskeleton's classes, in its label order
FREQUENCIES = (None, 13.0, 21.0, 17.0)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size of the synthetic data set and strength of its subject shift."""

    n_subjects: int = 12
    sessions_per_subject: int = 2
    trials_per_class: int = 8
    n_chans: int = 8
    n_times: int = 256
    sfreq: float = 128.0
    n_noise_sources: int = 3
    shift_rank: int = 2
    shift: float = 1.5
    session_shift: float = 0.2
    ssvep_amplitude: float = 0.35
    sensor_noise: float = 0.5

    def __post_init__(self) -> None:
        for name in ("n_subjects", "sessions_per_subject", "trials_per_class", "n_chans", "n_times", "shift_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if self.shift_rank > min(self.n_chans, 2 + self.n_noise_sources):
            raise ValueError(f"shift_rank={self.shift_rank}: expected at most min(n_chans, n_sources)")
        if self.shift < 0 or self.session_shift < 0:
            raise ValueError(f"shift={self.shift}, session_shift={self.session_shift}: expected >= 0")


def generate(config: SyntheticConfig = SyntheticConfig(), seed: int = 0) -> Trials:
    """Trials (n_subjects * sessions * 4 * trials_per_class, n_chans, n_times) with subject/session labels."""
    rng = np.random.default_rng(seed)
    c = config
    n_sources = 2 + c.n_noise_sources  # SSVEP, alpha, noise
    t = np.arange(c.n_times) / c.sfreq
    base_mixing = rng.normal(size=(c.n_chans, n_sources)) / np.sqrt(n_sources)
    noise_filter = signal.butter(4, [2.0, 40.0], btype="bandpass", fs=c.sfreq, output="sos")
    X, y, subject, session = [], [], [], []
    for s in range(c.n_subjects):
        U = rng.normal(size=(c.n_chans, c.shift_rank))
        V = rng.normal(size=(n_sources, c.shift_rank))
        subject_mixing = base_mixing + c.shift * U @ V.T / np.sqrt(c.n_chans * c.shift_rank)
        for e in range(c.sessions_per_subject):
            u, v = rng.normal(size=(c.n_chans, 1)), rng.normal(size=(n_sources, 1))
            mixing = subject_mixing + c.session_shift * u @ v.T / np.sqrt(c.n_chans)
            for label, freq in enumerate(FREQUENCIES):
                for _ in range(c.trials_per_class):
                    z = np.empty((n_sources, c.n_times))
                    if freq is None:
                        z[0] = 0.0
                    else:
                        phase = rng.uniform(0, 2 * np.pi, size=2)
                        z[0] = np.sin(2 * np.pi * freq * t + phase[0]) + 0.5 * np.sin(4 * np.pi * freq * t + phase[1])
                        z[0] *= c.ssvep_amplitude * rng.uniform(0.7, 1.3)
                    alpha = (1.0 if freq is None else 0.6) * rng.uniform(0.5, 1.5)
                    z[1] = alpha * np.sin(2 * np.pi * rng.normal(10.0, 0.5) * t + rng.uniform(0, 2 * np.pi))
                    z[2:] = signal.sosfiltfilt(noise_filter, rng.normal(size=(c.n_noise_sources, c.n_times)))
                    X.append(mixing @ z + c.sensor_noise * rng.normal(size=(c.n_chans, c.n_times)))
                    y.append(label)
                    subject.append(f"{s + 1:02d}")
                    session.append(str(e))
    how = (
        f"{c.n_subjects} synthetic subjects x {c.sessions_per_subject} sessions, rank-{c.shift_rank} subject shift "
        f"of strength {c.shift} in the spatial mixing (seed {seed})"
    )
    return Trials(
        np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64), np.asarray(subject), np.asarray(session),
        np.zeros(len(y), dtype=int).astype(str), [f"ch{i}" for i in range(c.n_chans)], c.sfreq, list(CLASSES),
        info={"data": data.synthetic("ssvep-exo", how).as_record(), "synthetic_config": asdict(c), "seed": seed},
    )
