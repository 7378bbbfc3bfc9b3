"""Statistics the studies report: paired Wilcoxon tests and mean +- std over seeds.

Study 4 compares two models on the *same* images (SHAP attributions of TL
and TL+KD), so its tests are paired and non-parametric: the Wilcoxon
signed-rank test of scipy, two-sided. The p-value method is chosen
explicitly and returned with the result, so a table always says whether
a p-value is exact or a normal approximation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

__all__ = ["WilcoxonResult", "paired_wilcoxon", "summarize"]

#: Largest sample (non-zero differences) for which the exact null distribution is used.
EXACT_MAX_N = 50
#: Largest sample with ties for which all 2^n sign flips are enumerated.
PERMUTATION_MAX_N = 13


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
