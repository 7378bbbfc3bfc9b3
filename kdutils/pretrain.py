"""SynthWorld data for a profile, and backbones pretrained on its source task.

At the `small` scale the ImageNet-pretrained backbones of the papers are
replaced by the same architecture family pretrained here, supervised, on
SynthWorld's 60-class source task (the ImageNet stand-in). Pretraining runs
once per (architecture, data, schedule, seed): the training loop's
checkpoint *is* the cache, so a second notebook, or a rerun, loads the
finished weights in a second, and an interrupted pretraining resumes.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from . import metrics
from .augment import flip_shift
from .cache import code_fingerprint, entry_lock
from .frozen import batches, outputs
from .published import Pretraining, recipe
from .splits import nchw, tensor_loader, to_float
from .synthworld import SynthBatch, WorldConfig, class_names, generate
from .distillers import CrossEntropy
from .train import Recipe, resolve_device, seed_everything, train
from .zoo import backbone

# Fixed data seeds: every study sees the same SynthWorld images for a profile,
# and the training seeds (cfg.seeds) vary only initialisation and order.
DATA_SEEDS = {"source_train": 1001, "source_test": 1002, "target_train": 2001, "target_val": 2002,
              "target_test": 2003}


def world_config(cfg) -> WorldConfig:
    """The SynthWorld knobs a profile sets (32x32 unless `image_size` says otherwise)."""
    size = cfg.image_size if cfg.profile != "paper" else 32
    return WorldConfig(size=size, context_p=cfg.context_p)


def synth_split(cfg, split: str) -> SynthBatch:
    """One of the fixed SynthWorld splits of this profile: 'source_train', 'target_test'..."""
    task = split.split("_")[0]
    n = getattr(cfg, f"n_{split}")
    return generate(task, n, DATA_SEEDS[split], world_config(cfg))


def to_tensors(batch: SynthBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float (N, 3, H, W) in [0, 1] and labels as int64."""
    return to_float(nchw(batch.images)), torch.from_numpy(batch.labels).long()


def pretrain_source(arch: str, cfg, seed: int = 0) -> tuple[nn.Module, dict]:
    """A `SmallResNet` trained on the SynthWorld source task (SGD at lr 0.1, `cfg.pretrain_epochs`); cached on disk.

    Returns the model (with its 60-class head, in eval mode) and a summary:
    the training history and top-1/top-5 on the held-out source test split.
    """
    key = {"what": "source-pretrain", "arch": arch, "world": asdict(world_config(cfg)), "n_train": cfg.n_source_train,
           "epochs": cfg.pretrain_epochs, "lr": 0.1, "batch": cfg.batch_size, "seed": seed, "dry_run": cfg.dry_run,
           "code": code_fingerprint(__name__)}
    run = Pretraining(f"source-{arch}", key)
    with entry_lock(run.checkpoint):  # notebooks or sweep jobs at once: one pretrains, the others wait
        return _pretrain_source(arch, cfg, seed, run)


def _pretrain_source(arch: str, cfg, seed: int, run: Pretraining):
    gen = seed_everything(seed)  # before the model: its initialisation is part of the seeded run
    model, _ = backbone(arch, num_classes=len(class_names("source")))
    if (summary := run.shipped(model) or run.finished(model)) is not None:  # no data to generate, nothing to score
        return model.eval(), summary

    x, y = to_tensors(synth_split(cfg, "source_train"))
    loader = tensor_loader(x, y, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True)
    training = Recipe(optimizer="sgd", lr=run.key["lr"], momentum=0.9, weight_decay=5e-4, schedule="warmup_cosine",
                    warmup_fraction=0.1, warmup_cap=200, epochs=cfg.pretrain_epochs, max_steps=cfg.max_steps)
    device = resolve_device(cfg.device)
    history = train(model, CrossEntropy(), loader, training, outputs=lambda b: (model(flip_shift(b[0])), None, b[1]),
                    checkpoint=run.checkpoint, checkpoint_key=run.digest, device=device,
                    desc=f"pretrain {arch} on source", progress=cfg.progress)
    model.eval()
    xt, yt = to_tensors(synth_split(cfg, "source_test"))
    logits = outputs(model, batches(xt, 512), device=device)
    return model.cpu(), run.finish({
        "arch": arch, "epochs": cfg.pretrain_epochs, "seed": seed, "recipe": recipe(run.key),
        "history": history.to_dict(), "source_top1": metrics.accuracy(yt, logits),
        "source_top5": metrics.topk_accuracy(logits, yt, 5),
        "parameters": sum(p.numel() for p in model.parameters())})
