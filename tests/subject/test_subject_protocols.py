"""Protocol splits never leak a subject or session where they must not; paired statistics; re-centring."""

from __future__ import annotations

import numpy as np
import pytest

from structlab.subject import protocols
from structlab.subject.stats import paired_comparison
from structlab.subject.trials import Trials


def _trials(seed: int) -> Trials:
    """Random metadata: 5-8 subjects with 1-4 sessions of 2-6 trials per class, in shuffled order."""
    rng = np.random.default_rng(seed)
    subject, session, y = [], [], []
    for s in range(rng.integers(5, 9)):
        for e in range(rng.integers(1, 5)):
            for c in range(4):
                n = rng.integers(2, 7)
                subject += [f"s{s}"] * n
                session += [f"2020.01.0{e + 1}"] * n
                y += [c] * n
    order = rng.permutation(len(y))
    n = len(y)
    return Trials(np.zeros((n, 2, 3), dtype=np.float32), np.array(y)[order], np.array(subject)[order],
                  np.array(session)[order], np.zeros(n, dtype=int).astype(str), ["a", "b"], 1.0,
                  ["c0", "c1", "c2", "c3"])


def _pairs(trials: Trials, idx: np.ndarray) -> set[tuple[str, str]]:
    return set(zip(trials.subject[idx].tolist(), trials.session[idx].tolist(), strict=True))


@pytest.mark.parametrize("seed", range(6))
def test_pooled_cross_session_never_shares_a_session_and_trains_on_first_sessions(seed):
    trials = _trials(seed)
    (split,) = protocols.get("pooled-cross-session").splits(trials)
    assert not _pairs(trials, split.train) & _pairs(trials, split.test)
    assert len(split.train) + len(split.test) == len(trials)
    for s in trials.subjects:
        sessions = trials.sessions(s)
        assert _pairs(trials, split.train) & {(s, e) for e in sessions} == {(s, sessions[0])}
        assert {(s, e) for e in sessions[1:]} <= _pairs(trials, split.test)


@pytest.mark.parametrize("seed", range(6))
def test_loso_never_trains_on_the_held_out_subject(seed):
    trials = _trials(seed)
    splits = protocols.get("loso-zero-shot").splits(trials)
    assert [sp.held_out for sp in splits] == [s for s in trials.subjects if len(trials.sessions(s)) >= 2]
    for split in splits:
        assert split.held_out not in set(trials.subject[split.train].tolist())
        assert set(trials.subject[split.test].tolist()) == {split.held_out}
        assert trials.sessions(split.held_out)[0] not in set(trials.session[split.test].tolist())
        assert len(split.calibration) == 0


@pytest.mark.parametrize("seed", range(6))
def test_calibration_trials_come_from_the_first_session_balanced_and_nested(seed):
    trials = _trials(seed)
    by_k = {k: {sp.held_out: sp for sp in protocols.get(f"loso-calibration-{k}").splits(trials, seed=seed)}
            for k in protocols.CALIBRATION_K}
    for k, splits in by_k.items():
        for s, split in splits.items():
            cal = split.calibration
            first = trials.sessions(s)[0]
            assert set(trials.subject[cal].tolist()) == {s} and set(trials.session[cal].tolist()) == {first}
            assert not set(cal) & set(split.test) and not set(cal) & set(split.train)
            available = ((trials.subject == s) & (trials.session == first)).sum()
            assert len(cal) == min(k, available)
            counts = np.bincount(trials.y[cal], minlength=4)
            pool = np.bincount(trials.y[(trials.subject == s) & (trials.session == first)], minlength=4)
            # balanced: no class short of its share unless the session has no more of it
            assert all(c >= min(p, len(cal) // 4) for c, p in zip(counts, pool, strict=True))
    for small, large in zip(protocols.CALIBRATION_K, protocols.CALIBRATION_K[1:], strict=False):
        for s in by_k[small]:
            assert set(by_k[small][s].calibration) <= set(by_k[large][s].calibration)


def test_protocol_names_are_parsed_and_checked():
    assert protocols.get("loso-calibration-8").k == 8
    with pytest.raises(ValueError, match="unknown protocol"):
        protocols.get("within-session")
    with pytest.raises(ValueError, match="k=0"):
        protocols.LosoCalibration(0)


def test_paired_comparison_matches_exact_wilcoxon_and_averages_seeds_first():
    # Six subjects, all better under a by 0.1 to 0.6 on average over two seeds. Exact two-sided Wilcoxon
    # signed-rank p for n=6 with every difference positive is 2 / 2^6 = 0.03125.
    a = {(f"s{i}", seed): 0.5 + 0.1 * (i + 1) + (0.02 if seed else -0.02) for i in range(6) for seed in (0, 1)}
    b = {(f"s{i}", seed): 0.5 for i in range(6) for seed in (0, 1)}
    c = paired_comparison("a", "b", a, b)
    assert c.n_subjects == 6 and c.n_pairs == 12
    assert c.p_value == pytest.approx(0.03125)
    assert c.mean_difference == pytest.approx(0.35)
    assert 0.1 < c.ci_low < 0.35 < c.ci_high < 0.6
    assert c.verdict == "a better" and c.subjects_a_better == 6
    same = paired_comparison("a", "b", b, b)
    assert same.verdict == "no significant difference" and same.p_value == 1.0
    with pytest.raises(ValueError, match="paired subjects"):
        paired_comparison("a", "b", {("s0", 0): 1.0}, {("s0", 0): 0.0})


def test_recentred_covariances_have_identity_riemannian_mean():
    from pyriemann.utils.mean import mean_riemann

    from structlab.subject import riemann

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3, 256)) * np.array([1.0, 2.0, 0.5])[:, None]
    covs = riemann.filter_bank_covariances(X, 128.0)
    assert covs.shape == (20, 9, 9)
    np.testing.assert_allclose(mean_riemann(riemann.recentre(covs, covs)), np.eye(9), atol=1e-6)
