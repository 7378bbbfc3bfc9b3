"""Study 4's analyses of trained heads: the per-class gain table (H1), epochs to a threshold (H3),
and the foreground / background SHAP comparison with its Wilcoxon tests and its scale-free form per seed (H2)."""

from __future__ import annotations

import numpy as np

from .attribution_regions import foreground_share, region_table
from .stats import paired_wilcoxon

__all__ = ["per_class_gain", "first_epoch_reaching", "foreground_analysis", "foreground_shares_per_seed"]


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


def foreground_shares_per_seed(values: dict, masks) -> list[dict]:
    """H2, scale-free: a row per seed of TL's and TL+KD's mean foreground share (%) of positive attribution.

    `values` maps each seed to {"TL": ..., "TL+KD": ...} attributions, (N, C, H, W) or (N, H, W), of the
    images with a mask; `masks` is (N, H, W). Shares are averaged over the images where both models have
    positive attribution; each row also holds the gain (TL+KD - TL), the images' paired Wilcoxon p and the
    median (A/B)/(C/D) (`foreground_analysis`). Rescaling a model's attributions changes none of them.
    """
    rows = []
    for seed, by_model in values.items():
        share = {name: foreground_share(by_model[name], masks) for name in ("TL", "TL+KD")}
        columns, _ = foreground_analysis(*(region_table(by_model[name], masks) for name in ("TL", "TL+KD")))
        both = ~np.isnan(share["TL"]) & ~np.isnan(share["TL+KD"])
        tl, kd = share["TL"][both], share["TL+KD"][both]
        rows.append({"seed": seed, "TL share": 100 * float(np.mean(tl)), "TL+KD share": 100 * float(np.mean(kd)),
                     "gain (TL+KD - TL)": 100 * float(np.mean(kd - tl)),
                     "Wilcoxon p (images)": paired_wilcoxon(kd, tl).pvalue,
                     "median (A/B)/(C/D)": float(np.nanmedian(columns["(A/B)/(C/D)"])), "images": int(both.sum())})
    return rows
