"""`python -m kdutils bench tlkd`: study 4: cached-feature head training vs the plain loop."""

from __future__ import annotations

import time
from dataclasses import replace

from torch import nn

from kdutils import metrics
from kdutils.tlkd import HeadParams, train_head
from kdutils.tlkd_backbones import FrozenBackbones, load_encoder
from kdutils.tlkd_data import load_data
from kdutils.frozen import FixedViews
from kdutils.tlkd_features import HeadInputs, frozen_features, head_logits


def run(profile: str = "small", epochs: int = 3, seed: int = 0) -> dict:
    """Train one TL+KD head both ways (cached views vs backbones at every step); print the ratios.

    Same data, seed, views and recipe (with `epochs` epochs and no early
    stopping); reports the wall time of each path, the one-off cost of
    computing the cached features (done here, not read from disk), the
    speed-ups and how far the two heads' test predictions differ.
    """
    from kdutils.profiles import load_profile

    cfg = load_profile(profile, progress=False)
    data = load_data(cfg)
    backbones = FrozenBackbones.of(cfg)
    student, _ = load_encoder(cfg.student_arch, backbones, weights=cfg.s4_student_weights,
                              input_size=cfg.s4_student_input_size)
    teacher, _ = load_encoder(cfg.teacher_arch, backbones, weights=cfg.s4_teacher_weights,
                              input_size=cfg.s4_teacher_input_size, teacher=True)
    hp = HeadParams.of(cfg)
    hp = replace(hp, recipe=replace(hp.recipe, epochs=epochs, patience=None, restore_best=False))
    n_cls = data.num_classes
    train, val, test = (data.splits[role] for role in ("train", "val", "test"))
    flips, plain = FixedViews.mirrored(len(train)), FixedViews.plain
    t0 = time.perf_counter()
    s_tr = frozen_features(student, train, flips, use_cache=False)
    s_va = frozen_features(student, val, plain(len(val)), use_cache=False)
    s_te = frozen_features(student, test, plain(len(test)), use_cache=False)
    t_tr = frozen_features(teacher, train, flips, use_cache=False)
    t_va = frozen_features(teacher, val, plain(len(val)), use_cache=False)
    t_extract = time.perf_counter() - t0
    y, yv, yt = train.labels, val.labels, test.labels
    common = dict(num_classes=n_cls, seed=seed)
    teacher_head = train_head(HeadInputs.cached(t_tr), y, HeadInputs.cached(t_va), yv, hp, **common).head
    kd = replace(hp, alpha=cfg.s4_alpha)
    distill = HeadInputs.cached(s_tr).with_teacher(teacher_head, t_tr)
    cached_run = train_head(distill, y, HeadInputs.cached(s_va), yv, kd, **common)
    teacher_net = nn.Sequential(teacher, teacher_head).eval()
    plain_run = train_head(HeadInputs.live(student, train, flips, teacher_net), y,
                           HeadInputs.live(student, val, plain(len(val))), yv, kd, **common)
    logits_c = head_logits(cached_run.head, HeadInputs.cached(s_te))
    logits_p = head_logits(plain_run.head, HeadInputs.live(student, test, plain(len(test))))
    saved_per_epoch = (plain_run.seconds - cached_run.seconds) / epochs
    result = {
        "profile": profile, "epochs": epochs, "train_images": len(y),
        "plain_s": plain_run.seconds, "cached_s": cached_run.seconds, "feature_extraction_s": t_extract,
        "speedup_training": plain_run.seconds / cached_run.seconds,
        "speedup_including_extraction": plain_run.seconds / (cached_run.seconds + t_extract),
        "break_even_epochs": t_extract / saved_per_epoch if saved_per_epoch > 0 else float("inf"),
        "test_acc_cached": metrics.accuracy(yt, logits_c), "test_acc_plain": metrics.accuracy(yt, logits_p),
        "max_abs_logit_difference": float((logits_c - logits_p).abs().max()),
        "same_predictions": float((logits_c.argmax(1) == logits_p.argmax(1)).float().mean()),
    }
    print(f"TL+KD head, {profile} profile, {len(y)} training images x 2 views, {epochs} epochs, seed {seed}")
    print(f"  plain (backbones every step): {result['plain_s']:.2f} s")
    print(f"  cached (heads on cached views): {result['cached_s']:.2f} s "
          f"(+ {t_extract:.2f} s once to compute the cached features)")
    print(f"  speed-up, training: {result['speedup_training']:.1f}x; including the one-off extraction: "
          f"{result['speedup_including_extraction']:.1f}x; the cache pays for itself after "
          f"{result['break_even_epochs']:.1f} head-epochs (the notebook trains hundreds)")
    print(f"  test accuracy: cached {result['test_acc_cached']:.2f}% vs plain {result['test_acc_plain']:.2f}%; "
          f"max |logit difference| {result['max_abs_logit_difference']:.2e}; "
          f"same predictions on {100 * result['same_predictions']:.1f}% of the test images")
    return result
