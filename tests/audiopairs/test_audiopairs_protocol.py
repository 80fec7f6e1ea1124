"""The protocol: groups join files that share a recording, uploader or source; folds never split a group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from structlab import data
from structlab.audiopairs.protocol import balanced_negatives, check_disjoint, grouped_folds, recording_groups
from structlab.audiopairs.recordings import Recording, drop_duplicates, from_manifest

AUDIO = data.find("audio")
needs_audio = pytest.mark.skipif(AUDIO is None, reason="shared audio corpus not found (set STRUCTLAB_DATA)")


def rec(name: str, sha: str, uploader: str = "", ids: tuple[str, ...] = (), source: str = "pkg") -> Recording:
    return Recording(Path(name), sha * 64, name, "dog", "", "none", source, uploader, ids)


def test_groups_follow_chains_of_shared_keys():
    recs = [
        rec("a", "1", ids=("10",)),
        rec("b", "2", uploader="ann", ids=("10",)),  # same freesound recording as a
        rec("c", "3", uploader="Ann"),  # same uploader as b (case-insensitive)
        rec("d", "4", uploader="bob;cy"),
        rec("e", "5", uploader="cy", source="other"),  # shares one of d's uploaders
        rec("f", "6", source="other"),
    ]
    assert recording_groups(recs, "recording").tolist() == [0, 0, 1, 2, 3, 4]
    assert recording_groups(recs, "uploader").tolist() == [0, 0, 0, 1, 1, 2]
    assert recording_groups(recs, "source").tolist() == [0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="grouping='person'"):
        recording_groups(recs, "person")


@needs_audio
def test_duplicates_in_the_shared_corpus_are_removed_before_splitting():
    recs = from_manifest(AUDIO.path)
    kept, removed = drop_duplicates(recs)
    names = {(d.removed.path.name, d.kept.path.name) for d in removed}
    assert ("57_heavy-wind.flac", "52_wind.flac") in names  # identical bytes, different labels
    assert len({r.sha256 for r in kept}) == len(kept) == len(recs) - len(removed)
    badger = next(r for r in recs if r.path.name == "animals_mammals_badger.ogg")
    beaver = next(r for r in recs if r.path.name == "animals_mammals_rodents_beaver.ogg")
    kept, removed = drop_duplicates(recs, same_audio=[(badger.sha256, beaver.sha256)])
    assert any(d.removed == beaver and d.reason == "same audio" for d in removed)


@needs_audio
@pytest.mark.parametrize("grouping", ["recording", "uploader", "uploader-or-source", "source"])
def test_folds_never_put_one_recording_uploader_or_source_file_in_train_and_test(grouping):
    recs, _ = drop_duplicates(from_manifest(AUDIO.path))
    groups = recording_groups(recs, grouping)
    labels = np.array([r.kind for r in recs])
    for seed in range(3):
        folds = grouped_folds(labels, groups, n_splits=5, seed=seed)
        check_disjoint(folds, groups)
        for train, test in folds:
            # Brute force, independent of the union-find: no key of a training file is a key of a test file.
            def keys(idx):
                out = set()
                for i in idx:
                    r = recs[i]
                    out |= {r.sha256, r.path.as_posix()} | {f"fs:{x}" for x in r.freesound_ids}
                    if grouping != "recording":
                        out |= {f"up:{u.casefold()}" for u in r.uploaders}
                    if grouping == "source" or (grouping == "uploader-or-source" and not r.uploaders):
                        out.add(r.source)
                return out

            assert not keys(train) & keys(test)
            assert len(set(train) | set(test)) == len(recs)
        assert grouped_folds(labels, groups, n_splits=5, seed=seed)[0][1].tolist() == folds[0][1].tolist()


def test_check_disjoint_catches_a_leak_and_folds_reject_unsplittable_classes():
    with pytest.raises(AssertionError, match="groups"):
        check_disjoint([(np.array([0, 1]), np.array([2]))], [0, 1, 1])
    with pytest.raises(ValueError, match="fewer than 2 groups"):
        grouped_folds(["a", "a", "b", "b"], [0, 0, 1, 2])


def test_balanced_negatives_are_balanced_disjoint_and_spread_over_groups():
    positive = np.zeros(40, dtype=bool)
    positive[:4] = True
    groups = np.repeat(np.arange(10), 4)  # 10 groups of 4 files
    for seed in range(5):
        neg = balanced_negatives(positive, ~positive, groups, np.random.default_rng(seed))
        assert len(neg) == 4 and not positive[neg].any()
        assert len(set(groups[neg])) == 4  # one per group while unused groups last
    with pytest.raises(ValueError, match="candidates"):
        balanced_negatives(positive, positive, groups, np.random.default_rng(0))
