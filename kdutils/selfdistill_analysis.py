"""Study 1's ablations and read-outs: top-k, few-shot subsets, retrieval through a learned projection,
and the text head's attention maps."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import clip as kclip
from . import metrics
from .errors import ConfigError
from .losses import ClipLoss
from .selfdistill import HeadClassifier
from .selfdistill_features import FrozenFeatures
from .splits import tensor_loader
from .recipes import Recipe
from .train import seed_everything, train

__all__ = ["topk", "few_shot_indices", "retrieval_recalls", "attention_maps"]


def topk(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 in % (top-5 only when there are more than 5 classes)."""
    out = {"top1": metrics.accuracy(labels, logits)}
    if logits.shape[1] > 5:
        out["top5"] = metrics.topk_accuracy(logits, labels, 5)
    return out


def few_shot_indices(labels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k items per class, nested in k (the 1-shot items are among the 5-shot ones), fixed by `seed`."""
    if k < 1:
        raise ConfigError(f"few-shot k must be >= 1, got {k}.")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = order[labels[order] == c]
        if len(members) < k:
            raise ConfigError(f"class {c} has {len(members)} training images, fewer than k={k}.")
        chosen.append(members[:k])
    return torch.sort(torch.cat(chosen)).values


def retrieval_recalls(train_image: torch.Tensor, train_text: torch.Tensor, test_image: torch.Tensor,
                      test_text: torch.Tensor, *, epochs: int, seed: int, gallery: int, device,
                      max_steps: int | None = None) -> dict:
    """Recall@1/5/10 (%) of test images and captions through a linear projection learned into the text space.

    Image features are standardised with the training set's statistics and
    mapped by one linear layer; the frozen text encodings stay fixed. The
    projection is trained with CLIP's symmetric contrastive loss (learnable
    temperature) on the training pairs for `epochs` (of at most `max_steps`
    batches); the first `gallery` test pairs are ranked
    (`kdutils.clip.retrieval_recalls`, both directions).
    """
    device = torch.device(device)
    gen = seed_everything(seed)
    mean, std = train_image.mean(0, keepdim=True), train_image.std(0, keepdim=True) + 1e-6
    proj = nn.Linear(train_image.shape[1], train_text.shape[1])
    loss_fn = ClipLoss(init_scale=10.0)
    model = nn.ModuleDict({"proj": proj, "loss": loss_fn})
    loader = tensor_loader((train_image - mean) / std, train_text, batch_size=256, shuffle=True, generator=gen,
                           drop_last=len(train_image) >= 512)
    recipe = Recipe(optimizer="adamw", lr=1e-2, weight_decay=1e-4, schedule="warmup_cosine", warmup_fraction=0.1,
                    warmup_cap=100, epochs=epochs, max_steps=max_steps)
    train(model, lambda b: {"loss": loss_fn(proj(b[0]), b[1])}, loader, recipe, device=device,
          desc="retrieval projection", progress=False)
    n = min(gallery, len(test_image))
    with torch.no_grad():
        image_emb = proj(((test_image[:n] - mean) / std).to(device)).cpu()
    return kclip.retrieval_recalls(image_emb, test_text[:n], ks=(1, 5, 10))


@torch.no_grad()
def attention_maps(teacher: HeadClassifier, feats: FrozenFeatures, dataset, indices: Sequence[int],
                   mode: str = "prompt"):
    """Attention of a text head over image tokens for some items: (n, T) weights and the labels.

    mode="prompt": the query is the image's true class prompt (the thesis's
    head); mode="label_free": the map of the highest-scoring class prompt.
    """
    if mode not in ("prompt", "label_free"):
        raise ValueError(f"attention maps are of mode 'prompt' or 'label_free', not '{mode}'.")
    subset = torch.utils.data.Subset(dataset, list(indices))
    images, labels, index = next(iter(torch.utils.data.DataLoader(subset, batch_size=len(subset))))
    tokens, _ = feats(images, index, torch.zeros_like(index))
    labels = labels.to(feats.device)
    if mode == "prompt":
        logits, weights = teacher.module.own_prompt_logits(tokens, teacher.class_queries[labels], True)
        return weights.cpu(), labels.cpu(), logits.argmax(1).cpu()
    scores, weights = teacher.label_free_scores(tokens, True)
    best = scores.argmax(1)
    return weights[torch.arange(len(best)), best].cpu(), labels.cpu(), best.cpu()
