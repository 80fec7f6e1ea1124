"""Our networks as scikit-learn classifiers (through skorch), so that MOABB's evaluations can call them.

:class:`NetClassifier` takes what MOABB's SSVEP paradigm gives a pipeline: ``mne.Epochs`` (``return_epochs=True``)
whose ``metadata`` holds each trial's ``subject``, ``session`` and ``run`` (MOABB writes that table into the
epochs it returns), or a plain array with the subject ids passed as ``subjects=``. That is how the subject id
reaches a subject-conditioned network: MOABB's ``fit(X, y)`` and ``score(X, y)`` carry the epochs, and the
epochs carry their metadata, so nothing outside the estimator has to know.

With ``subject_conditioned=True`` the backbone is wrapped by :class:`SubjectConditioned` with one adapter
per training subject; a subject not seen in training is computed with the shared weights
(:data:`UNKNOWN_SUBJECT`), unless labelled trials of it arrive through MOABB's labelled cross-subject
calibration (``CrossSubjectMode.TRAIN_AND_TARGET_LABELED_*``, routed as ``X_target_labeled`` /
``y_target_labeled``): then its adapters are calibrated on them (:func:`calibrate`), and the plain network
is fine-tuned on them instead (all weights, as :func:`structlab.subject.training.fine_tune`).

The network itself is trained by skorch's ``NeuralNetClassifier`` (AdamW, a cosine schedule over
``max_epochs``, cross-entropy), on inputs scaled by one factor fitted on the training trials and, by
default, decimated by 2 (MOABB's SSVEP paradigm band-passes 7-45 Hz at 256 Hz, so 128 Hz loses nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.validation import check_is_fitted

from structlab.subject.backbones import build
from structlab.subject.calibration import calibrate
from structlab.subject.conditioned import SubjectConditioned
from structlab.subject.layers import UNKNOWN_SUBJECT
from structlab.subject.training import fine_tune


def trials_of(X, subjects=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(data (n, chans, times), subject labels (n,) or None)`` of ``mne.Epochs`` or an array.

    The subject labels come from ``subjects`` where given, else from the epochs' ``metadata["subject"]``.

    Raises:
        TypeError: ``X`` is neither epochs nor an array.
        ValueError: ``X`` is not 3-D, or ``subjects`` has the wrong length.
    """
    metadata = getattr(X, "metadata", None)
    if hasattr(X, "get_data"):
        data = X.get_data(copy=False)
    elif isinstance(X, np.ndarray | torch.Tensor | list):
        data = np.asarray(X)
    else:
        raise TypeError(f"X: {type(X).__name__}; expected mne.Epochs or an array (trials, chans, times)")
    if data.ndim != 3:
        raise ValueError(f"X: shape {data.shape}; expected (trials, chans, times)")
    if subjects is None and metadata is not None and "subject" in metadata:
        subjects = metadata["subject"].to_numpy()
    if subjects is not None:
        subjects = np.asarray(subjects).astype(str)
        if subjects.shape != (len(data),):
            raise ValueError(f"subjects: shape {subjects.shape}; expected ({len(data)},), one per trial")
    return data, subjects


@dataclass
class _Fitted:
    net: object  # skorch.NeuralNetClassifier
    labels: LabelEncoder
    scale: float
    registry: list[str] = field(default_factory=list)


class NetClassifier(ClassifierMixin, BaseEstimator):
    """A backbone (optionally subject-conditioned) trained by skorch; fit/predict on epochs or arrays.

    Args:
        backbone: a name of :data:`structlab.subject.backbones.BACKBONES` (``eegnet``, ``shallow``, ``eegnex``,
            ``pbt``).
        subject_conditioned: wrap the backbone with one adapter per training subject.
        rank, subject_dropout, exclude: the wrapping (see :class:`SubjectConditioned`); ``exclude`` defaults to
            the backbone's spatial convolution and classifier (as in the ``ssvep`` study).
        max_epochs, batch_size, lr, weight_decay: skorch's training (AdamW, cosine schedule).
        decimate: keep every ``decimate``-th sample (after MOABB's low-pass).
        calibration_epochs: epochs of adapter calibration / fine-tuning on labelled target trials.
        backbone_kwargs: passed to the backbone.
        device, seed: where and how reproducibly.
    """

    def __init__(
        self,
        backbone: str = "eegnet",
        subject_conditioned: bool = False,
        rank: int = 4,
        subject_dropout: float = 0.25,
        exclude: tuple[str, ...] | None = None,
        max_epochs: int = 60,
        batch_size: int = 64,
        lr: float = 4e-3,
        weight_decay: float = 1e-2,
        decimate: int = 2,
        calibration_epochs: int = 50,
        backbone_kwargs: dict | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.subject_conditioned = subject_conditioned
        self.rank = rank
        self.subject_dropout = subject_dropout
        self.exclude = exclude
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.decimate = decimate
        self.calibration_epochs = calibration_epochs
        self.backbone_kwargs = backbone_kwargs
        self.device = device
        self.seed = seed

    # --- scikit-learn ---------------------------------------------------------------------------------

    def fit(self, X, y, subjects=None, X_target_labeled=None, y_target_labeled=None):
        """Train on ``X`` (epochs or array) with labels ``y``; then calibrate on labelled target trials if given."""
        from skorch import NeuralNetClassifier
        from skorch.callbacks import LRScheduler

        data, subject_labels = trials_of(X, subjects)
        labels = LabelEncoder().fit(np.asarray(y))
        self.classes_ = labels.classes_
        data = data[..., :: self.decimate]
        scale = float(1.0 / (data.std() or 1.0))
        torch.manual_seed(self.seed)
        model = build(self.backbone, data.shape[1], len(self.classes_), data.shape[2], **(self.backbone_kwargs or {}))
        registry: list[str] = []
        if self.subject_conditioned:
            if subject_labels is None:
                raise ValueError("subjects: none given and X carries no metadata['subject']; a subject-conditioned "
                                 "network needs each trial's subject")
            registry = sorted(set(subject_labels.tolist()))
            exclude = self.exclude if self.exclude is not None else _spatial_and_classifier(self.backbone)
            model = SubjectConditioned(model, len(registry), rank=self.rank, exclude=list(exclude), labels=registry,
                                       subject_dropout=self.subject_dropout, clip_rank=True)
        net = NeuralNetClassifier(
            model, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.AdamW, lr=self.lr,
            optimizer__weight_decay=self.weight_decay, batch_size=self.batch_size, max_epochs=self.max_epochs,
            train_split=None, iterator_train__shuffle=True, device=self.device, verbose=0,
            callbacks=[("schedule", LRScheduler("CosineAnnealingLR", T_max=self.max_epochs))],
        )
        net.fit(self._inputs(data, scale, subject_labels, registry), labels.transform(np.asarray(y)))
        self.fitted_ = _Fitted(net, labels, scale, registry)
        if X_target_labeled is not None and y_target_labeled is not None and len(y_target_labeled):
            self._calibrate(X_target_labeled, y_target_labeled)
        return self

    def _calibrate(self, X, y) -> None:
        data, subject_labels = trials_of(X)
        data = data[..., :: self.decimate] * self.fitted_.scale
        y = self.fitted_.labels.transform(np.asarray(y))
        module = self.fitted_.net.module_
        if isinstance(module, SubjectConditioned):
            for label in sorted(set(subject_labels.tolist()) if subject_labels is not None else {"target"}):
                mask = subject_labels == label if subject_labels is not None else slice(None)
                known = label in module.labels
                calibrate(module, data[mask], y[mask], subject=label if known else None,
                          label=None if known else label, epochs=self.calibration_epochs, seed=self.seed)
            self.fitted_.registry = list(module.labels)
        else:
            fine_tune(module, data, y, epochs=self.calibration_epochs, seed=self.seed)
        module.eval()

    def predict_proba(self, X, subjects=None) -> np.ndarray:
        check_is_fitted(self, "fitted_")
        data, subject_labels = trials_of(X, subjects)
        data = data[..., :: self.decimate]
        return self.fitted_.net.predict_proba(
            self._inputs(data, self.fitted_.scale, subject_labels, self.fitted_.registry))

    def predict(self, X, subjects=None) -> np.ndarray:
        return self.classes_[self.predict_proba(X, subjects).argmax(1)]

    # --- helpers --------------------------------------------------------------------------------------

    def _inputs(self, data: np.ndarray, scale: float, subject_labels, registry: list[str]):
        x = (data * scale).astype(np.float32)
        if not self.subject_conditioned:
            return x
        index = {label: i for i, label in enumerate(registry)}
        ids = np.array([index.get(s, UNKNOWN_SUBJECT) for s in subject_labels.tolist()], dtype=np.int64)
        return {"x": x, "subjects": ids}  # skorch calls module(x=..., subjects=...)


def _spatial_and_classifier(backbone: str) -> tuple[str, ...]:
    from structlab.subject.studies import TEMPORAL_ONLY

    return tuple(TEMPORAL_ONLY.get(backbone, ()))
