"""Methods run under the protocols: one accuracy record per (protocol, method, subject, seed, k).

Methods (their names are the ``method`` of each :class:`Record`):

* ``shared-only``: one backbone for every subject, trained without subject ids.
* ``per-subject (average)``: one backbone per subject, trained on that subject's trials only.
* ``subject-conditioned``: the backbone wrapped by :class:`SubjectConditioned`, trained with subject ids.
* ``subject-conditioned + subject dropout``: the same with a fraction of training trials as unknown subject.
* ``... (shared weights)``: a subject-conditioned model evaluated as UNKNOWN_SUBJECT (the shared path).
* ``fine-tune (all weights)``: the shared-only model fine-tuned on the new subject's calibration trials.
* ``adapter calibration`` / ``adapter calibration, no subject dropout``: :func:`calibrate` of a new
  subject's adapters on the subject-conditioned model trained with / without subject dropout.
* ``tangent space + re-centring``: :mod:`structlab.subject.riemann`. Each training subject is re-centred on
  its own training trials; a test subject on its training trials (pooled), its calibration trials
  (calibration) or, zero-shot, its unlabelled test trials (the only data there is: this uses the test
  trials' covariances, not their labels).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from structlab import runtime
from structlab.subject import riemann
from structlab.subject.backbones import build
from structlab.subject.calibration import calibrate
from structlab.subject.conditioned import SubjectConditioned
from structlab.subject.layers import UNKNOWN_SUBJECT
from structlab.subject.protocols import CALIBRATION_K, LosoCalibration, LosoZeroShot, PooledCrossSession
from structlab.subject.training import TrainConfig, fine_tune, fit, predict
from structlab.subject.trials import Trials

SHARED = "shared-only"
PER_SUBJECT = "per-subject (average)"
CONDITIONED = "subject-conditioned"
CONDITIONED_DROPOUT = "subject-conditioned + subject dropout"
SHARED_WEIGHTS = " (shared weights)"
FINE_TUNE = "fine-tune (all weights)"
ADAPTER = "adapter calibration"
ADAPTER_NO_DROPOUT = "adapter calibration, no subject dropout"
TANGENT = "tangent space + re-centring"

POOLED_METHODS = (SHARED, PER_SUBJECT, CONDITIONED, CONDITIONED_DROPOUT, TANGENT)
LOSO_METHODS = (SHARED, CONDITIONED, CONDITIONED_DROPOUT, FINE_TUNE, ADAPTER, ADAPTER_NO_DROPOUT, TANGENT)


@dataclass
class EvalConfig:
    """Backbone, training and calibration settings shared by every method."""

    backbone: str = "eegnet"
    backbone_kwargs: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    per_subject_steps: int = 300
    rank: int = 4
    alpha: float = 1.0
    subject_dropout: float = 0.25
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    calibration_epochs: int = 100
    calibration_lr: float = 1e-2
    fine_tune_epochs: int = 100
    fine_tune_lr: float = 3e-4

    def as_record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Record:
    """The accuracy of one method on one subject's test trials in one protocol and seed."""

    protocol: str
    method: str
    subject: str
    seed: int
    accuracy: float
    n_test: int
    k: int | None = None
    backbone: str = ""


def _backbone(trials: Trials, config: EvalConfig) -> torch.nn.Module:
    return build(config.backbone, trials.X.shape[1], len(trials.classes), trials.X.shape[2], **config.backbone_kwargs)


def _conditioned(trials: Trials, config: EvalConfig, dropout: float) -> SubjectConditioned:
    return SubjectConditioned(
        _backbone(trials, config), len(trials.subjects), rank=config.rank, alpha=config.alpha,
        include=config.include, exclude=config.exclude, labels=trials.subjects, subject_dropout=dropout,
        clip_rank=True,
    )


def _records(protocol: str, method: str, test: Trials, predicted: np.ndarray, seed: int, config: EvalConfig,
             k: int | None = None) -> list[Record]:
    out = []
    for s in test.subjects:
        mask = test.subject == s
        correct = float((predicted[mask] == test.y[mask]).mean())
        out.append(Record(protocol, method, s, seed, correct, int(mask.sum()), k, config.backbone))
    return out


def _tangent_space(train: Trials, test: Trials, test_reference: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Predictions for ``test`` by :mod:`riemann`'s classifier trained on ``train``.

    Every subject is re-centred on its own trials in ``train``; a test subject absent from ``train`` on
    ``test_reference[subject]`` (covariances).
    """
    covs = riemann.filter_bank_covariances(train.X, train.sfreq)
    own = {s: covs[train.subject == s] for s in train.subjects}
    for s in train.subjects:
        covs[train.subject == s] = riemann.recentre(own[s], own[s])
    classifier = riemann.TangentSpaceClassifier().fit(covs, train.y)
    test_covs = riemann.filter_bank_covariances(test.X, test.sfreq)
    for s in test.subjects:
        mask = test.subject == s
        reference = own[s] if s in own else (test_reference or {})[s]
        test_covs[mask] = riemann.recentre(test_covs[mask], reference)
    return classifier.predict(test_covs)


def evaluate_pooled(
    trials: Trials, config: EvalConfig, seed: int, methods=POOLED_METHODS, progress: bool = False
) -> list[Record]:
    """The paper's protocol (``pooled-cross-session``): every method, one seed."""
    split = PooledCrossSession().splits(trials, seed)[0]
    train, test = trials.select(split.train), trials.select(split.test)
    name, records = split.protocol, []
    train_ids, test_ids = train.subject_ids(train.subjects), test.subject_ids(train.subjects)
    if SHARED in methods:
        runtime.seed_everything(seed)
        model = _backbone(trials, config)
        fit(model, train.X, train.y, config=config.train, seed=seed)
        records += _records(name, SHARED, test, predict(model, test.X).argmax(1), seed, config)
    if PER_SUBJECT in methods:
        per_subject = dataclasses.replace(config.train, steps=config.per_subject_steps, batch_size=32)
        predicted = np.empty(len(test), dtype=np.int64)
        for s in runtime.progress(test.subjects, desc="per-subject models", disable=not progress or None):
            runtime.seed_everything(seed)
            own, mask = train.select(train.subject == s), test.subject == s
            model = _backbone(trials, config)
            fit(model, own.X, own.y, config=per_subject, seed=seed)
            predicted[mask] = predict(model, test.X[mask]).argmax(1)
        records += _records(name, PER_SUBJECT, test, predicted, seed, config)
    for method, dropout in ((CONDITIONED, 0.0), (CONDITIONED_DROPOUT, config.subject_dropout)):
        if method not in methods:
            continue
        runtime.seed_everything(seed)
        wrapped = _conditioned(train, config, dropout)
        fit(wrapped, train.X, train.y, train_ids, config=config.train, seed=seed)
        records += _records(name, method, test, predict(wrapped, test.X, test_ids).argmax(1), seed, config)
        shared_path = predict(wrapped, test.X, np.full(len(test), UNKNOWN_SUBJECT)).argmax(1)
        records += _records(name, method + SHARED_WEIGHTS, test, shared_path, seed, config)
    if TANGENT in methods:
        records += _records(name, TANGENT, test, _tangent_space(train, test), seed, config)
    return records


def parallel_map(fn, jobs: list[tuple], workers: int = 1, desc: str = "", progress: bool = False) -> list:
    """``[fn(*job) for job in jobs]``, in ``workers`` processes when ``workers > 1``.

    Each process runs torch on one thread: these models are small, and one thread per core beats two
    threads contending for it. ``fn`` must be a module-level function (it is pickled).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bar = {"total": len(jobs), "desc": desc, "disable": not progress or None}
    if workers <= 1 or len(jobs) <= 1:
        with runtime.torch_threads(1):
            return [fn(*job) for job in runtime.progress(jobs, **bar)]
    # spawn: a forked child of a process that has started OpenMP threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        return list(runtime.progress(pool.map(fn, *zip(*jobs, strict=True)), **bar))


def loso_jobs(trials: Trials, config: EvalConfig, seed: int, ks=CALIBRATION_K, subjects: list[str] | None = None,
              methods=LOSO_METHODS) -> list[tuple]:
    """Arguments of :func:`loso_fold` for every held-out subject (all with two sessions, or ``subjects``)."""
    calibration = {k: {sp.held_out: sp for sp in LosoCalibration(k).splits(trials, seed)} for k in ks}
    folds = [sp for sp in LosoZeroShot().splits(trials, seed) if subjects is None or sp.held_out in subjects]
    return [
        (trials, split, {k: calibration[k][split.held_out].calibration for k in ks}, config, seed, number, methods)
        for number, split in enumerate(folds)
    ]


def evaluate_loso(
    trials: Trials,
    config: EvalConfig,
    seed: int,
    ks=CALIBRATION_K,
    subjects: list[str] | None = None,
    methods=LOSO_METHODS,
    workers: int = 1,
    progress: bool = False,
) -> list[Record]:
    """``loso-zero-shot`` and ``loso-calibration-<k>`` for each k, sharing each fold's trained models.

    ``subjects`` limits the held-out subjects (default: every subject with two or more sessions).
    ``workers > 1`` runs folds in that many processes; each fold is seeded on its own, so the records do
    not depend on ``workers``.
    """
    jobs = loso_jobs(trials, config, seed, ks, subjects, methods)
    return [r for out in parallel_map(loso_fold, jobs, workers, "LOSO folds", progress) for r in out]


def loso_fold(trials: Trials, split, calibration: dict[int, np.ndarray], config: EvalConfig, seed: int,
               number: int, methods) -> list[Record]:
    """Every method on one held-out subject (fold ``number``): zero-shot, then calibrated on each k's trials."""
    train, test, held_out = trials.select(split.train), trials.select(split.test), split.held_out
    fold_seed = seed * 1000 + number
    unknown = np.full(len(test), UNKNOWN_SUBJECT)
    records: list[Record] = []
    shared = None
    if SHARED in methods or FINE_TUNE in methods:
        runtime.seed_everything(fold_seed)
        shared = _backbone(trials, config)
        fit(shared, train.X, train.y, config=config.train, seed=fold_seed)
        records += _records(split.protocol, SHARED, test, predict(shared, test.X).argmax(1), seed, config)
    models = {}
    for method, dropout, calibrated in (
        (CONDITIONED, 0.0, ADAPTER_NO_DROPOUT),
        (CONDITIONED_DROPOUT, config.subject_dropout, ADAPTER),
    ):
        if method not in methods and calibrated not in methods:
            continue
        runtime.seed_everything(fold_seed)
        conditioned = _conditioned(train, config, dropout)
        fit(conditioned, train.X, train.y, train.subject_ids(train.subjects), config=config.train, seed=fold_seed)
        models[calibrated] = conditioned
        predicted = predict(conditioned, test.X, unknown).argmax(1)
        records += _records(split.protocol, method + SHARED_WEIGHTS, test, predicted, seed, config)
    if TANGENT in methods:
        unlabelled = {held_out: riemann.filter_bank_covariances(test.X, test.sfreq)}
        records += _records(split.protocol, TANGENT, test, _tangent_space(train, test, unlabelled), seed, config)
    for k, indices in calibration.items():
        cal = trials.select(indices)
        protocol = f"loso-calibration-{k}"
        if FINE_TUNE in methods and shared is not None:
            tuned = copy.deepcopy(shared)
            fine_tune(tuned, cal.X, cal.y, config.fine_tune_epochs, config.fine_tune_lr, seed=fold_seed)
            records += _records(protocol, FINE_TUNE, test, predict(tuned, test.X).argmax(1), seed, config, k)
        for method, model in models.items():
            if method not in methods:
                continue
            wrapped = copy.deepcopy(model)
            sid = calibrate(wrapped, cal.X, cal.y, label=held_out, epochs=config.calibration_epochs,
                            lr=config.calibration_lr, seed=fold_seed)
            predicted = predict(wrapped, test.X, np.full(len(test), sid)).argmax(1)
            records += _records(protocol, method, test, predicted, seed, config, k)
        if TANGENT in methods:  # the calibration trials join training; the subject is re-centred on them
            records += _records(protocol, TANGENT, test, _tangent_space(_concat(train, cal), test), seed, config, k)
    return records


def _concat(a: Trials, b: Trials) -> Trials:
    return Trials(
        np.concatenate([a.X, b.X]), np.concatenate([a.y, b.y]), np.concatenate([a.subject, b.subject]),
        np.concatenate([a.session, b.session]), np.concatenate([a.run, b.run]), a.ch_names, a.sfreq, a.classes,
        a.info,
    )
