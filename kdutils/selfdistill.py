"""Study 1: self-distillation through a text-queried image-text head, and its ablations.

The thesis's recipe, in order (data in `kdutils.selfdistill_data`, encoders
and students in `kdutils.selfdistill_encoders`, the method here):

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
for both views (`VIEWS`): a student always imitates the teacher's answer for
exactly the image it sees. Captions of the flipped view swap "left" and
"right". Every inference pass goes through `kdutils.frozen.outputs`, every
training run through `kdutils.train.fit` with a checkpoint keyed by
everything that defines it, so a rerun resumes or returns at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from . import clip as kclip
from . import metrics
from .cache import cache_root, cached, code_fingerprint, key_digest, model_fingerprint
from .distillers import CrossEntropy, SoftTargetKD
from .errors import ConfigError
from .frozen import outputs
from .losses import ClipLoss
from .selfdistill_data import in_order, indices_of, labels_of
from .selfdistill_encoders import ImageEncoder, Student
from .text_queried_head import TextQueriedHead
from .train import Recipe, launch, per_example, seed_everything, train

__all__ = [
    "VIEWS", "FrozenFeatures", "features_of", "HeadClassifier", "HeadRecipe", "StudentRecipe", "fit_teacher",
    "teacher_logits", "soft_targets",
    "fit_student", "student_logits", "student_targets", "topk", "few_shot_indices",
    "retrieval_recalls", "attention_maps", "tensor_digest",
]

VIEWS = ("plain", "hflip")


def tensor_digest(t: torch.Tensor) -> str:
    """A short hash of a tensor's values (cache keys of runs that depend on a tensor)."""
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(str((t.dtype, tuple(t.shape))).encode() + t.view(-1).view(torch.uint8).numpy().tobytes()
                          ).hexdigest()[:16]


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _flip(x: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """Flip the images whose view is 1 (hflip), per sample."""
    return torch.where(view.view(-1, 1, 1, 1).bool(), x.flip(-1), x)


# ----------------------------------------------------------------------------- frozen features

class FrozenFeatures:
    """A frozen encoder's (tokens, pooled) for every item and view of one split.

    Cached in memory and on disk (tokens in float16) when they fit in
    `cache_mb` (the profile's `s1_feature_cache_mb`); otherwise (ViT-B/16 on
    ImageNet) computed per batch by the encoder, which is the same computation
    without the storage. The one-off pass reads batches of at least 256 images.
    """

    def __init__(self, encoder: ImageEncoder, dataset, data_key: dict, split: str, views: int, device, *,
                 cache_mb: float, batch_size: int = 256, num_workers: int = 0, progress: bool = False):
        self.encoder, self.views, self.device = encoder, views, torch.device(device)
        self.key = {"encoder": encoder.fingerprint, "data": data_key, "split": split, "views": views,
                    "in_memory": None}
        first = _to_unit(dataset[0][0].unsqueeze(0)).to(self.device)
        tokens, pooled = encoder(first)
        self.num_tokens, self.token_dim, self.pooled_dim = tokens.shape[1], tokens.shape[2], pooled.shape[1]
        mb = len(dataset) * views * (self.num_tokens * self.token_dim * 2 + self.pooled_dim * 4) / 2**20
        self.in_memory = mb <= cache_mb
        self.key["in_memory"] = self.in_memory  # stored tokens are float16: teachers trained on them differ slightly
        self.tokens = self.pooled = None
        if self.in_memory:
            stored = cached("s1-features", self.key, lambda: self._extract(
                dataset, max(batch_size, 256), num_workers, split, progress), verbose=False)
            self.tokens, self.pooled = stored["tokens"], stored["pooled"]

    def _extract(self, dataset, batch_size: int, num_workers: int, split: str, progress: bool) -> dict:
        """Every item's tokens (float16) and pooled output in every view, one `frozen.outputs` pass per view."""
        size = self.num_tokens * self.token_dim
        toks, pools = [], []
        for v in range(self.views):
            def flat_outputs(batch, v=v):
                x = _to_unit(batch[0].to(self.device))
                return torch.cat([t.flatten(1) for t in self.encoder(x.flip(-1) if v else x)], dim=1)

            flat = outputs(self.encoder, in_order(dataset, batch_size, num_workers), flat_outputs, progress=progress,
                           desc=f"{self.encoder.name} {split} [{VIEWS[v]}]")
            toks.append(flat[:, :size].reshape(-1, self.num_tokens, self.token_dim).half())
            pools.append(flat[:, size:])
        return {"tokens": torch.stack(toks), "pooled": torch.stack(pools)}

    def __call__(self, images: torch.Tensor, index: torch.Tensor, view: torch.Tensor):
        """(tokens, pooled) as float32 on the device for a batch of items in the given views."""
        if self.in_memory:
            i, v = index.cpu(), view.cpu()
            return self.tokens[v, i].to(self.device).float(), self.pooled[v, i].to(self.device)
        return self.encoder(_flip(_to_unit(images.to(self.device)), view.to(self.device)))


def features_of(feats: FrozenFeatures, dataset, view: int = 0, batch_size: int = 512):
    """Pooled features (N, P) of the items of `dataset` (a split or a subset) in one view, on the CPU."""
    if feats.in_memory:
        return feats.pooled[view, indices_of(dataset)]
    return outputs(feats.encoder, in_order(dataset, batch_size),
                   lambda b: feats(b[0], b[2], torch.full_like(b[2], view))[1])


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

    def forward(self, tokens, pooled, labels, queries=None, return_attention: bool = False):
        if self.mode == "linear":
            return self.module(pooled)
        if self.mode == "label_free":
            return self.module.class_scores(tokens, self.class_queries, return_attention)
        if self.mode == "prompt":
            queries = self.class_queries[labels]
        elif queries is None:
            raise ValueError("the caption teacher needs each image's caption encoding.")
        return self.module.own_prompt_logits(tokens, queries, return_attention)

    def label_free_scores(self, tokens, return_attention: bool = False):
        if not self.has_text:
            raise ValueError("the linear teacher has no prompts to score.")
        return self.module.class_scores(tokens, self.class_queries, return_attention)


@dataclass(frozen=True)
class HeadRecipe:
    """How a head trains: AdamW at `lr` with warm-up and cosine decay for `epochs` (one in a dry run) of
    `batch_size`; the head's width `dim` and attention `heads`; at most `max_steps` batches per epoch."""

    epochs: int
    lr: float
    dim: int
    heads: int
    batch_size: int
    num_workers: int = 0
    max_steps: int | None = None
    dry_run: bool = False
    progress: bool = False

    @classmethod
    def of(cls, cfg) -> HeadRecipe:
        return cls(cfg.s1_head_epochs, cfg.s1_head_lr, cfg.s1_head_dim, cfg.s1_head_heads, cfg.batch_size,
                   cfg.num_workers, cfg.max_steps, cfg.dry_run, cfg.progress)


@dataclass(frozen=True)
class StudentRecipe:
    """How a student trains: `_student_optimizer` by architecture (`vit_lr`, `resnet_lr`) with warm-up and
    cosine decay for `epochs` (one in a dry run) of `batch_size`, on `processes` data-parallel processes."""

    epochs: int
    batch_size: int
    vit_lr: float
    resnet_lr: float
    num_workers: int = 0
    max_steps: int | None = None
    dry_run: bool = False
    progress: bool = False
    processes: int = 1

    @classmethod
    def of(cls, cfg) -> StudentRecipe:
        return cls(cfg.s1_student_epochs, cfg.s1_student_batch_size, cfg.s1_vit_student_lr, cfg.s1_resnet_student_lr,
                   cfg.num_workers, cfg.max_steps, cfg.dry_run, cfg.progress, cfg.num_processes)


def _train_loader(dataset, generator, recipe: HeadRecipe | StudentRecipe, *, epochs: int, steps: int | None,
                  batch_size: int):
    """(loader, epochs, total steps): shuffled epochs, or with a step budget (few-shot) one epoch of `steps`
    batches drawn with replacement, so 10 images and 500 images train for the same number of steps."""
    if steps is None:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                             num_workers=recipe.num_workers, drop_last=len(dataset) >= 4 * batch_size)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=steps * batch_size,
                                                 generator=generator)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                             num_workers=recipe.num_workers)
        epochs = 1
    epochs = 1 if recipe.dry_run else epochs
    return loader, epochs, max(1, epochs * min(len(loader), recipe.max_steps or len(loader)))


def fit_teacher(mode: str, feats: FrozenFeatures, train_set, recipe: HeadRecipe, *, seed: int, num_classes: int,
                class_queries: torch.Tensor | None = None, caption_table: torch.Tensor | None = None,
                val: tuple | None = None, epochs: int | None = None, steps: int | None = None, desc: str = "teacher"):
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
    loader, epochs, total = _train_loader(train_set, gen, recipe, epochs=epochs or recipe.epochs, steps=steps,
                                          batch_size=recipe.batch_size)
    table = caption_table.to(device) if caption_table is not None else None
    distiller = CrossEntropy()

    def compute_loss(batch):
        images, labels, index = batch
        view = torch.randint(0, feats.views, (len(labels),), device=labels.device)
        tokens, pooled = feats(images, index, view)
        queries = table[view, index] if table is not None else None
        return distiller(teacher(tokens, pooled, labels, queries), None, labels)

    def evaluate():
        vfeats, vset, vtable = val
        out = {}
        logits, labels = teacher_logits(teacher, vfeats, vset, "own", vtable)
        if teacher.has_text and mode != "label_free":
            out["val_top1_true_prompt"] = metrics.accuracy(labels, logits)
            logits, labels = teacher_logits(teacher, vfeats, vset, "label_free")
        out["val_top1"] = metrics.accuracy(labels, logits)
        return out

    key = {"what": "s1-teacher", "mode": mode, "features": feats.key, "subset": tensor_digest(indices_of(train_set)),
           "queries": tensor_digest(class_queries) if class_queries is not None else None,
           "captions": tensor_digest(caption_table) if caption_table is not None else None,
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


def teacher_logits(teacher: HeadClassifier, feats: FrozenFeatures, dataset, how: str = "own",
                   caption_table: torch.Tensor | None = None, view: int = 0, batch_size: int = 512):
    """(logits (N, C), labels) of a teacher over a split in one view, on the CPU.

    how="own": the teacher as trained (a text head queried with each image's
    true prompt or caption: label leakage); how="label_free": every class
    prompt queries the image, no label used.
    """
    if how not in ("own", "label_free"):
        raise ValueError(f"how must be 'own' or 'label_free', got '{how}'.")

    def logits(batch):
        images, labels, index = batch
        tokens, pooled = feats(images, index, torch.full_like(index, view))
        if how == "label_free":
            return teacher.label_free_scores(tokens)
        queries = caption_table[view, index].to(feats.device) if caption_table is not None else None
        return teacher(tokens, pooled, labels.to(feats.device), queries)

    return outputs(teacher, in_order(dataset, batch_size), logits), labels_of(dataset)


def _per_view_table(train_set, views: int, logits_in_view) -> torch.Tensor:
    """(views, N_split, C) float16 of `logits_in_view(v)` over `train_set`; rows outside a subset stay zero."""
    n = len(train_set.dataset) if isinstance(train_set, torch.utils.data.Subset) else len(train_set)
    per_view = [logits_in_view(v) for v in range(views)]
    out = torch.zeros(views, n, per_view[0].shape[1], dtype=torch.float16)
    for v, logits in enumerate(per_view):
        out[v, indices_of(train_set)] = logits.half()
    return out


def soft_targets(teacher: HeadClassifier, feats: FrozenFeatures, train_set, caption_table=None) -> torch.Tensor:
    """The frozen teacher's logits on every training item and view, (views, N_split, C) float16; cached.

    Rows of items outside `train_set` (a few-shot subset) stay zero. The
    student's target is their softmax (`fit_student`).
    """
    key = {"what": "s1-soft-targets", "teacher": model_fingerprint(teacher), "mode": teacher.mode,
           "features": feats.key, "subset": tensor_digest(indices_of(train_set)),
           "captions": tensor_digest(caption_table) if caption_table is not None else None}
    return cached("s1-soft-targets", key, lambda: _per_view_table(train_set, feats.views, lambda v: teacher_logits(
        teacher, feats, train_set, "own", caption_table, view=v)[0]), verbose=False)


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


def fit_student(spec: dict, train_set, recipe: StudentRecipe, *, data_key: dict, seed: int, num_classes: int, device,
                targets: torch.Tensor | None = None, val_set=None, epochs: int | None = None,
                steps: int | None = None, batch_size: int | None = None, desc: str = "student"):
    """Train a fresh student (`Student(spec)`) on images only; return (Student, History).

    With `targets` (views, N, C teacher logits, see `soft_targets`) the loss is
    the soft cross-entropy against their softmax, in the view the student
    sees; without, plain cross-entropy on the labels (the student alone).
    `_student_optimizer` with warm-up and cosine decay; random horizontal flips.
    With `recipe.processes` > 1 it trains data-parallel (`train.launch`).
    """
    return launch(_fit_student, (spec, train_set, recipe, data_key, seed, num_classes, device, targets, val_set,
                                 epochs, steps, batch_size, desc), recipe.processes)


def _fit_student(spec: dict, train_set, recipe: StudentRecipe, data_key: dict, seed: int, num_classes: int, device,
                 targets, val_set, epochs, steps, batch_size, desc: str):
    """`fit_student`'s training, run by `launch`."""
    device = torch.device(device)
    gen = seed_everything(seed)
    student = Student(spec, num_classes)
    batch_size = batch_size or recipe.batch_size
    loader, epochs, total = _train_loader(train_set, gen, recipe, epochs=epochs or recipe.epochs, steps=steps,
                                          batch_size=batch_size)
    opt_name, lr, wd = _student_optimizer(student.kind, vit_lr=recipe.vit_lr, resnet_lr=recipe.resnet_lr)
    distiller = CrossEntropy() if targets is None else SoftTargetKD()

    def compute_loss(batch):
        images, labels, index = batch
        view = per_example(lambda n: torch.randint(0, len(VIEWS), (n,), device=labels.device), len(labels))
        logits = student(_flip(_to_unit(images), view))
        teacher = None if targets is None else targets[view.cpu(), index.cpu()].to(logits.device)
        return distiller(logits, teacher, labels)

    def evaluate():
        logits, labels = student_logits(student, val_set, device)
        return {"val_top1": metrics.accuracy(labels, logits)}

    key = {"what": "s1-student", "spec": spec, "classes": num_classes, "data": data_key,
           "subset": tensor_digest(indices_of(train_set)), "n": len(train_set),
           "targets": tensor_digest(targets) if targets is not None else None, "epochs": epochs, "steps": total,
           "optimizer": [opt_name, lr, wd], "batch": batch_size, "seed": seed,
           "dry_run": recipe.dry_run, "val": val_set is not None, "code": code_fingerprint(__name__)}
    digest = key_digest(key)
    history = train(student, compute_loss, loader, Recipe(
        optimizer=opt_name, lr=lr, weight_decay=wd, schedule="warmup_cosine", warmup_fraction=0.1, warmup_cap=500,
        epochs=epochs, max_steps=recipe.max_steps), evaluate=evaluate if val_set is not None else None,
        checkpoint=cache_root() / "s1" / "students" / f"{digest}.pt", checkpoint_key=digest, device=device,
        desc=desc, progress=recipe.progress)
    return student.eval(), history


def student_logits(student: Student, dataset, device, view: int = 0, batch_size: int = 512,
                   features: bool = False):
    """(logits or penultimate features, labels) of a student over a split in one view, on the CPU."""
    forward = student.features if features else student

    def logits(batch):
        x = _to_unit(batch[0])
        return forward(x.flip(-1) if view else x)

    return outputs(student, in_order(dataset, batch_size), logits, device=device), labels_of(dataset)


def student_targets(student: Student, train_set, device) -> torch.Tensor:
    """A student's logits on every training item and view (views, N, C) float16: the next generation's targets."""
    return _per_view_table(train_set, len(VIEWS), lambda v: student_logits(student, train_set, device, view=v)[0])


def topk(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 in % (top-5 only when there are more than 5 classes)."""
    out = {"top1": metrics.accuracy(labels, logits)}
    if logits.shape[1] > 5:
        out["top5"] = metrics.topk_accuracy(logits, labels, 5)
    return out


# ----------------------------------------------------------------------------- ablations

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
    data = torch.utils.data.TensorDataset((train_image - mean) / std, train_text)
    loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=True, generator=gen, drop_last=len(data) >= 512)
    recipe = Recipe(optimizer="adamw", lr=1e-2, weight_decay=1e-4, schedule="warmup_cosine", warmup_fraction=0.1,
                    warmup_cap=100, epochs=epochs, max_steps=max_steps)
    train(model, lambda b: {"loss": loss_fn(proj(b[0]), b[1])}, loader, recipe, device=device,
          desc="retrieval projection", progress=False)
    n = min(gallery, len(test_image))
    with torch.no_grad():
        image_emb = proj(((test_image[:n] - mean) / std).to(device)).cpu()
    return kclip.retrieval_recalls(image_emb, test_text[:n], ks=(1, 5, 10))


@torch.no_grad()
def attention_maps(teacher: HeadClassifier, feats: FrozenFeatures, dataset, indices: Sequence[int], how: str = "own"):
    """Attention of a text head over image tokens for some items: (n, T) weights and the labels.

    how="own": the query is the image's true class prompt (the thesis's head);
    how="label_free": the map of the highest-scoring class prompt.
    """
    subset = torch.utils.data.Subset(dataset, list(indices))
    images, labels, index = next(iter(torch.utils.data.DataLoader(subset, batch_size=len(subset))))
    tokens, _ = feats(images, index, torch.zeros_like(index))
    labels = labels.to(feats.device)
    if how == "own":
        logits, weights = teacher.module.own_prompt_logits(tokens, teacher.class_queries[labels], True)
        return weights.cpu(), labels.cpu(), logits.argmax(1).cpu()
    scores, weights = teacher.label_free_scores(tokens, True)
    best = scores.argmax(1)
    return weights[torch.arange(len(best)), best].cpu(), labels.cpu(), best.cpu()
