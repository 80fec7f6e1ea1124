"""Paired comparisons of two methods across subjects: mean difference, bootstrap CI, Wilcoxon test.

Accuracies are paired by (subject, seed). Seeds of one subject are not independent observations, so
each subject's accuracies are first averaged over seeds; the test and the confidence interval are over
subjects (n = number of subjects). A method is called better only where the two-sided Wilcoxon
signed-rank test gives p < ``alpha`` and the bootstrap confidence interval of the mean difference
excludes zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedComparison:
    """Method ``a`` against method ``b`` on the same subjects (difference = a - b, in accuracy)."""

    a: str
    b: str
    n_subjects: int
    n_pairs: int
    mean_a: float
    mean_b: float
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    subjects_a_better: int
    subjects_b_better: int
    alpha: float = 0.05

    @property
    def verdict(self) -> str:
        """``"a better"``, ``"b better"`` or ``"no significant difference"``."""
        if self.p_value < self.alpha and self.ci_low > 0:
            return f"{self.a} better"
        if self.p_value < self.alpha and self.ci_high < 0:
            return f"{self.b} better"
        return "no significant difference"

    def describe(self) -> str:
        return (
            f"{self.a} - {self.b}: {100 * self.mean_difference:+.1f} points "
            f"(95% CI {100 * self.ci_low:+.1f} to {100 * self.ci_high:+.1f}; Wilcoxon p={self.p_value:.3g}; "
            f"{self.subjects_a_better}/{self.n_subjects} subjects higher, {self.subjects_b_better} lower)"
        )

    def as_record(self) -> dict:
        return {**asdict(self), "verdict": self.verdict, "text": self.describe()}


def paired_comparison(
    a: str,
    b: str,
    accuracy_a: dict[tuple[str, int], float],
    accuracy_b: dict[tuple[str, int], float],
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare accuracies keyed by (subject, seed); only keys present for both methods are paired.

    Raises:
        ValueError: fewer than two subjects are paired.
    """
    keys = sorted(set(accuracy_a) & set(accuracy_b))
    subjects = sorted({s for s, _ in keys})
    if len(subjects) < 2:
        raise ValueError(f"accuracy_a/accuracy_b: {len(subjects)} paired subjects; expected at least 2")
    mean_a = np.array([np.mean([accuracy_a[k] for k in keys if k[0] == s]) for s in subjects])
    mean_b = np.array([np.mean([accuracy_b[k] for k in keys if k[0] == s]) for s in subjects])
    diff = mean_a - mean_b
    if np.allclose(diff, 0):
        p_value, low, high = 1.0, 0.0, 0.0
    else:
        p_value = float(stats.wilcoxon(diff, zero_method="zsplit", alternative="two-sided").pvalue)
        boot = stats.bootstrap(
            (diff,), np.mean, confidence_level=0.95, n_resamples=n_resamples, method="percentile",
            random_state=np.random.default_rng(seed),
        )
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return PairedComparison(
        a, b, len(subjects), len(keys), float(mean_a.mean()), float(mean_b.mean()), float(diff.mean()), low, high,
        p_value, int((diff > 0).sum()), int((diff < 0).sum()), alpha,
    )
