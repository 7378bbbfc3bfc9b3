"""Linear probes on frozen features: the usual evaluation of a representation (KASSL's tables, study 1's
reference).

A linear layer trains on standardised features that never change; the features are computed once (see
`kdutils.cache`) and the layer trains on tensors, which takes seconds instead of minutes. Study 4's heads
(`tlkd.train_head`) also train on frozen features, but are not probes: dropout, Hinton KD, unstandardised
features and the thesis's SGD and plateau recipe.
"""

from __future__ import annotations

import torch
from torch import nn

from . import metrics
from .distillers import CrossEntropy
from .splits import tensor_loader
from .recipes import Recipe
from .train import seed_everything, train


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, *, epochs: int = 30, lr: float = 0.1,
                 weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0,
                 max_steps: int | None = None) -> dict:
    """Train a linear classifier on standardised frozen features; report top-1/top-5 in %.

    Features are standardised with the training set's mean and std, so one
    learning rate suits encoders whose feature scales differ by orders of
    magnitude. SGD with momentum and a cosine schedule.
    """
    gen = seed_everything(seed)
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True) + 1e-6
    tr, te = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = nn.Linear(tr.shape[1], num_classes)
    loader = tensor_loader(tr, train_y, batch_size=batch_size, shuffle=True, generator=gen)
    recipe = Recipe(optimizer="sgd", lr=lr, weight_decay=weight_decay, schedule="cosine", epochs=epochs,
                    max_steps=max_steps)
    history = train(head, CrossEntropy(), loader, recipe, outputs=lambda b: (head(b[0]), None, b[1]), progress=False)
    with torch.no_grad():
        logits = head(te)
    return {"top1": metrics.accuracy(test_y, logits), "top5": metrics.topk_accuracy(logits, test_y, 5),
            "train_loss": history.epochs[-1]["train_loss"]}
