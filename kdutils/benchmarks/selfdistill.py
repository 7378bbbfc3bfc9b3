"""`python -m kdutils bench selfdistill`: study 1: head training on cached frozen features vs live."""

from __future__ import annotations

import os

import torch

from .. import metrics
from ..models import small_resnet
from ..selfdistill import HeadRecipe, fit_teacher, teacher_logits
from ..selfdistill_features import VIEWS, FrozenFeatures
from ..selfdistill_data import synthworld_data
from ..selfdistill_encoders import ImageEncoder


def run(n_train: int = 2000, epochs: int = 3) -> dict:
    """Head training on cached frozen features against the encoder in the loop (`python -m kdutils bench`).

    Same data, encoder (a SmallResNet with random weights: speed does not
    depend on the weights), head and seed; prints seconds, the speed-up for
    `epochs` epochs including the one-off feature pass, and how closely the two
    heads agree (the cache stores tokens in float16).
    """
    import tempfile
    import time

    from ..profiles import load_profile

    with tempfile.TemporaryDirectory() as tmp:
        previous = os.environ.get("KD_CACHE_DIR")
        os.environ["KD_CACHE_DIR"] = tmp
        try:
            base = load_profile("small", progress=False, n_target_train=n_train, s1_head_epochs=epochs)
            data = synthworld_data(base)
            train, test = data.splits["train"], data.splits["test"]
            torch.manual_seed(0)
            encoder = ImageEncoder("resnet", "small_resnet", small_resnet(base.s1_resnet_arch),
                                   {"kind": "small_resnet", "arch": base.s1_resnet_arch}, "random SmallResNet")
            queries = torch.randn(data.num_classes, 32, generator=torch.Generator().manual_seed(0))
            out, passes = {}, {"batch_size": base.batch_size, "num_workers": base.num_workers}
            for name, mb in (("cached", base.s1_feature_cache_mb), ("streamed", 0)):
                t0 = time.perf_counter()
                feats = FrozenFeatures(encoder, train, data.key, "train", len(VIEWS), "cpu", cache_mb=mb, **passes)
                test_feats = FrozenFeatures(encoder, test, data.key, "test", 1, "cpu", cache_mb=mb, **passes)
                t1 = time.perf_counter()
                head, _ = fit_teacher("label_free", feats, train, HeadRecipe.of(base), seed=0,
                                      num_classes=data.num_classes, class_queries=queries)
                t2 = time.perf_counter()
                logits, labels = teacher_logits(head, test_feats, test)
                out[name] = {"features_s": t1 - t0, "training_s": t2 - t1, "logits": logits,
                             "top1": metrics.accuracy(labels, logits)}
        finally:
            if previous is None:
                os.environ.pop("KD_CACHE_DIR", None)
            else:
                os.environ["KD_CACHE_DIR"] = previous
    c, s_ = out["cached"], out["streamed"]
    total_c, total_s = c["features_s"] + c["training_s"], s_["features_s"] + s_["training_s"]
    agreement = 100.0 * float((c["logits"].argmax(1) == s_["logits"].argmax(1)).float().mean())
    print(f"head training, {n_train} images x {len(VIEWS)} views, {epochs} epochs, {base.s1_resnet_arch} encoder")
    print(f"  cached  : features {c['features_s']:.2f} s + training {c['training_s']:.2f} s = {total_c:.2f} s")
    print(f"  streamed: features {s_['features_s']:.2f} s + training {s_['training_s']:.2f} s = {total_s:.2f} s")
    print(f"  training alone: {s_['training_s'] / c['training_s']:.1f}x (the head's own steps bound it: the encoder "
          f"is all the cache removes)")
    print(f"  speed-up {total_s / total_c:.2f}x; test top-1 {c['top1']:.2f}% vs {s_['top1']:.2f}%; "
          f"same prediction on {agreement:.1f}% of test images; "
          f"max |logit difference| {float((c['logits'] - s_['logits']).abs().max()):.2e}")
    return {"cached_s": total_c, "streamed_s": total_s, "speedup": total_s / total_c,
            "training_speedup": s_["training_s"] / c["training_s"], "agreement_pct": agreement,
            "top1_cached": c["top1"], "top1_streamed": s_["top1"]}
