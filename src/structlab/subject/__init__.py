"""Subject-conditioned layers for EEG decoding (Klein, Minakowski, Sager, arXiv 2510.08059).

:class:`SubjectConditioned` wraps any PyTorch model's Linear/Conv1d/Conv2d layers in place so that a trial
of subject ``s`` is computed with ``W + (alpha/r) B_s A_s``; :func:`calibrate` fits a new subject's adapter
on a few labelled trials. The EEG side (data loading, backbones, protocols, the study) lives in the
sub-modules ``eeg``, ``backbones``, ``protocols``, ``methods`` and ``studies``.
"""

from structlab.subject.calibration import calibrate
from structlab.subject.conditioned import SubjectConditioned, WrappedLayer
from structlab.subject.layers import UNKNOWN_SUBJECT, SubjectLayer, rank_limit
from structlab.subject.training import TrainConfig, accuracy, fit, predict

__all__ = [
    "UNKNOWN_SUBJECT",
    "SubjectConditioned",
    "SubjectLayer",
    "TrainConfig",
    "WrappedLayer",
    "accuracy",
    "calibrate",
    "fit",
    "predict",
    "rank_limit",
]
