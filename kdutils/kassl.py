"""KASSL (study 3): distil a frozen self-supervised teacher into a small student's backbone.

The student (ResNet-18) feeds an *encoder extension* (a 4-layer MLP to the teacher's feature size);
the loss is the negative cosine between the extension's output on one view and the frozen teacher's
feature of another view, symmetrised (`distillers.FeatureRegression`). A linear probe then judges the
student's backbone. Ablations: no augmentation (the same plain image to both), feature reduction (a
projection of the teacher's feature that the extension targets) and both; an option, not in the
presentation, standardises the teacher's targets. Views come pre-drawn from an `AugmentedViewBank` whose
teacher features are computed once (cached), or fresh with a live teacher (`kassl_views`); teachers are
pretrained in-run or published (SynthWorld), or the published ResNet-50 checkpoints (`paper`; `kassl_encoders`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .augment import view_pair
from .cache import cache_root, cached, code_fingerprint, key_digest, model_fingerprint
from .checkpoint import History
from .distillers import FeatureRegression
from .errors import ConfigError
from .kassl_config import TARGET_NORMS, VARIANTS
from .kassl_data import data_loader, input_side
from .splits import StudyData, TensorRows
from .kassl_encoders import student_backbone
from .kassl_probe import plain_features
from .kassl_views import AugmentedViewBank, BankViews, FreshViews, SameImage
from .parallel import launch
from .ssl import LossTrace
from .teacher import FrozenTeacher
from .recipes import ParallelRunSettings, Recipe
from .train import seed_everything, train

__all__ = ["EncoderExtension", "KASSLStudent", "mean_direction_cosine", "feature_pairs", "train_kassl",
           "KASSLStudentRecipe", "train_student"]


class EncoderExtension(nn.Sequential):
    """KASSL's 4-layer MLP from the student's feature size to the teacher's.

    Three hidden layers Linear -> BatchNorm -> ReLU of width `hidden`, then a
    linear output layer of the target size (SimReg's design).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int):
        blocks = []
        for a in (in_dim, hidden, hidden):
            blocks += [nn.Linear(a, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
        super().__init__(*blocks, nn.Linear(hidden, out_dim))


class KASSLStudent(nn.Module):
    """Student backbone + encoder extension; `embed(x)` is compared with `target(teacher_feature)`.

    `forward(x)` is the backbone's feature, what the probe sees. `standardize_targets` centres and
    scales each teacher dimension by the batch's own statistics (train and eval alike): pooled ReLU
    features share a large mean direction that a constant prediction already matches (data2vec
    normalises its targets for the same reason). `reduced_dim` adds a bias-free projection of the
    target, trained with the student or a fixed random orthogonal map.
    """

    def __init__(self, backbone: nn.Module, student_dim: int, teacher_dim: int, hidden: int,
                 reduced_dim: int | None = None, reduction_trainable: bool = True,
                 standardize_targets: bool = False):
        super().__init__()
        self.backbone = backbone
        self.standardize = (nn.BatchNorm1d(teacher_dim, affine=False, track_running_stats=False)
                            if standardize_targets else None)
        self.reduction = None
        if reduced_dim is not None:
            if not 0 < reduced_dim <= teacher_dim:
                raise ConfigError(f"reduced_dim must be in (0, {teacher_dim}], got {reduced_dim}.")
            self.reduction = nn.Linear(teacher_dim, reduced_dim, bias=False)
            nn.init.orthogonal_(self.reduction.weight)
            self.reduction.weight.requires_grad_(reduction_trainable)
        self.extension = EncoderExtension(student_dim, reduced_dim or teacher_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.extension(self.backbone(x))

    def target(self, teacher_feature: torch.Tensor) -> torch.Tensor:
        t = teacher_feature if self.standardize is None else self.standardize(teacher_feature)
        return t if self.reduction is None else self.reduction(t)


def mean_direction_cosine(features: torch.Tensor) -> float:
    """Mean cosine of each feature with the features' mean: what a constant prediction scores (minus the loss)."""
    flat = features.reshape(-1, features.shape[-1]).float()
    return float(F.cosine_similarity(flat, flat.mean(0, keepdim=True), dim=1).mean())


def feature_pairs(student: KASSLStudent, v1: torch.Tensor, v2: torch.Tensor | None, t1: torch.Tensor,
                  t2: torch.Tensor | None) -> tuple:
    """What `FeatureRegression` compares: (s1, target1[, s2, target2]); `v2 is None`: the same image to both."""
    if v2 is None:
        return student.embed(v1), student.target(t1)
    s1, s2 = student.embed(v1), student.embed(v2)
    return s1, student.target(t1), s2, student.target(t2)


def train_kassl(student: KASSLStudent, loader, views, recipe: Recipe, *, device="cpu", **fit_options) -> History:
    """Train `student` by `recipe` on `FeatureRegression` over `views(batch, device)`.

    Per-step losses go to `student.trace` (checkpointed with the student); `fit_options` go to `fit`.
    """
    device = torch.device(device)
    student.trace = LossTrace(recipe.total_steps(loader))
    return train(student, FeatureRegression(), loader, recipe,
                 outputs=lambda b: feature_pairs(student, *views(b, device)), device=device,
                 on_step=lambda losses: student.trace.record(losses["loss"]), **fit_options)


@dataclass(frozen=True)
class KASSLStudentRecipe(ParallelRunSettings):
    """How a KASSL student trains (the profile's `s3_*` settings): its backbone, extension and optimiser,
    the views, the target normalisation, and how many data-parallel processes share its batches."""

    arch: str
    paper: bool
    hidden: int
    reduced_dim: int
    trainable_reduction: bool
    target_norm: str
    view_preset: str
    lr: float
    weight_decay: float
    warmup_epochs: int
    epochs: int
    batch_size: int

    @classmethod
    def of(cls, cfg, **changes) -> KASSLStudentRecipe:
        recipe = cls(cfg.student_arch, cfg.profile == "paper", cfg.s3_extension_hidden, cfg.s3_reduced_dim,
                     cfg.s3_fr_trainable, cfg.s3_target_norm, cfg.s3_view_preset, cfg.s3_kassl_lr,
                     cfg.s3_kassl_weight_decay, cfg.s3_kassl_warmup_epochs, cfg.phase_epochs(cfg.s3_kassl_epochs),
                     cfg.s3_kassl_batch, **ParallelRunSettings.of_profile(cfg))
        return replace(recipe, **changes)


def train_student(teacher: FrozenTeacher, teacher_info: dict, variant: str, recipe: KASSLStudentRecipe,
                  data: StudyData, seed: int, device, bank: AugmentedViewBank | None = None):
    """One KASSL student and its history {"epochs": per-epoch records, "steps": per-step losses}.

    Views and teacher features come from `bank` (cached) or are fresh with a live teacher; checkpointed
    in the cache by teacher weights, variant, recipe and seed; data-parallel with `recipe.processes` > 1.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown KASSL variant '{variant}'; choose from {list(VARIANTS)}.")
    augmented, reduced = VARIANTS[variant]
    trainable, target_norm = recipe.trainable_reduction, recipe.target_norm
    if target_norm not in TARGET_NORMS:
        raise ConfigError(f"target_norm must be one of {TARGET_NORMS}, got '{target_norm}'.")
    views, dataset = _student_views(teacher, data, augmented=augmented, bank=bank, view_preset=recipe.view_preset,
                                    device=device, num_workers=recipe.num_workers)
    key = {"what": "kassl-student", "teacher": model_fingerprint(teacher), "variant": variant,
           "trainable_reduction": trainable if reduced else None, "arch": recipe.arch,
           "data": data.key["train"], "bank": bank.key if (bank is not None and augmented) else None,
           "views": recipe.view_preset, "epochs": recipe.epochs, "warmup": recipe.warmup_epochs,
           "lr": recipe.lr, "batch": recipe.batch_size, "wd": recipe.weight_decay,
           "hidden": recipe.hidden, "reduced": recipe.reduced_dim if reduced else None,
           "target_norm": target_norm,
           "seed": seed, "dry_run": recipe.dry_run, "code": code_fingerprint(__name__)}
    digest = key_digest(key)
    name = (f"{teacher_info['name']}-{variant}{'' if trainable or not reduced else '-fixed'}-{target_norm}"
            f"-s{seed}")
    return launch(_fit_student, (recipe, teacher_info["feature_dim"], reduced, dataset, views, seed, device,
                                 cache_root() / "kassl" / f"student-{name}-{digest}.pt", digest, f"KASSL {name}"),
                  recipe.processes)


def _student_views(teacher: FrozenTeacher, data: StudyData, *, augmented: bool, bank: AugmentedViewBank | None,
                   view_preset: str, device, num_workers: int) -> tuple:
    """(views, dataset) of a student: the bank's cached teacher features, fresh views, or the plain image."""
    if augmented and bank is not None:
        return (BankViews(bank, features=bank.features(teacher, device)),
                TensorRows(torch.arange(len(bank))))
    train, size = data.splits["train"], input_side(data)
    if augmented:
        return FreshViews(view_pair(view_preset, out_size=size), teacher), train
    if train.lazy:
        return SameImage(size, teacher=teacher), train
    plain = cached("kassl_plain", {"teacher": model_fingerprint(teacher), "data": data.key["train"]},
                   lambda: plain_features(teacher, train, size, device, num_workers))
    return SameImage(size, features=plain), train


def _fit_student(recipe: KASSLStudentRecipe, teacher_dim: int, reduced: bool, dataset, views, seed: int, device,
                 checkpoint, digest: str, desc: str):
    """`train_student`'s training (views and teacher features already cached), run by `launch`."""
    seed_everything(seed)
    backbone, dim = student_backbone(recipe.arch, paper=recipe.paper)
    student = KASSLStudent(backbone, dim, teacher_dim, recipe.hidden, recipe.reduced_dim if reduced else None,
                           recipe.trainable_reduction, recipe.target_norm == "standardize")
    loader = data_loader(dataset, recipe.batch_size, shuffle=True, seed=seed, num_workers=recipe.num_workers)
    schedule = Recipe(lr=recipe.lr, weight_decay=recipe.weight_decay, schedule="warmup_cosine",
                      warmup_epochs=recipe.warmup_epochs, epochs=recipe.epochs, max_steps=recipe.max_steps)
    history = train_kassl(student, loader, views, schedule, device=device, checkpoint=checkpoint,
                          checkpoint_key=digest, progress=recipe.progress, desc=desc)
    return student.cpu().eval(), {"epochs": history.epochs, "steps": student.trace.series()}
