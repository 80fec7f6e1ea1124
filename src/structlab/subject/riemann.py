"""The classical reference: filter-bank covariances, per-subject re-centring, tangent space, logistic regression.

As in Kalunga et al. (2016) for this data set, each trial is band-passed around every stimulus frequency
and the filtered copies are stacked, so one covariance matrix (``n_chans x n_bands`` square) holds the
power and the spatial structure of every SSVEP band. Re-centring (Zanini et al. 2018) moves each subject's
covariances so that their Riemannian mean is the identity, ``C -> M^{-1/2} C M^{-1/2}``, which removes much
of what differs between subjects before one classifier is trained on all of them in the tangent space.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

SSVEP_BANDS = ((12.0, 14.0), (16.0, 18.0), (20.0, 22.0))  # around the 13, 17 and 21 Hz flicker


def filter_bank_covariances(X: np.ndarray, sfreq: float, bands=SSVEP_BANDS) -> np.ndarray:
    """Covariances (n_trials, C*B, C*B) of trials ``X`` (n_trials, C, n_times) band-passed in ``bands`` (Hz)."""
    from pyriemann.estimation import Covariances

    stacked = []
    for low, high in bands:
        sos = signal.butter(4, [low, high], btype="bandpass", fs=sfreq, output="sos")
        stacked.append(signal.sosfiltfilt(sos, X, axis=-1))
    return Covariances(estimator="oas").transform(np.concatenate(stacked, axis=1))


def recentre(covariances: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``M^{-1/2} C M^{-1/2}`` for every C, with ``M`` the Riemannian mean of ``reference``'s matrices."""
    try:
        from pyriemann.geometry.base import invsqrtm  # pyriemann >= 0.12
    except ImportError:
        from pyriemann.utils.base import invsqrtm
    from pyriemann.utils.mean import mean_riemann

    whitening = invsqrtm(mean_riemann(reference))
    return whitening @ covariances @ whitening


class TangentSpaceClassifier:
    """Logistic regression on tangent vectors of re-centred covariances (at the identity)."""

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, covariances: np.ndarray, y: np.ndarray) -> TangentSpaceClassifier:
        from pyriemann.tangentspace import TangentSpace
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.pipeline = make_pipeline(TangentSpace(metric="riemann"), LogisticRegression(C=self.C, max_iter=2000))
        self.pipeline.fit(covariances, y)
        return self

    def predict(self, covariances: np.ndarray) -> np.ndarray:
        return self.pipeline.predict(covariances)


class FilterBankCovariances:
    """scikit-learn transformer: trials (epochs or arrays) -> :func:`filter_bank_covariances` (Butterworth bands).

    The same features as MOABB's tangent-space SSVEP pipeline (extended covariances of the trial band-passed
    around each stimulus frequency), but with 4th-order Butterworth bands of +-1 Hz instead of MNE's FIR
    filters, whose transition bands (several Hz wide at these frequencies) make MOABB's "1 Hz" bands overlap.
    """

    def __init__(self, sfreq: float = 256.0, bands=SSVEP_BANDS) -> None:
        self.sfreq = sfreq
        self.bands = bands

    def get_params(self, deep: bool = True) -> dict:
        return {"sfreq": self.sfreq, "bands": self.bands}

    def set_params(self, **params) -> FilterBankCovariances:
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def fit(self, X, y=None) -> FilterBankCovariances:
        return self

    def transform(self, X) -> np.ndarray:
        sfreq = X.info["sfreq"] if hasattr(X, "info") else self.sfreq
        data = X.get_data(copy=False) if hasattr(X, "get_data") else np.asarray(X)
        return filter_bank_covariances(data, sfreq, self.bands)

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.transform(X)
