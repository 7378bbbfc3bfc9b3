"""`python -m kdutils bench selfdistill`: study 1: head training on cached frozen features vs live."""

from __future__ import annotations

import os
import tempfile
import time

import torch

from kdutils import metrics
from kdutils.models import small_resnet, torchvision_model
from kdutils.frozen import FixedViews
from kdutils.selfdistill import HeadRecipe, fit_teacher, head_logits_and_labels
from kdutils.selfdistill_data import synthworld_data
from kdutils.selfdistill_encoders import ImageEncoder
from kdutils.selfdistill_features import FrozenFeatures
from kdutils.teacher import IMAGENET_MEAN, IMAGENET_STD


def _encoders(base) -> dict:
    """The `small` profile's frozen encoder and the `paper` one's shape (ResNet-50 at 224), both random weights."""
    torch.manual_seed(0)
    small = ImageEncoder("resnet", "small_resnet", small_resnet(base.s1_resnet_arch),
                         {"kind": "small_resnet", "arch": base.s1_resnet_arch}, f"random {base.s1_resnet_arch}")
    paper = ImageEncoder("resnet50", "torchvision_resnet", torchvision_model("resnet50", None),
                         {"kind": "torchvision_resnet", "arch": "resnet50", "input_size": 224}, "random ResNet-50",
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224)
    return {base.s1_resnet_arch + " at 32 px (small)": small, "resnet50 at 224 px (paper)": paper}


def _both_ways(encoder, train, test, data, base) -> dict:
    """Features + head training + test logits, once from the cache and once streamed through the encoder."""
    queries = torch.randn(data.num_classes, 32, generator=torch.Generator().manual_seed(0))
    out, passes = {}, {"batch_size": base.batch_size, "num_workers": base.num_workers}
    for name, mb in (("cached", base.s1_feature_cache_mb), ("streamed", 0)):
        t0 = time.perf_counter()
        feats = FrozenFeatures(encoder, train, data.key, "train", FixedViews.mirrored(len(train)), "cpu", cache_mb=mb,
                               **passes)
        test_feats = FrozenFeatures(encoder, test, data.key, "test", FixedViews.plain(len(test)), "cpu", cache_mb=mb,
                                    **passes)
        t1 = time.perf_counter()
        head, _ = fit_teacher("label_free", feats, train, HeadRecipe.of(base), seed=0,
                              num_classes=data.num_classes, class_queries=queries)
        t2 = time.perf_counter()
        logits, labels = head_logits_and_labels(head, test_feats, test)
        out[name] = {"features_s": t1 - t0, "training_s": t2 - t1, "logits": logits,
                     "top1": metrics.accuracy(labels, logits)}
    c, s_ = out["cached"], out["streamed"]
    total_c, total_s = c["features_s"] + c["training_s"], s_["features_s"] + s_["training_s"]
    agreement = 100.0 * float((c["logits"].argmax(1) == s_["logits"].argmax(1)).float().mean())
    print(f"  cached  : features {c['features_s']:.2f} s + training {c['training_s']:.2f} s = {total_c:.2f} s")
    print(f"  streamed: features {s_['features_s']:.2f} s + training {s_['training_s']:.2f} s = {total_s:.2f} s")
    print(f"  training alone {s_['training_s'] / c['training_s']:.1f}x; speed-up {total_s / total_c:.2f}x; test top-1 "
          f"{c['top1']:.2f}% vs {s_['top1']:.2f}%; same prediction on {agreement:.1f}% of test images; "
          f"max |logit difference| {float((c['logits'] - s_['logits']).abs().max()):.2e}")
    return {"cached_s": total_c, "streamed_s": total_s, "speedup": total_s / total_c,
            "training_speedup": s_["training_s"] / c["training_s"], "agreement_pct": agreement,
            "top1_cached": c["top1"], "top1_streamed": s_["top1"]}


def run(n_train: int = 2000, epochs: int = 3, paper_n_train: int = 128) -> dict:
    """Head training on cached frozen features against the encoder in the loop (`python -m kdutils bench`).

    Same data, head and seed both ways, for two frozen encoders with random
    weights (speed does not depend on them): the `small` profile's SmallResNet
    on `n_train` images, and the `paper` profile's ResNet-50 at 224 pixels on
    the first `paper_n_train` of them. The cache can remove no more than the
    encoder's share of a step, so the ratio grows with the encoder: at `small`
    the text-queried head's own backward costs about as much as the encoder.
    The cache stores tokens in float16, hence the agreement printed.
    """
    from kdutils.profiles import load_profile

    with tempfile.TemporaryDirectory() as tmp:
        previous = os.environ.get("KD_CACHE_DIR")
        os.environ["KD_CACHE_DIR"] = tmp
        try:
            base = load_profile("small", progress=False, n_target_train=n_train, s1_head_epochs=epochs)
            data = synthworld_data(base)
            train, test = data.splits["train"], data.splits["test"]
            sizes = {"small": (train, test), "paper": (train.subset(range(paper_n_train)),
                                                       test.subset(range(min(paper_n_train, len(test)))))}
            out = {}
            for (label, encoder), (scale, (tr, te)) in zip(_encoders(base).items(), sizes.items()):
                if len(tr) == 0:
                    continue
                print(f"head training on {label}: {len(tr)} images x {FixedViews.mirrored(len(tr)).n_views} views, "
                      f"{epochs} epochs")
                out[scale] = _both_ways(encoder, tr, te, data, base)
        finally:
            if previous is None:
                os.environ.pop("KD_CACHE_DIR", None)
            else:
                os.environ["KD_CACHE_DIR"] = previous
    return out
