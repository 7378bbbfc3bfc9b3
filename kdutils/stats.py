"""Statistics the studies report: verdicts over seeds, paired Wilcoxon tests, mean +- std.

Seeds are replicates. A claim "A beats B" is judged by `paired_verdict` on
the per-seed differences A - B with a t-interval over seeds: one rule and one
vocabulary (`VERDICTS`) for every study, invariant to a positive rescaling of
the differences (a rescaled model is the same model).

Study 4 compares two models on the *same* images (SHAP attributions of TL
and TL+KD), so its tests are paired and non-parametric: the Wilcoxon
signed-rank test of scipy, two-sided. The p-value method is chosen
explicitly and returned with the result, so a table always says whether
a p-value is exact or a normal approximation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["VERDICTS", "REPRODUCED", "NOT_REPRODUCED", "WITHIN_NOISE", "NOT_MEASURED", "PairedVerdict",
           "paired_verdict", "WilcoxonResult", "paired_wilcoxon", "summarize", "seed_table"]

#: Largest sample (non-zero differences) for which the exact null distribution is used.
EXACT_MAX_N = 50
#: Largest sample with ties for which all 2^n sign flips are enumerated.
PERMUTATION_MAX_N = 13


#: The one vocabulary of verdicts.
VERDICTS = ("reproduced", "not reproduced", "within noise", "not measured at this profile")
REPRODUCED, NOT_REPRODUCED, WITHIN_NOISE, NOT_MEASURED = VERDICTS


@dataclass(frozen=True)
class PairedVerdict:
    """The verdict on "gain > 0" from per-seed gains, with its t-interval over seeds.

    `name` is one of `VERDICTS`; `low`/`high` bound the mean gain at
    `confidence` (infinite with one seed, or with seeds that all gave the
    same gain: then the seeds did not vary the measurement, and no spread
    was measured to judge it by); `std` is the sample standard deviation
    (ddof=1).
    """

    name: str
    mean: float
    std: float
    n: int
    low: float
    high: float
    confidence: float

    def contains(self, value: float) -> bool:
        """Whether `value` (a paper's size, say) lies inside the interval."""
        return bool(self.low <= value <= self.high)

    def gains_text(self, unit: str = "") -> str:
        """The gains as the claims and the findings table print them: mean +- std (n)."""
        return f"{self.mean:+.2f} +- {self.std:.2f}{unit} (n = {self.n})"

    def interval_text(self) -> str:
        """The interval as the claims and the findings table print it, or why there is none."""
        if math.isfinite(self.low):
            return f"[{self.low:+.2f}, {self.high:+.2f}]"
        return "(one seed: no interval)" if self.n == 1 else "(no spread over seeds: no interval)"


def paired_verdict(gains, confidence: float = 0.95) -> PairedVerdict:
    """Judge the claim "gain > 0" from per-seed paired gains (e.g. student with KD minus without, same seed).

    Reproduced when the two-sided t-interval of the mean gain lies above zero, not reproduced when it
    lies below, within noise when it contains zero. A single seed, or seeds that all gave exactly the
    same gain, is one replicate: within noise. Identical gains say the measurement's noise lies below
    its resolution (whole epochs, one test image), not that it is zero; a zero-width interval would
    call any such gain a finding.

    >>> paired_verdict([1.2, 0.8, 1.0]).name
    'reproduced'
    >>> paired_verdict([0.5, -0.4, 0.1]).name
    'within noise'
    """
    g = np.asarray(gains, dtype=np.float64).ravel()
    if g.size == 0:
        raise ValueError("paired_verdict needs at least one per-seed gain.")
    if not np.isfinite(g).all():
        raise ValueError(f"paired_verdict got NaN or infinite gains {g.tolist()}: fix the measurement first.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    mean = float(g.mean())
    if np.ptp(g) <= 1e-9 * np.abs(g).max():  # one seed, or identical gains (their float mean may not be exact)
        return PairedVerdict(WITHIN_NOISE, mean, 0.0, int(g.size), -math.inf, math.inf, confidence)
    std = float(g.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, df=g.size - 1)) * std / math.sqrt(g.size)
    low, high = mean - half, mean + half
    name = REPRODUCED if low > 0 else NOT_REPRODUCED if high < 0 else WITHIN_NOISE
    return PairedVerdict(name, mean, std, int(g.size), low, high, confidence)


@dataclass(frozen=True)
class WilcoxonResult:
    """Outcome of a two-sided paired Wilcoxon signed-rank test.

    `statistic` is scipy's: the smaller of the positive- and negative-rank
    sums. `n` counts the non-zero differences (zeros are dropped, Wilcoxon's
    convention), `n_zero` the dropped ones; `median_difference` is the median
    of x - y over all pairs (its sign says which side is larger).
    """

    statistic: float
    pvalue: float
    method: str
    n: int
    n_zero: int
    median_difference: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired_wilcoxon(x, y=None) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of x against y (or of x against 0 when y is None).

    Method: zero differences are dropped; with at most 50 non-zero
    differences and no tied |differences| the exact null distribution is
    used ("exact"); with ties and at most 13 differences every sign flip is
    enumerated ("exact permutation (ties)"); otherwise the normal
    approximation with scipy's tie correction ("normal approximation").
    All differences zero gives p = 1 ("all differences zero").
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.zeros_like(x) if y is None else np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired_wilcoxon needs paired samples of equal length, got {x.size} and {y.size}.")
    if x.size == 0:
        raise ValueError("paired_wilcoxon needs at least one pair.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired_wilcoxon got NaN or infinite values.")
    d = x - y
    nonzero = d[d != 0]
    n, n_zero, median = int(nonzero.size), int(d.size - nonzero.size), float(np.median(d))
    if n == 0:
        return WilcoxonResult(0.0, 1.0, "all differences zero", 0, n_zero, median)
    ties = np.unique(np.abs(nonzero)).size < n
    if not ties and n <= EXACT_MAX_N:
        method, label = "exact", "exact"
    elif ties and n <= PERMUTATION_MAX_N:
        method, label = sps.PermutationMethod(n_resamples=2 ** n), "exact permutation (ties)"
    else:
        method, label = "asymptotic", "normal approximation"
    res = sps.wilcoxon(nonzero, zero_method="wilcox", correction=False, alternative="two-sided",
                       method=method)
    return WilcoxonResult(float(res.statistic), float(res.pvalue), label, n, n_zero, median)


def summarize(values) -> dict:
    """Mean, sample standard deviation (ddof=1; 0 for one value), and n of a list of numbers."""
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("summarize needs at least one value.")
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "n": int(a.size)}


def seed_table(frame: pd.DataFrame, by, column: str) -> pd.DataFrame:
    """`summarize` of `column` per group of `by` (rows in order of first appearance): a table over seeds.

    Columns mean, std (ddof=1; 0 for one value) and n; missing values are skipped, and a group with
    none gets NaN and n = 0.
    """
    rows, keys = [], []
    for key, values in frame.groupby(by, sort=False)[column]:
        present = values.dropna()
        rows.append(summarize(present) if len(present) else {"mean": np.nan, "std": np.nan, "n": 0})
        keys.append(key)
    names = [by] if isinstance(by, str) else list(by)
    index = (pd.MultiIndex.from_tuples(keys, names=names) if len(names) > 1
             else pd.Index([k[0] if isinstance(k, tuple) else k for k in keys], name=names[0]))
    return pd.DataFrame(rows, index=index, columns=["mean", "std", "n"])
