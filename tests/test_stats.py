"""Paired Wilcoxon tests against hand-computed exact p-values; mean +- std."""

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from kdutils.stats import paired_wilcoxon, seed_table, summarize


def exact_two_sided_p(differences) -> float:
    """Brute force: the share of the 2^n sign assignments of the ranks at least as extreme."""
    d = np.asarray(differences, dtype=float)
    ranks = sps.rankdata(np.abs(d))
    observed = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    total = ranks.sum()
    extreme = 0
    for signs in itertools.product((0, 1), repeat=len(d)):
        w_plus = float(np.dot(signs, ranks))
        extreme += min(w_plus, total - w_plus) <= observed + 1e-9
    return extreme / 2 ** len(d)


def test_five_positive_differences_give_the_textbook_exact_p():
    # All five differences positive: W- = 0; P(W+ = 15) = 1/32, two-sided 2/32 = 0.0625.
    res = paired_wilcoxon([1.0, 2.0, 3.0, 4.0, 5.0])
    assert res.pvalue == pytest.approx(0.0625)
    assert res.statistic == 0.0 and res.method == "exact" and res.n == 5 and res.n_zero == 0
    assert res.median_difference == 3.0


def test_exact_p_matches_enumeration_and_pairs_are_differenced():
    x = np.array([2.0, 1.5, 9.0, 4.25, 7.0, 6.5, 0.5, 10.0])
    y = np.array([1.0, 3.5, 6.0, 0.25, 2.0, 0.5, 7.5, 2.0])  # differences 1, -2, 3, 4, 5, 6, -7, 8
    res = paired_wilcoxon(x, y)
    assert res.method == "exact"
    assert res.statistic == pytest.approx(9.0)  # negative ranks 2 + 7
    assert res.pvalue == pytest.approx(exact_two_sided_p(x - y))
    assert paired_wilcoxon(x - y).pvalue == pytest.approx(res.pvalue)
    assert paired_wilcoxon(y, x).pvalue == pytest.approx(res.pvalue)  # two-sided: symmetric


def test_zeros_are_dropped_and_counted():
    res = paired_wilcoxon([1.0, 2.0, 0.0, 3.0, 4.0, 5.0, 0.0])
    assert res.n == 5 and res.n_zero == 2
    assert res.pvalue == pytest.approx(0.0625) and res.method == "exact"


def test_ties_use_an_exhaustive_permutation_test_with_the_method_stated():
    d = [1.0, 1.0, -2.0, 3.0, 3.0, 4.0]
    res = paired_wilcoxon(d)
    assert res.method == "exact permutation (ties)"
    assert res.pvalue == pytest.approx(exact_two_sided_p(d))


def test_large_samples_use_the_normal_approximation():
    d = np.random.default_rng(0).normal(0.4, 1.0, size=80)
    res = paired_wilcoxon(d)
    assert res.method == "normal approximation" and res.n == 80
    ref = sps.wilcoxon(d, method="asymptotic", correction=False)
    assert res.pvalue == pytest.approx(ref.pvalue) and res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue < 0.05


def test_degenerate_and_bad_inputs():
    res = paired_wilcoxon([0.0, 0.0, 0.0])
    assert res.pvalue == 1.0 and res.n == 0 and res.method == "all differences zero"
    with pytest.raises(ValueError, match="equal length"):
        paired_wilcoxon([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        paired_wilcoxon([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        paired_wilcoxon([])
    assert set(paired_wilcoxon([1, 2, 3]).to_dict()) == {"statistic", "pvalue", "method", "n", "n_zero",
                                                         "median_difference"}


def test_summarize_uses_the_sample_standard_deviation():
    assert summarize([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert summarize([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    with pytest.raises(ValueError):
        summarize([])


def test_seed_table_summarizes_each_group_in_order_of_appearance():
    import pandas as pd

    runs = pd.DataFrame({"model": ["b", "a", "b", "b", "a", "c"], "k": [1, 1, 1, 1, 2, 1],
                         "top1": [1.0, 4.0, 2.0, 3.0, 6.0, np.nan]})
    by_model = seed_table(runs, "model", "top1")
    assert list(by_model.index) == ["b", "a", "c"] and by_model.index.name == "model"
    assert by_model.loc["b"].to_dict() == {"mean": 2.0, "std": 1.0, "n": 3}  # sample std, as `summarize`
    assert by_model.loc["a", "std"] == pytest.approx(np.std([4.0, 6.0], ddof=1))
    assert np.isnan(by_model.loc["c", "mean"]) and by_model.loc["c", "n"] == 0  # nothing measured
    by_both = seed_table(runs, ["model", "k"], "top1")
    assert list(by_both.index) == [("b", 1), ("a", 1), ("a", 2), ("c", 1)]
    assert by_both.loc[("a", 2)].to_dict() == {"mean": 6.0, "std": 0.0, "n": 1}
