"""Study 1: self-distillation through a text-queried image-text head, and its ablations.

The thesis's recipe, in order (data in `kdutils.selfdistill_data`, encoders
and students in `kdutils.selfdistill_encoders`, frozen features in
`kdutils.selfdistill_features`, ablations in `kdutils.selfdistill_analysis`,
the teachers and students here):

1. **Frozen encoders** (`selfdistill_encoders.Encoders`): a pretrained image
   encoder that gives a token sequence and a pretrained text encoder that
   gives one vector per prompt. Their outputs never change, so the image side
   is computed once per data split and view (`FrozenFeatures`, cached on
   disk) and every teacher trains on tensors.
2. **Teachers** (`fit_teacher`, a `HeadClassifier`): the text-queried head
   (`kdutils.text_queried_head`) trained with cross-entropy, either the
   thesis's way (each image queried by its own prompt, mode "prompt", or its
   own caption, mode "caption") or label-free (all class prompts as queries,
   mode "label_free"); and the no-text teacher, a linear layer on the
   encoder's pooled output (mode "linear", the Born-Again baseline).
3. **Students** (`fit_student`): a freshly initialised copy of the image
   encoder's architecture plus a linear layer, trained on images only with
   `distillers.SoftTargetKD` against a frozen teacher's softmax (the
   teacher's outputs on every training image and view are computed once and
   cached: `soft_targets`), or with plain cross-entropy on the labels (the
   student trained alone).
4. **Ablations**: repeated generations (a student's outputs become the next
   targets: `student_targets`), few-shot subsets (`few_shot_indices`),
   captions as queries, and image-text retrieval through a learned
   projection (`retrieval_recalls`).

Augmentation is a horizontal flip only, with the teacher's outputs cached
for both views (`frozen.FixedViews.mirrored`): a student always imitates the teacher's answer for
exactly the image it sees. Captions of the flipped view swap "left" and
"right". Every inference pass goes through `kdutils.frozen.outputs`, every
training run through `kdutils.train.train` with a checkpoint keyed by
everything that defines it, so a rerun resumes or returns at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import metrics, splits
from .augment import as_float_images
from .cache import cache_root, cached, code_fingerprint, content_digest, key_digest, model_fingerprint
from .distillers import CrossEntropy, SoftTargetKD
from .errors import ConfigError
from .frozen import FixedViews, outputs
from .selfdistill_data import in_order, indices_of, labels_of
from .selfdistill_encoders import Student
from .splits import TensorRows
from .selfdistill_features import FrozenFeatures
from .text_queried_head import TextQueriedHead
from .parallel import launch, per_example
from .recipes import ParallelRunSettings, Recipe, RunSettings
from .train import seed_everything, train

__all__ = ["HeadClassifier", "HeadRecipe", "SelfDistillStudentRecipe", "fit_teacher", "head_logits_and_labels",
           "soft_targets", "fit_student", "student_logits", "student_targets"]

# ----------------------------------------------------------------------------- teachers

class HeadClassifier(nn.Module):
    """What trains on frozen features: a linear layer (no text) or the image-text head in one of its modes.

    Modes: "linear" (LayerNorm + linear on the pooled output), "prompt" (the
    thesis: each image queried with its own class prompt), "caption" (the
    thesis with each image's own caption), "label_free" (all class prompts
    query every image). `label_free_scores` evaluates any head without labels.
    """

    MODES = ("linear", "prompt", "caption", "label_free")

    def __init__(self, mode: str, module: nn.Module, class_queries: torch.Tensor | None = None):
        super().__init__()
        if mode not in self.MODES:
            raise ConfigError(f"teacher mode must be one of {self.MODES}, got '{mode}'.")
        if mode != "linear" and class_queries is None:
            raise ConfigError(f"teacher mode '{mode}' needs the class prompts' encodings.")
        self.mode, self.module = mode, module
        self.register_buffer("class_queries", class_queries if class_queries is not None else torch.empty(0))

    @property
    def has_text(self) -> bool:
        return self.mode != "linear"

    def forward(self, tokens, pooled, labels, queries=None):
        if self.mode == "linear":
            return self.module(pooled)
        if self.mode == "label_free":
            return self.label_free_scores(tokens)
        if self.mode == "prompt":
            queries = self.class_queries[labels]
        elif queries is None:
            raise ValueError("the caption teacher needs each image's caption encoding.")
        return self.module.own_prompt_logits(tokens, queries)

    def label_free_scores(self, tokens, return_attention: bool = False):
        if not self.has_text:
            raise ValueError("the linear teacher has no prompts to score.")
        return self.module.class_scores(tokens, self.class_queries, return_attention)


@dataclass(frozen=True)
class HeadRecipe(RunSettings):
    """How a head trains: AdamW at `lr` with warm-up and cosine decay for `epochs` (`cfg.phase_epochs`: one in a
    dry run) of `batch_size`; the head's width `dim` and attention `heads`; at most `max_steps` batches per epoch."""

    epochs: int
    lr: float
    dim: int
    heads: int
    batch_size: int

    @classmethod
    def of(cls, cfg) -> HeadRecipe:
        return cls(cfg.phase_epochs(cfg.s1_head_epochs), cfg.s1_head_lr, cfg.s1_head_dim, cfg.s1_head_heads,
                   cfg.batch_size, **RunSettings.of_profile(cfg))


@dataclass(frozen=True)
class SelfDistillStudentRecipe(ParallelRunSettings):
    """How a study-1 student trains, on the head's soft targets or alone: `_student_optimizer` by architecture
    (`vit_lr`, `resnet_lr`) with warm-up and cosine decay for `epochs` (`cfg.phase_epochs`: one in a dry run) of
    `batch_size`, on `processes` data-parallel processes."""

    epochs: int
    batch_size: int
    vit_lr: float
    resnet_lr: float

    @classmethod
    def of(cls, cfg) -> SelfDistillStudentRecipe:
        return cls(cfg.phase_epochs(cfg.s1_student_epochs), cfg.s1_student_batch_size, cfg.s1_vit_student_lr,
                   cfg.s1_resnet_student_lr, **ParallelRunSettings.of_profile(cfg))


def _train_loader(dataset, generator, recipe: HeadRecipe | SelfDistillStudentRecipe, *, steps: int | None,
                  batch_size: int):
    """(loader, epochs, total steps): shuffled epochs, or with a step budget (few-shot) one epoch of `steps`
    batches drawn with replacement, so 10 images and 500 images train for the same number of steps."""
    common = {"batch_size": batch_size, "num_workers": recipe.num_workers}
    if steps is None:
        batches = splits.loader(dataset, shuffle=True, generator=generator,
                                drop_last=len(dataset) >= 4 * batch_size, **common)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=steps * batch_size,
                                                 generator=generator)
        batches = splits.loader(dataset, sampler=sampler, **common)
    epochs = 1 if steps is not None else recipe.epochs
    return batches, epochs, max(1, epochs * min(len(batches), recipe.max_steps or len(batches)))


def fit_teacher(mode: str, feats: FrozenFeatures, train_set, recipe: HeadRecipe, *, seed: int, num_classes: int,
                class_queries: torch.Tensor | None = None, caption_table: torch.Tensor | None = None,
                val: tuple | None = None, steps: int | None = None, desc: str = "teacher"):
    """Train a teacher on frozen features with cross-entropy; return (HeadClassifier, History).

    `caption_table` (views, N, text_dim) holds the caption encodings of the
    training split (mode "caption"). `val` = (features, dataset, caption
    table or None) adds per-epoch validation accuracy to the history: with
    the true prompt ("val_top1_true_prompt", leakage for a text head) and
    label-free ("val_top1"). `steps` replaces `epochs` by a step budget.
    """
    device = feats.device
    gen = seed_everything(seed)
    if mode == "linear":
        module = nn.Sequential(nn.LayerNorm(feats.pooled_dim), nn.Linear(feats.pooled_dim, num_classes))
    else:
        module = TextQueriedHead(feats.token_dim, class_queries.shape[1], num_classes, dim=recipe.dim,
                               heads=recipe.heads)
    teacher = HeadClassifier(mode, module, None if class_queries is None else class_queries.float()).to(device)
    # cached features need no pixels: the same sampler draws the same order over (label, index) pairs alone
    items = (TensorRows(labels_of(train_set), indices_of(train_set)) if feats.in_memory
             else train_set)
    loader, epochs, total = _train_loader(items, gen, recipe, steps=steps, batch_size=recipe.batch_size)
    table = caption_table.to(device) if caption_table is not None else None
    distiller = CrossEntropy()

    def compute_loss(batch):
        labels, index = batch[-2:]
        view = torch.randint(0, feats.views.n_views, (len(labels),), device=labels.device)
        tokens, pooled = feats(batch[0] if len(batch) == 3 else None, index, view)
        queries = table[view, index] if table is not None else None
        return distiller(teacher(tokens, pooled, labels, queries), None, labels)

    def evaluate():
        vfeats, vset, vtable = val
        out = {}
        logits, labels = head_logits_and_labels(teacher, vfeats, vset, caption_table=vtable)
        if teacher.has_text and mode != "label_free":
            out["val_top1_true_prompt"] = metrics.accuracy(labels, logits)
            logits, labels = head_logits_and_labels(teacher, vfeats, vset, "label_free")
        out["val_top1"] = metrics.accuracy(labels, logits)
        return out

    key = {"what": "s1-teacher", "mode": mode, "features": feats.key, "subset": content_digest(indices_of(train_set)),
           "queries": content_digest(class_queries) if class_queries is not None else None,
           "captions": content_digest(caption_table) if caption_table is not None else None,
           "epochs": epochs, "steps": total, "lr": recipe.lr, "dim": recipe.dim, "heads": recipe.heads,
           "batch": recipe.batch_size, "seed": seed, "dry_run": recipe.dry_run, "val": val is not None,
           "code": code_fingerprint(__name__)}
    digest = key_digest(key)
    history = train(teacher, compute_loss, loader, Recipe(
        optimizer="adamw", lr=recipe.lr, weight_decay=1e-4, schedule="warmup_cosine", warmup_fraction=0.1,
        warmup_cap=200, epochs=epochs, max_steps=recipe.max_steps), evaluate=evaluate if val is not None else None,
        checkpoint=cache_root() / "s1" / "teachers" / f"{digest}.pt", checkpoint_key=digest, device=device,
        desc=desc, progress=recipe.progress)
    return teacher.eval(), history


def head_logits_and_labels(teacher: HeadClassifier, feats: FrozenFeatures, dataset, mode: str | None = None,
                           caption_table: torch.Tensor | None = None, view: int = 0):
    """(logits (N, C), labels) of a head over a split in one view, on the CPU.

    `mode` is the head's own (None: as trained; for the thesis's head "prompt",
    each image queried with its true prompt, or "caption", its own caption:
    label leakage) or "label_free" (every class prompt queries the image, no
    label used).
    """
    mode = mode or teacher.mode
    if mode not in (teacher.mode, "label_free"):
        raise ValueError(f"a '{teacher.mode}' head is evaluated as trained or 'label_free', not '{mode}'.")

    def logits(batch):
        images, labels, index = batch
        tokens, pooled = feats(images, index, torch.full_like(index, view))
        if mode == "label_free":
            return teacher.label_free_scores(tokens)
        queries = caption_table[view, index].to(feats.device) if caption_table is not None else None
        return teacher(tokens, pooled, labels.to(feats.device), queries)

    return outputs(teacher, in_order(dataset), logits), labels_of(dataset)


def mirrored(dataset) -> FixedViews:
    """Every image of the split under `dataset` (the split or a `Subset`) and its mirror: a student's two views."""
    return FixedViews.mirrored(len(dataset.dataset) if isinstance(dataset, torch.utils.data.Subset) else len(dataset))


def _per_view_table(train_set, views: FixedViews, logits_in_view) -> torch.Tensor:
    """(views, N_split, C) float16 of `logits_in_view(v)` over `train_set`; rows outside a subset stay zero."""
    per_view = torch.stack([logits_in_view(v) for v in range(views.n_views)]).half()
    out = torch.zeros(views.n_views, views.n, per_view.shape[2], dtype=torch.float16)
    out[:, indices_of(train_set)] = per_view
    return out


def soft_targets(teacher: HeadClassifier, feats: FrozenFeatures, train_set, caption_table=None) -> torch.Tensor:
    """The frozen teacher's logits on every training item and view, (views, N_split, C) float16; cached.

    Rows of items outside `train_set` (a few-shot subset) stay zero. The
    student's target is their softmax (`fit_student`).
    """
    key = {"what": "s1-soft-targets", "teacher": model_fingerprint(teacher), "mode": teacher.mode,
           "features": feats.key, "subset": content_digest(indices_of(train_set)),
           "captions": content_digest(caption_table) if caption_table is not None else None}
    return cached("s1-soft-targets", key, lambda: _per_view_table(
        train_set, feats.views, lambda v: head_logits_and_labels(teacher, feats, train_set,
                                                                  caption_table=caption_table, view=v)[0]),
        verbose=False)


# ----------------------------------------------------------------------------- students

def _student_optimizer(kind: str, *, vit_lr: float, resnet_lr: float) -> tuple[str, float, float]:
    """(optimiser, lr, weight decay) by architecture: SGD with momentum for ResNets, AdamW for ViTs.

    The usual recipes of each family (a ViT trained from scratch with SGD
    barely learns); measured on SynthWorld, SGD 0.1 at batch 64 took a
    SmallResNet from 48% (AdamW 2e-3, batch 128) to 71% in five epochs.
    """
    if kind == "clip_vision":
        return "adamw", vit_lr, 0.05
    return "sgd", resnet_lr, 5e-4


def fit_student(spec: dict, train_set, recipe: SelfDistillStudentRecipe, *, data_key: dict, seed: int,
                num_classes: int, device, targets: torch.Tensor | None = None, val_set=None, steps: int | None = None,
                batch_size: int | None = None, desc: str = "student"):
    """Train a fresh student (`Student(spec)`) on images only; return (Student, History).

    With `targets` (views, N, C teacher logits, see `soft_targets`) the loss is
    the soft cross-entropy against their softmax, in the view the student
    sees; without, plain cross-entropy on the labels (the student alone).
    `_student_optimizer` with warm-up and cosine decay; random horizontal flips.
    With `recipe.processes` > 1 it trains data-parallel (`parallel.launch`).
    """
    return launch(_fit_student, (spec, train_set, recipe, data_key, seed, num_classes, device, targets, val_set,
                                 steps, batch_size, desc), recipe.processes)


def _fit_student(spec: dict, train_set, recipe: SelfDistillStudentRecipe, data_key: dict, seed: int, num_classes: int,
                 device, targets, val_set, steps, batch_size, desc: str):
    """`fit_student`'s training, run by `launch`."""
    device = torch.device(device)
    gen = seed_everything(seed)
    student = Student(spec, num_classes)
    batch_size = batch_size or recipe.batch_size
    loader, epochs, total = _train_loader(train_set, gen, recipe, steps=steps, batch_size=batch_size)
    opt_name, lr, wd = _student_optimizer(student.kind, vit_lr=recipe.vit_lr, resnet_lr=recipe.resnet_lr)
    distiller = CrossEntropy() if targets is None else SoftTargetKD()
    views = mirrored(train_set)

    def compute_loss(batch):
        images, labels, index = batch
        view = per_example(lambda n: torch.randint(0, views.n_views, (n,), device=labels.device), len(labels))
        logits = student(views.render(as_float_images(images), index, view))
        teacher = None if targets is None else targets[view.cpu(), index.cpu()].to(logits.device)
        return distiller(logits, teacher, labels)

    def evaluate():
        logits, labels = student_logits(student, val_set, device)
        return {"val_top1": metrics.accuracy(labels, logits)}

    key = {"what": "s1-student", "spec": spec, "classes": num_classes, "data": data_key,
           "subset": content_digest(indices_of(train_set)), "n": len(train_set),
           "targets": content_digest(targets) if targets is not None else None, "epochs": epochs, "steps": total,
           "optimizer": [opt_name, lr, wd], "batch": batch_size, "seed": seed,
           "dry_run": recipe.dry_run, "val": val_set is not None, "code": code_fingerprint(__name__)}
    digest = key_digest(key)
    history = train(student, compute_loss, loader, Recipe(
        optimizer=opt_name, lr=lr, weight_decay=wd, schedule="warmup_cosine", warmup_fraction=0.1, warmup_cap=500,
        epochs=epochs, max_steps=recipe.max_steps), evaluate=evaluate if val_set is not None else None,
        checkpoint=cache_root() / "s1" / "students" / f"{digest}.pt", checkpoint_key=digest, device=device,
        desc=desc, progress=recipe.progress)
    return student.eval(), history


def student_logits(student: Student, dataset, device, view: int = 0, features: bool = False):
    """(logits or penultimate features, labels) of a student over a split in one of its views (`mirrored`), on
    the CPU."""
    forward, views = (student.features if features else student), mirrored(dataset)

    def logits(batch):
        images, _, index = batch
        return forward(views.render(as_float_images(images), index, torch.full_like(index, view)))

    return outputs(student, in_order(dataset), logits, device=device), labels_of(dataset)


def student_targets(student: Student, train_set, device) -> torch.Tensor:
    """A student's logits on every training item and view (views, N, C) float16: the next generation's targets."""
    return _per_view_table(train_set, mirrored(train_set),
                           lambda v: student_logits(student, train_set, device, view=v)[0])


