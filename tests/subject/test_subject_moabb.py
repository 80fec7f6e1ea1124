"""MOABB on the local SSVEP copy with no network: the layout, MOABB's own loading and evaluation, our estimators.

Every test that runs MOABB guards the sockets: any connection attempt (or name lookup) fails the test.
"""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest

from structlab import data

pytest.importorskip("moabb")
pytest.importorskip("skorch")

from structlab.subject import moabb_local  # noqa: E402


def _folder():
    found = data.find("ssvep-exo")
    if found is None:
        pytest.skip("ssvep-exo not found (set STRUCTLAB_DATA to the shared data folder)")
    return found.path


@pytest.fixture
def no_network(monkeypatch):
    """Fail on any attempt to reach the network: connect, create_connection, name lookup."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts


def test_recordings_map_onto_moabbs_runs_and_flagged_sessions_are_the_wrong_clocks():
    rows = moabb_local.recording_table(_folder())
    runs = {}
    for r in rows:
        if not r.flagged:
            runs[r.subject] = runs.get(r.subject, 0) + 1
    # MOABB's Kalunga2016.data_path expects these; the shared copy lacks two of subject 12's
    assert [runs[f"{s:02d}"] for s in range(1, 12)] == list(moabb_local.MOABB_RUNS[:11]) and runs["12"] == 3
    assert {(r.subject, r.stamp) for r in rows if r.flagged} == moabb_local.FLAGGED
    assert all(r.clock_as_expected for r in rows if not r.flagged)  # stamp = UTC date + France's UTC offset
    assert not any(r.clock_as_expected for r in rows if r.flagged)  # the flagged ones: clock not converted
    assert {(r.subject, r.moabb_run) for r in rows if r.duplicate} == {("03", 2), ("07", 1)}
    assert not any(r.written for r in rows if r.duplicate or r.flagged)


def test_layout_is_verified_against_its_manifest_and_never_written_into_the_data(tmp_path):
    folder = _folder()
    with pytest.raises(ValueError, match="inside the data set's folder"):
        moabb_local.write_layout(folder / "cache", folder=folder)
    cache = moabb_local.write_layout(tmp_path, folder=folder, subjects=[1])
    runs = moabb_local.verify_layout(cache)
    assert runs == {"01": ["subject01_run1_raw.fif", "subject01_run2_raw.fif"]}
    target = cache / moabb_local.LAYOUT / "subject01_run2_raw.fif"
    with open(target, "r+b") as handle:  # one changed byte
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(Exception, match="changed since it was written"):
        moabb_local.verify_layout(cache)
    moabb_local.write_layout(tmp_path, folder=folder, subjects=[1])  # rewritten from the source
    assert moabb_local.verify_layout(cache) == runs


def test_moabb_loads_and_evaluates_the_local_copy_offline(tmp_path, no_network):
    import mne
    from moabb.datasets import Kalunga2016
    from moabb.evaluations import WithinSessionEvaluation
    from moabb.paradigms import SSVEP
    from pyriemann.tangentspace import TangentSpace
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from structlab.subject.estimators import NetClassifier
    from structlab.subject.riemann import FilterBankCovariances

    cache = moabb_local.write_layout(tmp_path / "mne", folder=_folder(), subjects=[1])
    with moabb_local.offline_moabb(cache):
        paradigm = SSVEP(events=["13", "17", "21"], n_classes=3)
        # MOABB's own data set class reads the layout (subject 1 has all of MOABB's runs)
        X, y, meta = paradigm.get_data(Kalunga2016(), [1], return_epochs=True)
        assert isinstance(X, mne.BaseEpochs) and len(X) == 48 and sorted(set(y)) == ["13", "17", "21"]
        assert X.metadata["subject"].tolist() == [1] * 48 and sorted(set(meta.run)) == ["0", "1"]
        # the events MOABB finds in the written stim channel are the shared copy's events
        raw = mne.io.read_raw_fif(cache / moabb_local.LAYOUT / "subject01_run1_raw.fif", verbose="error")
        events = mne.read_events(_folder() / "subject01" / "record-[2012.07.06-19.02.16]-eve.fif", verbose="error")
        np.testing.assert_array_equal(mne.find_events(raw, shortest_event=0, verbose="error"), events)
        evaluation = WithinSessionEvaluation(paradigm=paradigm, datasets=[moabb_local.local_dataset(cache)],
                                             overwrite=True, hdf5_path=str(tmp_path / "hdf5"), mne_labels=True,
                                             return_epochs=True, n_jobs=1)
        results = evaluation.process({
            "TS+LR": make_pipeline(FilterBankCovariances(), TangentSpace(), LogisticRegression(max_iter=500)),
            "eegnet (subject-conditioned)": NetClassifier(subject_conditioned=True, max_epochs=2),
        })
    assert sorted(results.pipeline) == ["TS+LR", "eegnet (subject-conditioned)"]
    assert set(results.subject.astype(str)) == {"1"} and results.score.between(0, 1).all()
    assert (results.dataset.astype(str) == "Kalunga2016").all()


def test_subject_ids_reach_the_network_through_the_epochs_metadata():
    import mne
    import pandas as pd
    from sklearn.base import clone

    from structlab.subject.conditioned import SubjectConditioned
    from structlab.subject.estimators import NetClassifier

    rng = np.random.default_rng(0)
    n = 24
    info = mne.create_info([f"EEG{i}" for i in range(8)], 256.0, "eeg")
    epochs = mne.EpochsArray(rng.normal(size=(n, 8, 257)) * 1e-3, info, verbose="error")
    epochs.metadata = pd.DataFrame({"subject": [3] * 12 + [7] * 12, "session": "0", "run": "0"})
    y = np.array(["a", "b"] * 12)
    est = clone(NetClassifier(subject_conditioned=True, max_epochs=1, batch_size=8, decimate=1))
    est.fit(epochs, y)
    module = est.fitted_.net.module_
    assert isinstance(module, SubjectConditioned) and module.labels == ["3", "7"]
    by_metadata = est.predict_proba(epochs)
    by_argument = est.predict_proba(epochs.get_data(), subjects=["3"] * 12 + ["7"] * 12)
    np.testing.assert_allclose(by_metadata, by_argument)
    unseen = est.predict_proba(epochs.get_data(), subjects=["99"] * n)  # an unseen subject: shared weights
    np.testing.assert_allclose(unseen, est.predict_proba(epochs.get_data(), subjects=["nobody"] * n))
    assert set(est.predict(epochs)) <= {"a", "b"}
    with pytest.raises(ValueError, match="subjects: none given"):
        clone(est).fit(epochs.get_data(), y)


def test_a_stopped_moabb_study_resumes_from_moabbs_own_results(tmp_path, no_network, monkeypatch):
    """The second run of the same plan reads every result from MOABB's hdf5 store (a network that would fail
    if trained again is never fitted); another plan gets its own store."""
    from structlab.reproduce import StudyContext
    from structlab.subject import moabb_study
    from structlab.subject.estimators import NetClassifier

    plan = moabb_study.MoabbPlan(subjects=[1], tasks=[moabb_study.MAIN_TASK], evaluations=["within-session"],
                                 backbones=["eegnet"], net={"max_epochs": 1}, classical=False)
    ctx = StudyContext("subject", "moabb", "quick", tmp_path / "results", log=lambda _: None)
    cache = moabb_local.write_layout(tmp_path / "mne", folder=_folder(), subjects=[1])
    first, _ = moabb_study.run_moabb(ctx, plan, cache)

    def refuse(*args, **kwargs):
        raise AssertionError("a stored result was computed again")

    monkeypatch.setattr(NetClassifier, "fit", refuse)
    again, _ = moabb_study.run_moabb(ctx, plan, cache)
    columns = ["pipeline", "subject", "session", "score"]
    key = ["pipeline", "session"]
    pd_first = first[columns].sort_values(key).reset_index(drop=True)
    pd_again = again[columns].sort_values(key).reset_index(drop=True)
    assert pd_first.astype(str).equals(pd_again.astype(str))
    other = dataclasses.replace(plan, net={"max_epochs": 2})
    assert moabb_study.results_store(ctx, other) != moabb_study.results_store(ctx, plan)
