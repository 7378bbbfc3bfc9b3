"""Study 1's claims, judged from its measured rows: one function, so the notebook and the tests run the same rules.

Every claim is a paired difference per seed (`session.claim` -> `stats.paired_verdict`): a seed is one
replicate of every head and student, so the grid's cells of one seed (data sets, image encoders, text
encoders) are averaged within the seed and never counted as replicates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import session

__all__ = ["THESIS_PLUS3", "per_seed_gain", "study_claims"]

THESIS_PLUS3 = "about +3 points (thesis text; no results table)"


def per_seed_gain(records: pd.DataFrame, seeds, text_encoders, better: str, worse: str, *,
                  encoder: str | None = None, text_from_better: bool = True) -> np.ndarray | None:
    """Per seed: the mean over the grid's cells (data set, image encoder, text encoder) of `better` - `worse` top-1.

    `better` rows are read per text encoder (`text_from_better`) or from the no-text rows ("-"); `worse` is a
    no-text row of the same data set and image encoder (or of the same text encoder when it has one).
    None when some seed has no such pair (not measured here)."""
    out = []
    for seed in seeds:
        g = records[(records.seed == seed) & ((records.image_encoder == encoder) if encoder else True)]
        diffs = []
        for _, cell in g.groupby(["dataset", "image_encoder"]):
            for tname in (text_encoders if text_from_better else ["-"]):
                hi = cell[(cell.model == better) & (cell.text_encoder == tname)]["top1"]
                lo = cell[(cell.model == worse) & cell.text_encoder.isin(["-", tname])]["top1"]
                if not lo.empty and not hi.empty:
                    diffs.append(hi.iloc[0] - lo.iloc[0])
        if not diffs:
            return None
        out.append(float(np.mean(diffs)))
    return np.array(out)


def _paired(frame: pd.DataFrame, seeds, index: list[str], column: str, better, worse) -> np.ndarray | None:
    """Per seed, `column` of row `better` minus row `worse` (rows named by the `index` columns but the seed)."""
    if frame.empty:
        return None
    values = frame.set_index(["seed", *index])[column]
    key = (lambda s, k: (s, *k)) if isinstance(better, tuple) else (lambda s, k: (s, k))
    return np.array([values[key(s, better)] - values[key(s, worse)] for s in seeds], dtype=float)


def study_claims(records, generations, few_shot, retrieval, mean_teacher, cfg, *, measured: bool) -> list[dict]:
    """The thesis's claims (and draft 002's) as ledger rows, from the notebook's measured rows.

    records: one row per (seed, dataset, image_encoder, text_encoder, model) with `top1`; generations: rows
    (seed, chain, generation, top1); few_shot: rows (seed, k, "student with text", "student without text");
    retrieval and mean_teacher: rows (seed, model, i2t_r10, ...). The gains are computed at every profile,
    so the rules always run; `measured=False` (tiny, dry runs) reports them as not measured.
    """
    df, seeds = pd.DataFrame(records), list(cfg.seeds)
    E, T, data0 = cfg.s1_ablation_encoder, cfg.s1_ablation_text, cfg.s1_datasets[0]

    def gains(g):
        return g if measured and g is not None else None

    def grid(better, worse, **kw):
        return per_seed_gain(df, seeds, cfg.s1_text_encoders, better, worse, **kw)

    out = []
    for e in cfg.s1_student_encoders:
        out.append(session.claim(
            f"Self-distillation with text beats self-distillation without text ({e} students)", THESIS_PLUS3,
            gains=gains(grid("student with text", "student without text", encoder=e)), paper_size=3.0, unit=" pts",
            note="with text - without text, test top-1, per seed (mean over data sets and student text encoders)"))
        out.append(session.claim(
            f"Self-distillation with text beats the same student trained alone ({e} students)",
            "implied (a better student)", gains=gains(grid("student with text", "student alone", encoder=e)),
            unit=" pts"))
    out.append(session.claim(
        "The text-queried head is a better classifier than a linear head on the same frozen encoder (label-free)",
        "hypothesis (no numbers)", gains=gains(grid("thesis head, test, label-free", "teacher without text")),
        unit=" pts"))
    out.append(session.claim(
        "Self-distillation without text beats the same student trained alone (Born-Again premise)",
        "premise (no numbers)", gains=gains(grid("student without text", "student alone", text_from_better=False)),
        unit=" pts"))
    cell = df[(df.dataset == data0) & (df.image_encoder == E)]
    out.append(session.claim(
        f"Text without the label in the query (the label-free head) teaches a better student than no text "
        f"({E} + {T} students)", "not in the thesis: the fair form of its +3 claim",
        gains=gains(_paired(cell[cell.text_encoder.isin(["-", T])], seeds, ["model"], "top1",
                            "student of the label-free head", "student without text")),
        unit=" pts", note="student of the label-free head - student without text, per seed"))
    captions = cfg.s1_captions
    out.append(session.claim(
        f"Detailed captions as queries add about +3 points over class prompts ({E} + {T} students)", THESIS_PLUS3,
        gains=gains(_paired(cell[cell.text_encoder == T], seeds, ["model"], "top1", "student of the caption head",
                            "student with text") if captions else None),
        paper_size=3.0, unit=" pts", note="student of the caption head - student with text, per seed"))
    gens = pd.DataFrame(generations)
    out.append(session.claim(
        "A second generation of self-distillation improves on the first (with text)", "Born-Again premise (no numbers)",
        gains=gains(_paired(gens, seeds, ["chain", "generation"], "top1", ("with text", 2), ("with text", 1))
                    if cfg.s1_generations >= 2 else None), unit=" pts"))
    few = pd.DataFrame(few_shot)
    k_min = min(cfg.s1_few_shot_k)
    few_k = few[few.k == k_min].set_index("seed").loc[seeds]
    out.append(session.claim(
        f"With few labels ({k_min} per class) the text teacher's student beats the no-text one",
        "hypothesis (no numbers)",
        gains=gains((few_k["student with text"] - few_k["student without text"]).to_numpy(dtype=float)), unit=" pts",
        note="student of the label-free head - student of the linear head, per seed"))
    out.append(session.claim(
        "Self-distillation through text makes the student's features easier to align with text (image->text R@10)",
        "hypothesis (no numbers)",
        gains=gains(_paired(pd.DataFrame(retrieval), seeds, ["model"], "i2t_r10", "student with text",
                            "student without text") if captions else None),
        unit=" pts", note="with text - without text, per seed"))
    out.append(session.claim(
        "Draft 002: a mean teacher on unpaired images improves retrieval over the pairs alone (image->text R@10)",
        "draft: no method details or results",
        gains=gains(_paired(pd.DataFrame(mean_teacher), seeds, ["model"], "i2t_r10", "mean teacher (+ unpaired images)",
                            "fine-tuned on the pairs alone") if captions else None),
        unit=" pts", note="mean teacher - pairs alone, per seed"))
    return out
