"""Recognisers over clip features and their evaluation on grouped folds.

A :class:`Recogniser` is a feature representation (``"mfcc"``, ``"logmel"``, ``"mfcc+logmel"`` summary
statistics, ``"boaw"``, a bag of audio words, or ``"sfx"``, pretrained aiSFX embeddings) and a
scikit-learn classifier (``"linear-svm"``, ``"rbf-svm"``, ``"logreg"``), built as one pipeline so that
everything learnt from data (the audio-word codebook, the standardisation, the classifier) is fitted on
training folds only.

:func:`cross_validate` scores a recogniser on given folds: balanced accuracy per fold (chance is
1/K for K classes whatever the class sizes), top-k accuracy, and the pooled test predictions for
confusion matrices. :func:`detect_pair` is AudioPairBank's per-pair detector: positives of one pair
against as many negatives drawn from the other files, cross-validated by groups and repeated over
seeds (fresh negatives and folds each time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from structlab.audiopairs.audiowords import AudioWordCodebook
from structlab.audiopairs.features import FEATURE_SETS, ClipFeatures, summary_matrix
from structlab.audiopairs.protocol import Fold, balanced_negatives, grouped_folds

CLASSIFIERS: tuple[str, ...] = ("linear-svm", "rbf-svm", "logreg")
REPRESENTATIONS: tuple[str, ...] = (*FEATURE_SETS, "boaw", "sfx")


@dataclass(frozen=True)
class Recogniser:
    """A representation and a classifier. ``n_words`` and ``max_frames`` set the bag of audio words.

    Hyper-parameters are scikit-learn's usual defaults (C = 1, RBF width ``gamma="scale"``) with
    class weights balanced; with a handful of files per class there is no data to tune them on.
    """

    classifier: str = "linear-svm"
    features: str = "mfcc"
    n_words: int = 128
    max_frames: int = 20000

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier={self.classifier!r}: expected one of {CLASSIFIERS}")
        if self.features not in REPRESENTATIONS:
            raise ValueError(f"features={self.features!r}: expected one of {REPRESENTATIONS}")

    @property
    def name(self) -> str:
        return f"{self.classifier} / {self.features}"

    def pipeline(self, seed: int = 0):
        """A fresh, unfitted scikit-learn ``Pipeline`` from the representation's inputs to a label."""
        from sklearn.pipeline import Pipeline

        steps = [("words", self.codebook(seed))] if self.features == "boaw" else []
        return Pipeline(steps + list(self.classifier_pipeline(seed).steps))

    def codebook(self, seed: int = 0) -> AudioWordCodebook:
        """The unfitted audio-word codebook of a ``"boaw"`` recogniser."""
        return AudioWordCodebook(self.n_words, self.max_frames, random_state=seed)

    def classifier_pipeline(self, seed: int = 0):
        """Standardisation and the classifier: what follows the (possibly shared) codebook."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC, LinearSVC

        if self.classifier == "linear-svm":
            clf = LinearSVC(C=1.0, class_weight="balanced", max_iter=20000, random_state=seed)
        elif self.classifier == "rbf-svm":
            clf = SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced", random_state=seed)
        else:
            clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000, random_state=seed)
        return make_pipeline(StandardScaler(), clf)


class FeatureTable:
    """The recognisers' inputs for a list of clips, built once per representation.

    ``inputs("mfcc")`` is an (n_clips, n_features) matrix; ``inputs("boaw")`` an object array of each
    clip's (n_frames, 3 n_mfcc) frames, which the pipeline's codebook turns into histograms;
    ``inputs("sfx")`` the (n_clips, 512) embeddings given as ``embeddings``
    (:func:`structlab.audiopairs.embeddings.embed`).
    """

    def __init__(self, clips: Sequence[ClipFeatures], embeddings: np.ndarray | None = None) -> None:
        if not clips:
            raise ValueError("clips: expected at least one clip")
        if embeddings is not None and len(embeddings) != len(clips):
            raise ValueError(f"embeddings: {len(embeddings)} rows for {len(clips)} clips; expected one per clip")
        self.clips = list(clips)
        self._inputs: dict[str, np.ndarray] = {} if embeddings is None else {"sfx": np.asarray(embeddings)}

    def has(self, features: str) -> bool:
        """Whether :meth:`inputs` can give ``features`` (``"sfx"`` needs embeddings)."""
        return features != "sfx" or "sfx" in self._inputs

    def __len__(self) -> int:
        return len(self.clips)

    def inputs(self, features: str) -> np.ndarray:
        if features not in REPRESENTATIONS:
            raise ValueError(f"features={features!r}: expected one of {REPRESENTATIONS}")
        if features not in self._inputs:
            if features == "sfx":
                raise ValueError("features='sfx': this table has no pretrained embeddings (give embeddings=...)")
            if features == "boaw":
                frames = np.empty(len(self.clips), dtype=object)
                for i, clip in enumerate(self.clips):
                    frames[i] = clip.mfcc_frames()
                self._inputs[features] = frames
            else:
                self._inputs[features] = summary_matrix(self.clips, features)
        return self._inputs[features]


@dataclass
class CVResult:
    """Scores of one recogniser on one set of folds.

    ``accuracy``: balanced accuracy of each fold (mean recall over the classes in its test set);
    ``top_k``: plain top-k accuracy per fold for each k asked; ``y_true``/``y_pred``: every test
    prediction, pooled over folds.
    """

    classes: np.ndarray
    accuracy: list[float] = field(default_factory=list)
    top_k: dict[int, list[float]] = field(default_factory=dict)
    y_true: list = field(default_factory=list)
    y_pred: list = field(default_factory=list)

    @property
    def chance(self) -> float:
        """Balanced accuracy of a recogniser that ignores the audio: 1 / number of classes."""
        return 1.0 / len(self.classes)

    def pooled_accuracy(self) -> float:
        """Balanced accuracy over all pooled test predictions."""
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(self.y_true, self.y_pred))

    def confusion(self, labels: Sequence | None = None) -> np.ndarray:
        """Pooled confusion counts, rows = true class, columns = predicted, in ``labels`` order."""
        from sklearn.metrics import confusion_matrix

        return confusion_matrix(self.y_true, self.y_pred, labels=self.classes if labels is None else labels)


def _scores(model, X, classes: np.ndarray) -> np.ndarray:
    """Decision scores over all ``classes`` (a class absent from training scores -inf)."""
    raw = model.decision_function(X)
    fitted = model.classes_
    if raw.ndim == 1:  # binary: the score of fitted[1]
        raw = np.stack([-raw, raw], axis=1)
    full = np.full((raw.shape[0], len(classes)), -np.inf)
    full[:, np.searchsorted(classes, fitted)] = raw
    return full


def cross_validate(
    recognisers: Sequence[Recogniser],
    table: FeatureTable,
    rows: np.ndarray,
    y: Sequence,
    folds: Sequence[Fold],
    top_k: Sequence[int] = (),
    seed: int = 0,
    pool_groups: np.ndarray | None = None,
) -> dict[str, CVResult]:
    """Fit each recogniser on each fold's training side and score its test side; results by name.

    ``rows``: the table rows of the examples, labelled ``y``; ``folds``: (train, test) index arrays into
    ``rows``. Bag-of-audio-words recognisers with the same codebook settings share one codebook per fold.
    The codebook learns without labels, so with ``pool_groups`` (a group id per *table* row) it is fitted
    on every clip of the table outside the test side's groups (more audio than a detector's few training
    files; still never a test recording); without it, on the fold's training clips. Raises ``ValueError``
    on mismatched lengths.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(y)
    rows = np.asarray(rows)
    if len(rows) != len(y):
        raise ValueError(f"rows and y: {len(rows)} rows for {len(y)} labels; expected one per label")
    classes = np.unique(y)
    results = {r.name: CVResult(classes=classes, top_k={k: [] for k in top_k}) for r in recognisers}
    for train, test in folds:
        words: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for rec in recognisers:
            X = table.inputs(rec.features)
            X_train, X_test = X[rows[train]], X[rows[test]]
            if rec.features == "boaw":
                key = (rec.n_words, rec.max_frames)
                if key not in words:
                    fit_on = X_train
                    if pool_groups is not None:
                        outside = ~np.isin(pool_groups, pool_groups[rows[test]])
                        fit_on = X[np.flatnonzero(outside)]
                    codebook = rec.codebook(seed).fit(fit_on)
                    words[key] = codebook.transform(X_train), codebook.transform(X_test)
                X_train, X_test = words[key]
            model = rec.classifier_pipeline(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X_train, y[train])
            pred = model.predict(X_test)
            result = results[rec.name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a class missing from one fold's test side
                result.accuracy.append(float(balanced_accuracy_score(y[test], pred)))
            if top_k:
                ranked = np.argsort(-_scores(model, X_test, classes), axis=1, kind="stable")
                truth = np.searchsorted(classes, y[test])
                for k in top_k:
                    result.top_k[k].append(float(np.mean([t in r[:k] for t, r in zip(truth, ranked, strict=True)])))
            result.y_true += y[test].tolist()
            result.y_pred += pred.tolist()
    return results


def majority_top_k(y: Sequence, folds: Sequence[Fold], k: int) -> list[float]:
    """Per fold, the top-k accuracy of guessing the k most frequent training classes (a measured chance level)."""
    y = np.asarray(y)
    out = []
    for train, test in folds:
        labels, counts = np.unique(y[train], return_counts=True)
        top = set(labels[np.argsort(-counts, kind="stable")[:k]].tolist())
        out.append(float(np.mean([label in top for label in y[test]])))
    return out


@dataclass
class DetectorResult:
    """One pair's detector over repeats: balanced accuracy of every fold of every repeat (chance 0.5)."""

    pair: str
    n_positive: int
    n_positive_groups: int
    accuracy: dict[str, list[float]] = field(default_factory=dict)  # recogniser name -> per-fold scores


def detect_pair(
    pair: str,
    table: FeatureTable,
    positive: np.ndarray,
    candidates: np.ndarray,
    groups: np.ndarray,
    recognisers: Sequence[Recogniser],
    n_repeats: int = 5,
    n_splits: int = 5,
    seed: int = 0,
) -> DetectorResult:
    """AudioPairBank's per-pair detector: ``positive`` files against balanced negatives from ``candidates``.

    Each repeat draws fresh negatives (:func:`balanced_negatives`) and fresh grouped folds; every
    recogniser sees the same negatives and folds. Raises ``ValueError`` when the positives span fewer
    than 2 groups.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos_groups = len(set(groups[positive].tolist()))
    result = DetectorResult(pair, int(positive.sum()), n_pos_groups, {r.name: [] for r in recognisers})
    for repeat in range(n_repeats):
        rng = np.random.default_rng([seed, repeat])
        negatives = balanced_negatives(positive, candidates, groups, rng)
        rows = np.concatenate([np.flatnonzero(positive), negatives])
        y = np.concatenate([np.ones(positive.sum(), dtype=int), np.zeros(len(negatives), dtype=int)])
        folds = grouped_folds(y, groups[rows], n_splits=n_splits, seed=seed * 1000 + repeat)
        cvs = cross_validate(recognisers, table, rows, y, folds, seed=seed, pool_groups=groups)
        for name, cv in cvs.items():
            result.accuracy[name] += cv.accuracy
    return result


def register_commands(subparsers) -> None:
    """Add ``features``, ``bench`` and ``recognise`` to ``structlab audiopairs`` (called by its cli module)."""
    from structlab.audiopairs.recognition_cli import register_commands as register

    register(subparsers)
