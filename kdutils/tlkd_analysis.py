"""Study 4's analyses of trained heads: the per-class gain table (H1), epochs to a threshold (H3),
and the foreground / background SHAP comparison with its Wilcoxon tests (H2)."""

from __future__ import annotations

import numpy as np

from .stats import paired_wilcoxon

__all__ = ["per_class_gain", "first_epoch_reaching", "foreground_analysis"]


def per_class_gain(y_true, pred_tl, pred_kd, class_names) -> list[dict]:
    """The thesis's per-class table: N, TP1 (TL), TP2 (TL+KD), TP2 - TP1, (TP2 - TP1) / (N - TP1).

    The error decrement is the share of TL's misses that TL+KD gets right
    (negative when TL+KD loses more than it gains); None when TL missed none.
    """
    y, a, b = (np.asarray(v) for v in (y_true, pred_tl, pred_kd))
    rows = []
    for c, name in enumerate(class_names):
        in_c = y == c
        n, tp1, tp2 = int(in_c.sum()), int((a[in_c] == c).sum()), int((b[in_c] == c).sum())
        rows.append({"class": name, "N": n, "TP1": tp1, "TP2": tp2, "TP2-TP1": tp2 - tp1,
                     "error_decrement": (tp2 - tp1) / (n - tp1) if n > tp1 else None})
    return rows


def first_epoch_reaching(curve, threshold: float) -> int | None:
    """The first (1-based) epoch whose value is >= threshold, or None if never."""
    return next((i + 1 for i, v in enumerate(curve) if v >= threshold), None)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b != 0)
    return out


def foreground_analysis(tl: dict, kd: dict) -> tuple[dict, dict]:
    """H2 from two `attribution_regions.region_table`s of the same images (TL and TL+KD).

    Returns (per-image columns: A, B, C, D, A/B, C/D, (A/B)/(C/D)) and the
    paired two-sided Wilcoxon tests STUDIES.md lists (`stats.paired_wilcoxon`).
    A ratio with a zero denominator is NaN.
    """
    a, c, b, d = tl["fg_diff"], tl["bg_diff"], kd["fg_diff"], kd["bg_diff"]
    ab, cd = _ratio(a, b), _ratio(c, d)
    columns = {"A": a, "B": b, "C": c, "D": d, "A/B": ab, "C/D": cd, "(A/B)/(C/D)": _ratio(ab, cd)}
    tests = {
        "TL: foreground diff vs 0": paired_wilcoxon(a),
        "TL+KD: foreground diff vs 0": paired_wilcoxon(b),
        "foreground diff: TL (A) vs TL+KD (B)": paired_wilcoxon(a, b),
        "background diff: TL (C) vs TL+KD (D)": paired_wilcoxon(c, d),
        "background pos: TL vs TL+KD": paired_wilcoxon(tl["bg_pos"], kd["bg_pos"]),
        "foreground |neg|: TL vs TL+KD": paired_wilcoxon(np.abs(tl["fg_neg"]), np.abs(kd["fg_neg"])),
    }
    return columns, tests
