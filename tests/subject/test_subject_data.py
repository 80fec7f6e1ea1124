"""The EEG loader on the shared SSVEP recordings: checks, duplicate detection, caching; and the generator."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from structlab import data
from structlab.errors import StructlabError
from structlab.jobs import Job
from structlab.subject import ssvep_exo, synthetic
from structlab.subject.evaluation import EvalConfig
from structlab.subject.recordings import Preprocessing, Recording, find_shared_trials, load_trials
from structlab.subject.studies import run_job

needs_ssvep = pytest.mark.skipif(
    data.find("ssvep-exo") is None, reason="ssvep-exo data set not found (set STRUCTLAB_DATA to the shared data)"
)
FAST = Preprocessing(l_freq=4.0, h_freq=45.0, sfreq=128.0, scale=1e3)


@pytest.fixture(scope="module")
def recordings():
    return ssvep_exo.recordings(data.resolve("ssvep-exo").path)


def _trial_arrays(rec: Recording) -> list[np.ndarray]:
    raw = rec.raw.get_data(picks=list(ssvep_exo.SPEC.channels), verbose="error")
    start, stop = (round(t * ssvep_exo.SPEC.sfreq) for t in ssvep_exo.SPEC.window)
    return [raw[:, s + start : s + stop] for s in rec.events[:, 0]]


@needs_ssvep
def test_duplicate_recordings_found_by_content_match_brute_force_equality(recordings):
    # Independent check: exact byte equality of every trial with every other (through a dictionary).
    arrays = [_trial_arrays(r) for r in recordings]
    owners: dict[bytes, set[int]] = {}
    for i, trials in enumerate(arrays):
        for a in trials:
            owners.setdefault(a.tobytes(), set()).add(i)
    brute = {(recordings[i].key, recordings[j].key) for group in owners.values() if len(group) > 1
             for i, j in itertools.combinations(sorted(group), 2)}
    found = {(recordings[i].key, recordings[j].key) for (i, _), (j, _) in find_shared_trials(
        [np.stack(a) for a in arrays])}
    assert found == brute
    # The shared copy holds one recording of subject 03 filed under subject 07 as well.
    assert brute == {("subject 03 / session 2012.07.11-15.33.08 / run 0",
                      "subject 07 / session 2012.07.11-15.33.08 / run 0")}


@needs_ssvep
def test_loader_drops_both_copies_of_a_recording_shared_by_two_subjects(tmp_path):
    trials = ssvep_exo.load(cache_dir=tmp_path)
    report = trials.info["report"]
    duplicate = [p for p in report["problems"] if p["kind"] == "duplicate"]
    assert {p["recording"].split(" / ")[0] for p in duplicate} == {"subject 03", "subject 07"}
    assert all(p["action"] == "every copy dropped" for p in duplicate)
    assert "2012.07.11-15.33.08" not in set(trials.session.tolist())
    # 33 recordings x 32 trials, minus the two copies and six saturated trials.
    assert len(trials) == 33 * 32 - 2 * 32 - 6 == report["trials"]
    assert trials.X.shape[1:] == (8, 512) and trials.sfreq == 128.0
    assert trials.ch_names == ["Oz", "O1", "O2", "PO3", "POz", "PO7", "PO8", "PO4"]
    assert len(trials.subjects) == 12 and trials.sessions("03") == ["2012.07.11-15.25.23"]
    # The cache answers the second call with the same arrays.
    again = ssvep_exo.load(cache_dir=tmp_path)
    assert again.info["cache"]["hit"] and not trials.info["cache"]["hit"]
    # ... and the study's jobs on them are the same jobs (a run that built the cache resumes from it)
    job = Job("pooled-eegnet-s0", run_job, {"kind": "pooled", "trials": trials, "args": (EvalConfig(), 0)})
    assert job.fingerprint("salt") == replace(job, kwargs={**job.kwargs, "trials": again}).fingerprint("salt")
    np.testing.assert_array_equal(again.X, trials.X)
    np.testing.assert_array_equal(again.session, trials.session)
    assert not list(tmp_path.glob(".*.tmp"))


@needs_ssvep
def test_loader_reports_each_kind_of_fault_and_refuses_on_request(recordings):
    good = recordings[:3]  # subject 01's two recordings, subject 02's first
    no_oz = Recording("90", "a", "0", "edited", good[0].raw.copy().load_data(verbose="error").drop_channels(["Oz"]),
                      good[0].events)
    slow = Recording("91", "a", "0", "edited", good[1].raw.copy().load_data(verbose="error").resample(128.0),
                     good[1].events)
    short = Recording("92", "a", "0", "edited", good[2].raw, good[2].events[:-1])
    # A copy of subject 01's first recording, trimmed and rescaled (as a re-export would), filed again.
    raw = good[0].raw.copy().load_data(verbose="error").crop(tmin=10.0)
    raw.apply_function(lambda x: 2.0 * x, verbose="error")
    assert raw.first_samp == 10 * 256  # MNE event samples count from the original start: they stay as they are
    copy = Recording("01", "zz-copy", "0", "edited", raw, good[0].events)
    trials = load_trials([*good, no_oz, slow, short, copy], ssvep_exo.SPEC, FAST)
    kinds = {(p["recording"].split(" / ")[0], p["kind"], p["action"]) for p in trials.info["report"]["problems"]}
    assert ("subject 90", "channels", "recording dropped") in kinds
    assert ("subject 91", "sampling rate", "recording dropped") in kinds
    assert ("subject 92", "events", "recording dropped") in kinds
    assert ("subject 01", "duplicate", "later copies dropped") in kinds
    assert ("subject 01", "duplicate", "kept (first copy)") in kinds
    assert set(trials.subject.tolist()) == {"01", "02"}
    assert "zz-copy" not in set(trials.session.tolist())
    assert len(trials) == 3 * 32
    with pytest.raises(StructlabError, match="faults found"):
        load_trials([*good, short], ssvep_exo.SPEC, FAST, on_problem="raise")


def test_synthetic_trials_are_labelled_synthetic_and_shaped_like_the_recordings():
    config = synthetic.SyntheticConfig(n_subjects=3, sessions_per_subject=2, trials_per_class=2, n_times=128)
    trials = synthetic.generate(config, seed=3)
    assert trials.X.shape == (3 * 2 * 4 * 2, 8, 128) and trials.info["data"]["synthetic"]
    assert trials.subjects == ["01", "02", "03"] and trials.sessions("02") == ["0", "1"]
    np.testing.assert_array_equal(np.bincount(trials.y), [12, 12, 12, 12])
    np.testing.assert_array_equal(synthetic.generate(config, seed=3).X, trials.X)


def test_synthetic_subject_shift_is_low_rank_in_the_spatial_covariance():
    # Independent check of the generator's promise: with sensor noise and session shifts off, two subjects'
    # mixings differ by D = M_1 - M_2 of rank <= 2 * shift_rank, so their channel covariances M_s C_z M_s^T
    # differ by D C M_2^T + M_2 C D^T + D C D^T, of rank <= 4 * shift_rank (here 4 of 8).
    config = synthetic.SyntheticConfig(n_subjects=2, sessions_per_subject=1, trials_per_class=200, n_times=128,
                                       shift_rank=1, shift=3.0, session_shift=0.0, sensor_noise=0.0)
    trials = synthetic.generate(config, seed=0)
    covs = [np.cov(np.concatenate(list(trials.X[trials.subject == s]), axis=1)) for s in ("01", "02")]
    singular = np.linalg.svd(covs[0] - covs[1], compute_uv=False)
    assert singular[4] < 0.05 * singular[0]
    with pytest.raises(ValueError, match="shift_rank=9"):
        synthetic.SyntheticConfig(shift_rank=9)
