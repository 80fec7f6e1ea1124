"""Bag of audio words: a k-means codebook over frame features, and each clip as a histogram of its words.

Frames (MFCCs with deltas, :meth:`ClipFeatures.mfcc_frames`) are standardised, a k-means codebook of
``n_words`` centroids is fitted on frames of the *training* files, and a clip becomes the normalised
count of its frames' nearest centroids. Because the codebook learns from data it is a scikit-learn
transformer inside the classifier pipeline: cross-validation then refits it on each training fold and
never sees a test file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted


def _check_frames(X: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(X) == 0:
        raise ValueError("X: expected at least one clip's frames")
    out = []
    for i, frames in enumerate(X):
        frames = np.asarray(frames, dtype=np.float64)
        if frames.ndim != 2 or frames.shape[0] == 0:
            raise ValueError(f"X[{i}]: expected a (n_frames, n_dims) array, n_frames >= 1; got shape {frames.shape}")
        if out and frames.shape[1] != out[0].shape[1]:
            raise ValueError(f"X[{i}]: {frames.shape[1]} dims per frame; X[0] has {out[0].shape[1]}")
        out.append(frames)
    return out


class AudioWordCodebook(TransformerMixin, BaseEstimator):
    """Clips (each an (n_frames, n_dims) array) to (n_clips, n_words) word histograms summing to 1.

    ``max_frames`` frames at most, drawn evenly from every training clip (a short clip is not drowned by
    a long one), fit the codebook; ``random_state`` seeds the draw and k-means.
    """

    def __init__(self, n_words: int = 128, max_frames: int = 20000, random_state: int = 0) -> None:
        self.n_words = n_words
        self.max_frames = max_frames
        self.random_state = random_state

    def fit(self, X: Sequence[np.ndarray], y=None) -> AudioWordCodebook:
        from sklearn.cluster import KMeans

        if not isinstance(self.n_words, int) or self.n_words < 2:
            raise ValueError(f"n_words={self.n_words!r}: expected an int >= 2")
        clips = _check_frames(X)
        rng = np.random.default_rng(self.random_state)
        per_clip = max(1, self.max_frames // len(clips))
        sample = np.concatenate(
            [c if len(c) <= per_clip else c[np.sort(rng.choice(len(c), per_clip, replace=False))] for c in clips]
        )
        if len(sample) < self.n_words:
            raise ValueError(f"n_words={self.n_words}: the training clips have only {len(sample)} frames")
        self.mean_ = sample.mean(axis=0)
        self.scale_ = sample.std(axis=0) + 1e-8
        self.kmeans_ = KMeans(n_clusters=self.n_words, n_init=1, random_state=self.random_state)
        self.kmeans_.fit((sample - self.mean_) / self.scale_)
        return self

    def transform(self, X: Sequence[np.ndarray]) -> np.ndarray:
        check_is_fitted(self, "kmeans_")
        clips = _check_frames(X)
        if clips[0].shape[1] != len(self.mean_):
            raise ValueError(f"X: {clips[0].shape[1]} dims per frame; the codebook was fitted on {len(self.mean_)}")
        out = np.zeros((len(clips), self.n_words))
        for i, frames in enumerate(clips):
            words = self.kmeans_.predict((frames - self.mean_) / self.scale_)
            out[i] = np.bincount(words, minlength=self.n_words) / len(words)
        return out
