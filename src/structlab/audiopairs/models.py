"""Trained recognisers kept in a file and applied to new clips: the multi-class pair recogniser and the
per-pair detectors, saved with skops (no pickle), their feature settings inside.

A model file is a skops archive of one dict: ``format`` and ``version``, ``task`` ("pairs": one
multi-class recogniser over the pairs; "detectors": one binary detector per pair, each against balanced
negatives from the other files), the recogniser's classifier and clip vector, the
:class:`~structlab.audiopairs.features.FeatureConfig` as a dict, the pair names and the fitted
scikit-learn pipelines. :func:`load_model` reads the archive's type list first and refuses any type that
is not one such a model is made of (a tampered or foreign file), so loading never runs code from the
file. Only summary-statistics clip vectors (``mfcc``, ``logmel``, ``mfcc+logmel``) are supported: a bag
of audio words would put this package's own codebook class in the file.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from structlab.audiopairs import features as feats
from structlab.audiopairs.recognition import Recogniser

FORMAT = "structlab-audiopairs-model"
VERSION = 1
TASKS = ("pairs", "detectors")
# Types a saved model is made of (beyond what skops trusts by default): the scaler and the classifiers.
TRUSTED = frozenset({
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.svm._classes.SVC",
    "sklearn.linear_model._logistic.LogisticRegression",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
    "numpy.str_",
    "builtins.tuple",
})


def train(
    X: np.ndarray,
    labels: Sequence[str],
    task: str = "pairs",
    recogniser: Recogniser | None = None,
    config: feats.FeatureConfig | None = None,
    seed: int = 0,
) -> dict:
    """Fit a model on clip vectors ``X`` (n_clips, n_features) labelled with pair names (``""``: no pair,
    used as negatives by detectors). Returns the model dict that :func:`save_model` writes.

    ``recogniser`` defaults to logistic regression on MFCC statistics, ``config`` to the default
    :class:`~structlab.audiopairs.features.FeatureConfig`. Raises ``ValueError`` for an unknown ``task``,
    a bag-of-words or embedding recogniser, or fewer than two pairs with files.
    """
    recogniser = recogniser or Recogniser("logreg", "mfcc")
    config = config or feats.FeatureConfig()
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    if recogniser.features not in feats.FEATURE_SETS:
        raise ValueError(f"recogniser.features={recogniser.features!r}: expected one of {feats.FEATURE_SETS}")
    labels = np.asarray(labels, dtype=str)
    if len(labels) != len(X):
        raise ValueError(f"labels: {len(labels)} for {len(X)} clips; expected one per clip")
    pairs = sorted(set(labels.tolist()) - {""})
    if len(pairs) < 2:
        raise ValueError(f"labels: {len(pairs)} pair(s) with files; expected at least 2")
    model = {"format": FORMAT, "version": VERSION, "task": task, "classifier": recogniser.classifier,
             "feature_set": recogniser.features, "features": asdict(config), "pairs": pairs}
    if task == "pairs":
        rows = labels != ""
        pipe = recogniser.classifier_pipeline(seed)
        pipe.fit(X[rows], labels[rows])
        model["model"] = pipe
    else:
        rng = np.random.default_rng(seed)
        detectors = {}
        for pair in pairs:
            positive = np.flatnonzero(labels == pair)
            others = np.flatnonzero(labels != pair)
            negative = rng.choice(others, size=min(len(others), max(len(positive), 1)), replace=False)
            rows = np.concatenate([positive, negative])
            y = np.concatenate([np.ones(len(positive), int), np.zeros(len(negative), int)])
            detectors[pair] = recogniser.classifier_pipeline(seed).fit(X[rows], y)
        model["model"] = detectors
    return model


def save_model(model: dict, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (from :func:`train`) to ``path`` as a skops archive, atomically."""
    import skops.io as sio

    from structlab.atomic import atomic_open

    path = Path(path)
    with atomic_open(path, "wb") as handle:
        handle.write(sio.dumps(model))
    return path


def load_model(path: str | os.PathLike[str]) -> dict:
    """Read a model file written by :func:`save_model`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a skops
    archive (a pickle, say), holds types a model is not made of (it is refused before anything in it is
    built), or is not a structlab audiopairs model.
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model={str(path)!r}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"model={str(path)!r}: not a skops model file (pickles are never loaded)")
    try:
        untrusted = set(sio.get_untrusted_types(file=path))
    except Exception as err:  # noqa: BLE001 - any failure to read the archive's schema
        raise ValueError(f"model={str(path)!r}: not a readable skops model file ({err})") from None
    unexpected = sorted(untrusted - TRUSTED)
    if unexpected:
        raise ValueError(f"model={str(path)!r}: refused: it holds types no audiopairs model has: {unexpected}")
    model = sio.load(path, trusted=sorted(untrusted))
    if not isinstance(model, dict) or model.get("format") != FORMAT:
        raise ValueError(f"model={str(path)!r}: not a structlab audiopairs model")
    if model.get("version") != VERSION:
        raise ValueError(f"model={str(path)!r}: version {model.get('version')!r}; this structlab reads {VERSION}")
    return model


def feature_config(model: dict) -> feats.FeatureConfig:
    """The feature settings a model was trained with."""
    return feats.FeatureConfig(**model["features"])


def scores(model: dict, X: np.ndarray) -> np.ndarray:
    """(n_clips, n_pairs) scores in ``model["pairs"]`` order: class probabilities of a logistic regression,
    else decision values (higher: more likely); for detectors, each detector's positive-class score."""
    pairs = model["pairs"]
    if model["task"] == "pairs":
        pipe = model["model"]
        raw = pipe.predict_proba(X) if hasattr(pipe, "predict_proba") and model["classifier"] == "logreg" \
            else pipe.decision_function(X)
        out = np.full((len(X), len(pairs)), -np.inf)
        out[:, np.searchsorted(pairs, pipe.classes_)] = raw
        return out
    cols = []
    for pair in pairs:
        pipe = model["model"][pair]
        cols.append(pipe.predict_proba(X)[:, 1] if model["classifier"] == "logreg" else pipe.decision_function(X))
    return np.stack(cols, axis=1)


def predict(model: dict, paths: Sequence[str | os.PathLike[str]], top_k: int = 5,
            progress: bool = True) -> list[list[tuple[str, float]]]:
    """The ``top_k`` pairs and their scores for each clip in ``paths`` (any container soundfile or librosa
    decodes), features computed with the model's own settings. Raises ``ValueError`` for ``top_k`` < 1."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r}: expected a positive int")
    clips = feats.extract(paths, feature_config(model), n_jobs=1, progress=progress)
    s = scores(model, feats.summary_matrix(clips, model["feature_set"]))
    order = np.argsort(-s, axis=1, kind="stable")[:, :top_k]
    return [[(model["pairs"][j], float(s[i, j])) for j in row] for i, row in enumerate(order)]
