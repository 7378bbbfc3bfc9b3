"""Study 4's experiments: new linear heads on frozen backbones, trained by TL or TL+KD (Hinton KD).

`train_head` trains one `Dropout -> Linear` head from a `tlkd_features` source; `seed_heads` trains one
seed's teacher head, then student heads distilled from it (H1, H4 and the live panel all train so);
`h1_seed` and `tl_vs_kd` are H1's and H4's per-seed experiments, each seed stored once finished (a warm
run and a sweep's merge reuse it). Also here: H4's data conditions (stratified subsets, label noise) and
the study's seeds.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .cache import cached, content_digest, results_root
from .checkpoint import History
from .distillers import CrossEntropy, HintonKD
from .errors import ConfigError
from .tlkd_features import HeadInputs, head_logits
from .recipes import Recipe
from .train import seed_everything, single_cpu_thread, train

__all__ = ["THESIS_RECIPE", "HeadParams", "HeadRun", "train_head", "seed_heads", "h1_seed", "tl_vs_kd",
           "subset_indices", "noisy_labels", "study_seeds"]

# The thesis's head training: SGD with momentum, ReduceLROnPlateau and early stopping on validation accuracy,
# the best validation epoch's weights kept.
THESIS_RECIPE = Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="plateau",
                       plateau_factor=0.9, plateau_patience=3, epochs=200, monitor="val_acc", patience=10,
                       restore_best=True)


@dataclass(frozen=True)
class HeadParams:
    """A head's training: its `recipe` (a `recipes.Recipe`, step cap included), batch, dropout and KD weight."""

    recipe: Recipe = THESIS_RECIPE
    batch_size: int = 64
    dropout: float = 0.2
    temperature: float = 10.0
    alpha: float = 0.0                # 0: plain cross-entropy (TL); > 0: Hinton KD (TL+KD)

    @classmethod
    def of(cls, cfg, *, h4: bool = False) -> "HeadParams":
        """A profile's H1 heads (one epoch in dry runs); `h4=True`: H4's, with their own learning rate and
        epochs, no early stopping and the final weights."""
        recipe = replace(THESIS_RECIPE, lr=cfg.s4_h4_lr if h4 else cfg.s4_lr, momentum=cfg.s4_momentum,
                         weight_decay=cfg.s4_weight_decay, plateau_factor=cfg.s4_plateau_factor,
                         plateau_patience=cfg.s4_plateau_patience,
                         epochs=cfg.phase_epochs(cfg.s4_h4_epochs if h4 else cfg.s4_epochs),
                         patience=None if h4 else cfg.s4_patience, restore_best=not h4, max_steps=cfg.max_steps)
        return cls(recipe, batch_size=cfg.s4_batch_size, dropout=cfg.s4_dropout, temperature=cfg.s4_temperature)


@dataclass
class HeadRun:
    """A trained head, its per-epoch history, and its training time (`bench tlkd` compares the two paths by it)."""

    head: nn.Module
    history: History
    seconds: float


class _IndexBatches:
    """Shuffled batches of (indices, labels), drawn from `generator` (no per-item loading cost)."""

    def __init__(self, labels: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.labels, self.batch_size, self.generator = labels, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        for idx in torch.randperm(len(self.labels), generator=self.generator).split(self.batch_size):
            yield idx, self.labels[idx]


def train_head(train_source, labels: torch.Tensor, val_source, val_labels: torch.Tensor, hp: HeadParams, *,
               num_classes: int, seed: int, device="cpu", desc: str = "head") -> HeadRun:
    """Train a new `Dropout -> Linear` head on a frozen backbone; TL when alpha = 0, TL+KD otherwise.

    The sources are `HeadInputs` (cached or live). Each step draws one
    view per image (mirror, corruption) from a generator seeded by `seed`,
    so the cached and the plain path see the same views. The loss is
    cross-entropy (alpha = 0) or `HintonKD` with `hp.temperature` and
    `hp.alpha` against the teacher logits of the same views. Validation
    accuracy drives ReduceLROnPlateau, early stopping and `restore_best`.
    """
    if len(train_source) != len(labels) or len(val_source) != len(val_labels):
        raise ValueError("each source needs one label per image.")
    if hp.alpha > 0 and not train_source.has_teacher:
        raise ConfigError(f"alpha={hp.alpha} needs teacher logits in the training source.")
    device = torch.device(device)
    gen = seed_everything(seed)
    view_gen = torch.Generator().manual_seed(seed + 1)
    head = nn.Sequential(nn.Dropout(hp.dropout), nn.Linear(train_source.dim, num_classes))
    labels, val_labels = labels.long(), val_labels.long()
    loader = _IndexBatches(labels, hp.batch_size, gen)
    distiller = HintonKD(hp.temperature, hp.alpha) if hp.alpha > 0 else CrossEntropy()

    def outputs(batch):
        idx, y = batch
        views = torch.randint(train_source.n_views, (len(idx),), generator=view_gen)
        feats, zt = train_source.batch(idx, views, need_teacher=hp.alpha > 0)
        return head(feats), zt, y

    def evaluate() -> dict:
        logits = head_logits(head, val_source)
        return {"val_acc": metrics.accuracy(val_labels, logits),
                "val_loss": float(F.cross_entropy(logits, val_labels))}

    t0 = time.perf_counter()
    with single_cpu_thread(device) if train_source.render is None else contextlib.nullcontext():
        history = train(head, distiller, loader, hp.recipe, outputs=outputs, evaluate=evaluate,
                        device=device, amp=False, channels_last=False, desc=desc, progress=False)
    return HeadRun(head.eval(), history, time.perf_counter() - t0)


def seed_heads(student: dict, teacher: dict, labels: dict, hp: HeadParams, alphas, *, num_classes: int, seed: int,
               device="cpu") -> tuple[HeadRun, dict, HeadInputs]:
    """One seed's heads: the teacher's (cross-entropy), then a student head per alpha distilled from its logits.

    `student` / `teacher` map "train" and "val" to cached `HeadInputs` of the same images (no teacher
    logits), `labels` the splits to labels; alpha = 0 is TL. Returns (teacher run, {alpha: student run},
    the student's training source with the teacher head's logits, for more alphas).
    """
    def head(source, role: dict, alpha: float, desc: str) -> HeadRun:
        return train_head(source, labels["train"], role["val"], labels["val"], replace(hp, alpha=alpha),
                          num_classes=num_classes, seed=seed, device=device, desc=desc)

    teacher_run = head(teacher["train"], teacher, 0.0, "teacher head")
    distill = student["train"].with_teacher(teacher_run.head, teacher["train"].features.table)
    students = {alpha: head(distill, student, alpha, f"student head alpha={alpha}") for alpha in alphas}
    return teacher_run, students, distill


def _stored_seed(kind: str, tensors: dict, params: dict, compute):
    """`compute()` once per content: a per-seed result keyed by the hash of its input tensors and its
    parameters, kept in the results store (`cache.results_root`), so a warm run and a sweep's merge reuse
    every finished seed instead of training it again (`python -m kdutils sweep`)."""
    key = {"inputs": {name: content_digest(t) for name, t in tensors.items()}, **params}
    return cached(kind, key, compute, root=results_root(), verbose=False)


def h1_seed(features: dict, labels: dict, hp: HeadParams, alphas, seed: int, *, num_classes: int,
            device="cpu") -> tuple[HeadRun, dict]:
    """One seed of H1 (`seed_heads` on cached features), stored per seed.

    `features` maps (role, split) to cached features for roles "teacher" and
    "student" and splits "train" and "val"; returns (teacher run, {alpha: student run}).
    """
    device = torch.device(device)
    tensors = {f"{role}_{split}": features[role, split]
               for role in ("teacher", "student") for split in ("train", "val")}
    tensors.update({f"labels_{split}": labels[split] for split in ("train", "val")})
    params = {"hp": hp, "alphas": sorted(alphas), "seed": seed, "num_classes": num_classes, "device": device.type}

    def compute() -> tuple[HeadRun, dict]:
        student, teacher = ({split: HeadInputs.cached(features[role, split], device=device)
                             for split in ("train", "val")} for role in ("student", "teacher"))
        teacher_run, students, _ = seed_heads(student, teacher, labels, hp, alphas, num_classes=num_classes,
                                              seed=seed, device=device)
        for run in (teacher_run, *students.values()):
            run.head.cpu()  # stored device-free: a GPU job's seed is reused on any machine
        return teacher_run, students

    teacher_run, students = _stored_seed("tlkd-h1-seed", tensors, params, compute)
    for run in (teacher_run, *students.values()):
        run.head.to(device)
    return teacher_run, students


def tl_vs_kd(student: dict, teacher: dict, labels: dict, hp: HeadParams, alpha: float, seeds, *,
             num_classes: int, device="cpu") -> dict:
    """One H4 condition: per seed `seed_heads` with TL and TL+KD (`alpha`); test metrics.

    `student` and `teacher` map "train", "val", "test" to cached `HeadInputs` of
    the same images, `labels` maps them to labels. The teacher head trains on
    the same (reduced, noisy or corrupted) training data as the students.
    Returns {seed: {"teacher", "tl", "kd"}: classification report in %}; each seed is stored.
    """
    tensors = {f"{role}_{split}": sources[split].features.table
               for role, sources in (("student", student), ("teacher", teacher)) for split in ("train", "val", "test")}
    tensors.update({f"labels_{split}": y for split, y in labels.items()})

    def one_seed(seed: int) -> dict:
        t_run, students, _ = seed_heads(student, teacher, labels, hp, (0.0, alpha), num_classes=num_classes,
                                        seed=seed, device=device)
        runs = (("teacher", t_run, teacher), ("tl", students[0.0], student), ("kd", students[alpha], student))
        return {name: metrics.classification_report(labels["test"], head_logits(run.head, source["test"]))
                for name, run, source in runs}

    params = {"hp": hp, "alpha": alpha, "num_classes": num_classes, "device": torch.device(device).type}
    return {seed: _stored_seed("tlkd-h4-seed", tensors, {**params, "seed": seed}, lambda: one_seed(seed))
            for seed in seeds}


# ------------------------------------------------------------- H4 data conditions

def subset_indices(labels, fraction: float, seed: int) -> np.ndarray:
    """A stratified random subset: round(fraction x n_c) images of each class c (at least 1), sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"a training fraction must be in (0, 1], got {fraction}.")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * len(members))))
        picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def noisy_labels(labels, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """Labels with exactly round(fraction x N) of them replaced by a random *different* class."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"a label-noise fraction must be in [0, 1], got {fraction}.")
    y = torch.as_tensor(np.asarray(labels)).long().clone()
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(y), size=int(round(fraction * len(y))), replace=False)
    shift = torch.from_numpy(rng.integers(1, num_classes, size=len(flip)))
    y[flip] = (y[flip] + shift) % num_classes
    return y


def study_seeds(profile: str, seeds, overrides: dict | None) -> list[int]:
    """H1-H3 seeds: the notebook's `seeds` when given, else `s4_h1_seeds` (overrides first, then the profile)."""
    if seeds is not None:
        return list(seeds)
    if isinstance(overrides, dict) and overrides.get("s4_h1_seeds") is not None:
        return list(overrides["s4_h1_seeds"])
    from .profiles import profile_values

    return list(profile_values(profile)["s4_h1_seeds"])
