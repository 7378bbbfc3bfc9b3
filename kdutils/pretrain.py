"""SynthWorld data for a profile, and backbones pretrained on its source task.

At the `small` scale the ImageNet-pretrained backbones of the papers are
replaced by the same architecture family pretrained here, supervised, on
SynthWorld's 60-class source task (the ImageNet stand-in). Pretraining runs
once per (architecture, data, schedule, seed): the training loop's
checkpoint *is* the cache, so a second notebook, or a rerun, loads the
finished weights in a second, and an interrupted pretraining resumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import metrics
from .augment import flip_shift
from .cache import code_fingerprint, entry_lock
from .frozen import batches, outputs
from .published import PretrainingFiles, recipe
from .splits import nchw, tensor_loader, to_float
from .synthworld import SynthBatch, WorldConfig, class_names, generate
from .distillers import CrossEntropy
from .recipes import FrozenDict, Recipe, RunSettings
from .train import resolve_device, seed_everything, train
from .zoo import backbone

# Fixed data seeds: every study sees the same SynthWorld images for a profile,
# and the training seeds (cfg.seeds) vary only initialisation and order.
DATA_SEEDS = {"source_train": 1001, "source_test": 1002, "target_train": 2001, "target_val": 2002,
              "target_test": 2003}


@dataclass(frozen=True)
class SynthData:
    """The fixed SynthWorld splits of a profile: the `world` its images are drawn in and each split's size
    (`sizes["source_train"]`...); with `DATA_SEEDS` they are the whole description of the images."""

    world: WorldConfig
    sizes: FrozenDict  # split -> number of images

    @classmethod
    def of(cls, cfg) -> SynthData:
        size = cfg.image_size if cfg.profile != "paper" else 32  # `paper` images are real; SynthWorld stays 32x32
        sizes = FrozenDict({s: getattr(cfg, f"n_{s}") for s in DATA_SEEDS})
        return cls(WorldConfig(size=size, context_p=cfg.context_p), sizes)

    def split(self, name: str) -> SynthBatch:
        """One split: 'source_train', 'target_test'..."""
        return generate(name.split("_")[0], self.sizes[name], DATA_SEEDS[name], self.world)


@dataclass(frozen=True, kw_only=True)
class SynthPretraining(RunSettings):
    """What every pretraining on SynthWorld reads from a profile: its data and batch size, and how the run
    executes (`RunSettings`; `dry_run` is part of each cache key: a dry run never serves a real run). Each
    pretraining extends it; `of_profile(cfg)` reads it from a profile."""

    data: SynthData
    batch_size: int

    @staticmethod
    def of_profile(cfg) -> dict:
        return {"data": SynthData.of(cfg), "batch_size": cfg.batch_size, **RunSettings.of_profile(cfg)}


@dataclass(frozen=True, kw_only=True)
class SourcePretraining(SynthPretraining):
    """How `pretrain_source` trains a backbone on the source task: `epochs` (the profile's `pretrain_epochs`) on
    `device` ("auto": CUDA when present)."""

    epochs: int
    device: str

    @classmethod
    def of(cls, cfg) -> SourcePretraining:
        return cls(epochs=cfg.pretrain_epochs, device=cfg.device, **SynthPretraining.of_profile(cfg))


def to_tensors(batch: SynthBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float (N, 3, H, W) in [0, 1] and labels as int64."""
    return to_float(nchw(batch.images)), torch.from_numpy(batch.labels).long()


def pretrain_source(arch: str, pretraining: SourcePretraining, seed: int = 0) -> tuple[nn.Module, dict]:
    """A `SmallResNet` trained on the SynthWorld source task (SGD at lr 0.1, `pretraining.epochs`); cached on disk.

    Returns the model (with its 60-class head, in eval mode) and a summary:
    the training history and top-1/top-5 on the held-out source test split.
    """
    data = pretraining.data
    key = {"what": "source-pretrain", "arch": arch, "world": asdict(data.world), "n_train": data.sizes["source_train"],
           "epochs": pretraining.epochs, "lr": 0.1, "batch": pretraining.batch_size, "seed": seed,
           "dry_run": pretraining.dry_run, "code": code_fingerprint(__name__)}
    run = PretrainingFiles(f"source-{arch}", key)
    with entry_lock(run.checkpoint):  # notebooks or sweep jobs at once: one pretrains, the others wait
        return _pretrain_source(arch, pretraining, seed, run)


def _pretrain_source(arch: str, pretraining: SourcePretraining, seed: int, run: PretrainingFiles):
    gen = seed_everything(seed)  # before the model: its initialisation is part of the seeded run
    model, _ = backbone(arch, num_classes=len(class_names("source")))
    if (summary := run.shipped(model) or run.finished(model)) is not None:  # no data to generate, nothing to score
        return model.eval(), summary

    x, y = to_tensors(pretraining.data.split("source_train"))
    loader = tensor_loader(x, y, batch_size=pretraining.batch_size, shuffle=True, generator=gen, drop_last=True)
    training = Recipe(optimizer="sgd", lr=run.key["lr"], momentum=0.9, weight_decay=5e-4, schedule="warmup_cosine",
                      warmup_fraction=0.1, warmup_cap=200, epochs=pretraining.epochs,
                      max_steps=pretraining.max_steps)
    device = resolve_device(pretraining.device)
    history = train(model, CrossEntropy(), loader, training, outputs=lambda b: (model(flip_shift(b[0])), None, b[1]),
                    checkpoint=run.checkpoint, checkpoint_key=run.digest, device=device,
                    desc=f"pretrain {arch} on source", progress=pretraining.progress)
    model.eval()
    xt, yt = to_tensors(pretraining.data.split("source_test"))
    logits = outputs(model, batches(xt, 512), device=device)
    return model.cpu(), run.finish({
        "arch": arch, "epochs": pretraining.epochs, "seed": seed, "recipe": recipe(run.key),
        "history": history.to_dict(), "source_top1": metrics.accuracy(yt, logits),
        "source_top5": metrics.topk_accuracy(logits, yt, 5),
        "parameters": sum(p.numel() for p in model.parameters())})
