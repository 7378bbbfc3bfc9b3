"""Transfer learning with knowledge distillation on frozen backbones (study 4).

In the thesis's TL and TL+KD every backbone is frozen and only a new linear
head trains, so a training image enters the backbones in only a few distinct
forms: itself and its mirror (plus, in H4, a few corrupted versions). This
module computes the backbone features and the teacher's logits of those
*views* once (`frozen_features`, cached on disk) and trains the heads on the
cached tensors (`train_head` with a `CachedSource`). The plain loop, which
runs the backbones at every step (`PlainSource`), is kept as the reference:
both draw the same views from the same generator, so with one seed they
produce the same head (`python -m kdutils bench tlkd` times both and compares them).

"Frozen" here means frozen weights *and* batch-norm statistics (backbones in
eval mode): that is what makes a backbone a fixed feature extractor, and
what makes caching exact.

Also here: the study's data (SynthWorld target task at tiny/small, CIFAR-10
at paper), its backbones, the H4 conditions (stratified subsets, label noise,
CenterBlack / QuarterBlack views), and the small table helpers the notebook
reports with.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .cache import cached, model_fingerprint, results_root
from .distillers import CrossEntropy, HintonKD
from .errors import ConfigError
from .frozen import batches, outputs
from .models import SMALL_ARCHS, weights_requirement
from .paths import under
from .teacher import CIFAR10_MEAN, CIFAR10_STD, FrozenTeacher, Normalize
from .train import History, Recipe, seed_everything, single_cpu_thread, train

__all__ = [
    "Split", "StudyData", "load_data", "paper_requirements", "load_encoder",
    "ViewBank", "frozen_features", "CachedSource", "PlainSource", "view_logits", "head_logits",
    "HeadParams", "HeadRun", "train_head", "h1_seed", "tl_vs_kd",
    "subset_indices", "noisy_labels", "per_class_gain", "first_epoch_reaching",
    "foreground_analysis", "study_seeds",
]

VIEWS_FLIP = 2  # a training image and its mirror


# -------------------------------------------------------------------------- data

def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@dataclass
class Split:
    """Images (float (N, 3, H, W) in [0, 1]), labels, and foreground masks where known.

    `key` identifies the pixels and labels (a content hash) for the feature
    cache. `masks` is (N, H, W) bool and `has_mask` (N,) says which are real.
    """

    images: torch.Tensor
    labels: torch.Tensor
    key: str
    masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "Split":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        masks = None if self.masks is None else self.masks[idx.numpy()]
        has = None if self.has_mask is None else self.has_mask[idx.numpy()]
        return Split(self.images[idx], self.labels[idx], f"{self.key}[{_digest(idx.numpy())}]", masks, has)


@dataclass
class StudyData:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _float_images(uint8_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(uint8_nhwc).permute(0, 3, 1, 2).float().div_(255)


def _split(images_u8: np.ndarray, labels: np.ndarray, masks=None) -> Split:
    labels = np.asarray(labels, dtype=np.int64)
    has = None if masks is None else np.ones(len(labels), dtype=bool)
    return Split(_float_images(images_u8), torch.from_numpy(labels), _digest(images_u8, labels), masks, has)


def load_data(cfg) -> StudyData:
    """The study's train / validation / test splits.

    tiny / small: the SynthWorld target task (10 shapes) with its exact masks.
    paper: CIFAR-10 from the official python batches under `data_root`; the
    last `s4_val_fraction` of a fixed permutation of the training set is held
    out for validation (early stopping), the official test set is the test
    set, and foreground masks come from `s4_mask_annotations` when given.
    """
    if cfg.profile != "paper":
        from .pretrain import synth_split

        parts = {}
        for name in ("train", "val", "test"):
            b = synth_split(cfg, f"target_{name}")
            parts[name] = _split(b.images, b.labels, b.masks)
        return StudyData(**parts, class_names=list(b.class_names), source="SynthWorld target task")

    from .datasets import cifar

    root = under(cfg.data_root)
    train_ds = cifar(root, "cifar10", train=True, verify=cfg.s4_verify_data)
    test_ds = cifar(root, "cifar10", train=False, verify=cfg.s4_verify_data)
    x, y = np.asarray(train_ds.data), np.asarray(train_ds.targets)
    order = np.random.default_rng(0).permutation(len(y))
    n_val = int(round(cfg.s4_val_fraction * len(y)))
    if not 0 < n_val < len(y):
        raise ConfigError(f"s4_val_fraction={cfg.s4_val_fraction} leaves no training or validation images.")
    tr, va = np.sort(order[:-n_val]), np.sort(order[-n_val:])
    xt, yt = np.asarray(test_ds.data), np.asarray(test_ds.targets)
    test = _split(xt, yt)
    if cfg.s4_mask_annotations:
        test.masks, test.has_mask = _annotated_masks(under(cfg.s4_mask_annotations), len(yt), xt.shape[1:3])
    return StudyData(_split(x[tr], y[tr]), _split(x[va], y[va]), test, class_names=list(train_ds.classes),
                     source="CIFAR-10")


def _annotated_masks(path: Path, n: int, size) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the annotated test images (index = last number in the file name), nearest-resized."""
    from PIL import Image

    from .attribution import coco_polygon_masks, index_from_file_name

    masks, has = np.zeros((n, *size), dtype=bool), np.zeros(n, dtype=bool)
    for name, mask in coco_polygon_masks(path).items():
        i = index_from_file_name(name)
        if not 0 <= i < n:
            raise ConfigError(f"{path}: annotated image '{name}' has index {i}, outside the test set (0-{n - 1}).")
        if mask.shape != tuple(size):
            mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
        masks[i], has[i] = mask, True
    return masks, has


def paper_requirements(cfg) -> dict:
    """{what: (path, how to get it)} for `session.require_files` at the paper profile.

    Data always (dry runs read fixture batches); weights unless `dry_run`
    (which allows random weights); the mask annotations when configured.
    """
    root = under(cfg.data_root)
    need = {"CIFAR-10 python batches": (
        root / "cifar-10-batches-py",
        f"Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into '{root}' "
        "(or set data_root).")}
    if not cfg.dry_run:
        for role, arch, weights in (("student", cfg.student_arch, cfg.s4_student_weights),
                                    ("teacher", cfg.teacher_arch, cfg.s4_teacher_weights),
                                    ("H4 teacher", cfg.s4_h4_teacher_arch, cfg.s4_h4_teacher_weights)):
            need[f"{role} weights {arch} {weights}"] = weights_requirement(arch, weights)
    if cfg.s4_mask_annotations:
        need["foreground polygon annotations"] = (
            under(cfg.s4_mask_annotations),
            "Export COCO-format polygons from the VGG Image Annotator; name each image by its test index.")
    return need


# --------------------------------------------------------------------- backbones

def _torchvision_backbone(name: str, weights: str, input_size: int, allow_random: bool) -> tuple[nn.Module, int]:
    """A torchvision classifier without its head (outputs features), and the input size it needs."""
    import torchvision

    from .models import torchvision_model

    is_vit = name.startswith("vit")
    if allow_random:
        kwargs = {"image_size": input_size} if is_vit and input_size else {}
        with torch.random.fork_rng(devices=[]):  # the same random weights every dry run
            torch.manual_seed(0)
            net = torchvision.models.get_model(name, weights=None, **kwargs)
    else:
        net = torchvision_model(name, weights)
    if is_vit:
        if input_size and input_size != net.image_size:
            raise ConfigError(f"{name} with {weights} takes {net.image_size}x{net.image_size} images, "
                              f"but its input size is set to {input_size}.")
        input_size = net.image_size
        net.heads = nn.Identity()
    elif hasattr(net, "fc"):
        net.fc = nn.Identity()
    else:
        raise ConfigError(f"do not know how to remove the head of torchvision model '{name}'.")
    return net, input_size


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_encoder(arch: str, cfg, *, weights: str = "", input_size: int = 0, teacher: bool = False
                 ) -> tuple[nn.Module, dict]:
    """A frozen backbone mapping [0, 1] images to features, and a description of it.

    SynthWorld architectures (`resnet_s`...) are pretrained on the source task
    by `kdutils.pretrain.pretrain_source` (cached; seed: the one `backbone_seeds`) and used at 32x32.
    torchvision names are loaded with `weights` (random in dry runs), resized
    to `input_size` (0: the images' own size) and normalised with the CIFAR-10
    statistics, as in the thesis; students are made SHAP-safe
    (`attribution.shap_safe_resnet`), teachers are wrapped in `FrozenTeacher`.
    """
    if arch in SMALL_ARCHS:
        from .pretrain import pretrain_source

        if len(set(cfg.backbone_seeds)) > 1:
            raise ConfigError(f"study 4 replicates over its trained heads with one pair of frozen backbones; got "
                              f"backbone_seeds={cfg.backbone_seeds}. Run it once per backbone seed instead "
                              f"(-p backbone_seeds=[1], ...).")
        net, summary = pretrain_source(arch, cfg, seed=cfg.backbone_seeds[0])
        net.fc, net.dropout = nn.Identity(), nn.Identity()
        info = {"arch": arch, "weights": "pretrained here on the SynthWorld source task (60 classes)",
                "source_top1": summary["source_top1"], "input_size": cfg.image_size,
                "parameters": sum(p.numel() for p in net.parameters())}
        encoder = FrozenTeacher(net, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if teacher else net
        return _freeze(encoder), info
    net, size = _torchvision_backbone(arch, weights, input_size, allow_random=cfg.dry_run)
    if not teacher and arch.startswith(("resnet", "wide_resnet")):
        from .attribution import shap_safe_resnet

        net = shap_safe_resnet(net)
    info = {"arch": arch, "weights": "random (dry run)" if cfg.dry_run else weights,
            "input_size": size or cfg.image_size, "parameters": sum(p.numel() for p in net.parameters())}
    size = size or None
    encoder = (FrozenTeacher(net, CIFAR10_MEAN, CIFAR10_STD, size) if teacher
               else nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD, size), net))
    return _freeze(encoder), info


# ------------------------------------------------------------------------- views

@dataclass(frozen=True, eq=False)
class ViewBank:
    """The fixed views of every image of a split: pre-drawn corruptions x (optionally) mirrors.

    View v of image i is corruption draw v // m (m = 2 with mirrors, else 1),
    mirrored when v % m == 1. A draw is applied with probability `p` and its
    random size or quadrant is drawn once, here, from `seed`: so a cache of
    the views' features is exact, and a training step that picks a random
    view per image sees a corruption with probability p, as a random
    per-epoch transform would (with `draws` distinct corruptions per image).
    Kinds: "none", "center_black" (a centred black square of side
    U(min_side, 1) x image side), "quarter_black" (one of the four quadrants).
    """

    kind: str
    n: int
    draws: int
    mirrors: bool
    p: float = 0.0
    seed: int = 0
    min_side: float = 1.0
    apply: torch.Tensor = field(default=None, repr=False)
    side: torch.Tensor = field(default=None, repr=False)
    quadrant: torch.Tensor = field(default=None, repr=False)

    KINDS = ("none", "center_black", "quarter_black")

    @classmethod
    def plain(cls, n: int) -> "ViewBank":
        """Evaluation: each image once, untouched."""
        return cls.corrupted("none", n, p=0.0, draws=1, mirrors=False)

    @classmethod
    def mirrored(cls, n: int) -> "ViewBank":
        """Clean training: each image and its mirror (random horizontal flip)."""
        return cls.corrupted("none", n, p=0.0, draws=1, mirrors=True)

    @classmethod
    def corrupted(cls, kind: str, n: int, *, p: float, draws: int, seed: int = 0, min_side: float = 200 / 224,
                  mirrors: bool = True) -> "ViewBank":
        if kind not in cls.KINDS:
            raise ConfigError(f"unknown corruption '{kind}'; choose one of {cls.KINDS}.")
        if not 0.0 <= p <= 1.0 or draws < 1 or not 0.0 < min_side <= 1.0:
            raise ConfigError(f"corruption needs 0 <= p <= 1, draws >= 1 and 0 < min_side <= 1; "
                              f"got p={p}, draws={draws}, min_side={min_side}.")
        g = torch.Generator().manual_seed(seed)
        apply = torch.rand(n, draws, generator=g) < p
        side = min_side + (1.0 - min_side) * torch.rand(n, draws, generator=g)
        quadrant = torch.randint(0, 4, (n, draws), generator=g)
        return cls(kind, n, draws, mirrors, p, seed, min_side, apply, side, quadrant)

    @property
    def n_views(self) -> int:
        return self.draws * (VIEWS_FLIP if self.mirrors else 1)

    @property
    def key(self) -> dict:
        return {"kind": self.kind, "n": self.n, "draws": self.draws, "mirrors": self.mirrors, "p": self.p,
                "seed": self.seed, "min_side": self.min_side}

    def render(self, images: torch.Tensor, idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """View `views[b]` of image `idx[b]`; `images` are those images, (B, 3, H, W)."""
        m = VIEWS_FLIP if self.mirrors else 1
        idx, views = idx.cpu(), views.cpu()
        draw, flip = views // m, (views % m) == 1
        x = images
        if self.kind != "none":
            _, _, h, w = x.shape
            on = self.apply[idx, draw]
            rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
            if self.kind == "center_black":
                side = self.side[idx, draw]
                sh = (side * h).round().clamp(1, h).long().view(-1, 1, 1)
                sw = (side * w).round().clamp(1, w).long().view(-1, 1, 1)
                top, left = (h - sh) // 2, (w - sw) // 2
                black = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)
            else:
                q = self.quadrant[idx, draw].view(-1, 1, 1)
                lower, right = (q // 2) == 1, (q % 2) == 1
                black = ((rows >= h // 2) == lower) & ((cols >= w // 2) == right)
            black = black & on.view(-1, 1, 1)
            x = x.masked_fill(black.unsqueeze(1).to(x.device), 0.0)
        return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def _fingerprint(encoder: nn.Module) -> str:
    """Weight hash of a frozen encoder (memoised: its weights never change)."""
    if encoder not in _FINGERPRINTS:
        _FINGERPRINTS[encoder] = model_fingerprint(encoder)
    return _FINGERPRINTS[encoder]


@torch.no_grad()
def frozen_features(encoder: nn.Module, split: Split, bank: ViewBank, *, device="cpu", batch_size: int = 256,
                    use_cache: bool = True, progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Features of every view of every image, (V, N, D) on the CPU; cached on disk.

    The cache key holds the encoder's weights (hash) and input sizes, the
    split's content hash and the view bank's parameters.
    """
    if bank.n != len(split):
        raise ValueError(f"view bank is for {bank.n} images, the split has {len(split)}.")
    sizes = [m.input_size for m in encoder.modules() if isinstance(m, Normalize)]
    key = {"model": _fingerprint(encoder), "input_sizes": sizes, "data": split.key, "views": bank.key}
    device = torch.device(device)

    def compute() -> torch.Tensor:
        encoder.to(device)
        order = batches(torch.arange(len(split)), batch_size)
        return torch.stack([outputs(encoder, order, lambda idx: encoder(bank.render(
            split.images[idx], idx, torch.full_like(idx, v)).to(device)), progress=progress, desc=f"{desc} view {v}")
            for v in range(bank.n_views)])

    return cached("tlkd-features", key, compute, verbose=False) if use_cache else compute()


# ------------------------------------------------------------------ head sources

class CachedSource:
    """Training / evaluation inputs of a head from cached features (V, N, D) and teacher logits (V, N, C)."""

    def __init__(self, features: torch.Tensor, teacher_logits: torch.Tensor | None = None, device="cpu"):
        if features.dim() != 3:
            raise ValueError(f"features must be (views, N, D), got {tuple(features.shape)}.")
        if teacher_logits is not None and teacher_logits.shape[:2] != features.shape[:2]:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match features "
                             f"{tuple(features.shape)} in views and images.")
        self.device = torch.device(device)
        self.features = features.to(self.device)
        self.teacher_logits = None if teacher_logits is None else teacher_logits.to(self.device)

    n_views = property(lambda self: self.features.shape[0])
    dim = property(lambda self: self.features.shape[2])
    has_teacher = property(lambda self: self.teacher_logits is not None)

    def __len__(self) -> int:
        return self.features.shape[1]

    def batch(self, idx: torch.Tensor, views: torch.Tensor, need_teacher: bool = False):
        idx, views = idx.to(self.device), views.to(self.device)
        zt = self.teacher_logits[views, idx] if need_teacher else None
        return self.features[views, idx], zt

    def subset(self, indices) -> "CachedSource":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.device)
        zt = None if self.teacher_logits is None else self.teacher_logits[:, idx]
        return CachedSource(self.features[:, idx], zt, self.device)


class PlainSource:
    """The reference path: renders the views and runs the frozen networks at every step."""

    def __init__(self, encoder: nn.Module, split: Split, bank: ViewBank, teacher: nn.Module | None = None,
                 device="cpu"):
        self.encoder, self.split, self.bank, self.teacher = encoder, split, bank, teacher
        self.device = torch.device(device)
        with torch.no_grad():
            self.dim = encoder.eval().to(self.device)(split.images[:1].to(self.device)).shape[1]
        if teacher is not None:
            teacher.eval().to(self.device)

    n_views = property(lambda self: self.bank.n_views)
    has_teacher = property(lambda self: self.teacher is not None)

    def __len__(self) -> int:
        return len(self.split)

    @torch.no_grad()
    def batch(self, idx: torch.Tensor, views: torch.Tensor, need_teacher: bool = False):
        idx = idx.cpu()
        x = self.bank.render(self.split.images[idx], idx, views.cpu()).to(self.device)
        return self.encoder(x).float(), (self.teacher(x).float() if need_teacher else None)


def head_logits(head: nn.Module, source, batch_size: int = 4096) -> torch.Tensor:
    """Logits of `head` on view 0 of every image of `source` (an evaluation source), on the CPU."""
    return outputs(head, batches(torch.arange(len(source)), batch_size),
                   lambda idx: head(source.batch(idx, torch.zeros_like(idx))[0]))


def view_logits(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A trained (teacher) head's logits for cached features of every view, (V, N, C)."""
    device = next(head.parameters()).device
    return torch.stack([outputs(head, [f], device=device) for f in features])


# ------------------------------------------------------------------ head training

@dataclass(frozen=True)
class HeadParams:
    """The head-only training recipe (thesis): SGD, plateau schedule, early stopping, KD weight."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    epochs: int = 200
    patience: int | None = 10         # None: no early stopping
    plateau_factor: float = 0.9
    plateau_patience: int = 3
    dropout: float = 0.2
    temperature: float = 10.0
    alpha: float = 0.0                # 0: plain cross-entropy (TL); > 0: Hinton KD (TL+KD)
    restore_best: bool = True         # keep the weights of the best validation epoch

    @classmethod
    def from_config(cls, cfg) -> "HeadParams":
        """The H1 recipe of a profile (one epoch in dry runs)."""
        return cls(lr=cfg.s4_lr, momentum=cfg.s4_momentum, weight_decay=cfg.s4_weight_decay,
                   batch_size=cfg.s4_batch_size, epochs=1 if cfg.dry_run else cfg.s4_epochs,
                   patience=cfg.s4_patience, plateau_factor=cfg.s4_plateau_factor,
                   plateau_patience=cfg.s4_plateau_patience, dropout=cfg.s4_dropout,
                   temperature=cfg.s4_temperature, alpha=0.0)

    def h4(self, cfg) -> "HeadParams":
        """H4's changes: its own learning rate and epochs, no early stopping, final weights."""
        return replace(self, lr=cfg.s4_h4_lr, epochs=1 if cfg.dry_run else cfg.s4_h4_epochs, patience=None,
                       restore_best=False)

    def replace(self, **changes) -> "HeadParams":
        return replace(self, **changes)

    def recipe(self, max_steps: int | None = None) -> Recipe:
        """SGD with momentum, ReduceLROnPlateau and early stopping on validation accuracy."""
        return Recipe(optimizer="sgd", lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                      schedule="plateau", plateau_factor=self.plateau_factor, plateau_patience=self.plateau_patience,
                      epochs=self.epochs, monitor="val_acc", patience=self.patience, restore_best=self.restore_best,
                      max_steps=max_steps)


@dataclass
class HeadRun:
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
        order = torch.randperm(len(self.labels), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield idx, self.labels[idx]


def train_head(train_source, labels: torch.Tensor, val_source, val_labels: torch.Tensor, hp: HeadParams, *,
               num_classes: int, seed: int, device="cpu", max_steps: int | None = None, progress: bool = False,
               desc: str = "head") -> HeadRun:
    """Train a new `Dropout -> Linear` head on a frozen backbone; TL when alpha = 0, TL+KD otherwise.

    The sources are `CachedSource` or `PlainSource`. Each step draws one
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
    with single_cpu_thread(device) if isinstance(train_source, CachedSource) else contextlib.nullcontext():
        history = train(head, distiller, loader, hp.recipe(max_steps), outputs=outputs, evaluate=evaluate,
                        device=device, amp=False, channels_last=False, desc=desc, progress=progress)
    return HeadRun(head.eval(), history, time.perf_counter() - t0)


def _stored_seed(kind: str, tensors: dict, params: dict, compute):
    """`compute()` once per content: a per-seed result keyed by the hash of its input tensors and its
    parameters, kept in the results store (`cache.results_root`), so a warm run and a sweep's merge reuse
    every finished seed instead of training it again (`python -m kdutils sweep`)."""
    key = {"inputs": {name: _digest(t.detach().cpu().numpy()) for name, t in tensors.items()}, **params}
    return cached(kind, key, compute, root=results_root(), verbose=False)


def h1_seed(features: dict, labels: dict, hp: HeadParams, alphas, seed: int, *, num_classes: int, device="cpu",
            max_steps: int | None = None) -> tuple[HeadRun, dict]:
    """One seed of H1: the teacher's head (`hp`), then a student head per alpha on its logits; stored per seed.

    `features` maps (role, split) to cached features for roles "teacher" and
    "student" and splits "train" and "val"; returns (teacher run, {alpha: student run}).
    """
    device = torch.device(device)
    tensors = {f"{role}_{split}": features[role, split]
               for role in ("teacher", "student") for split in ("train", "val")}
    tensors.update({f"labels_{split}": labels[split] for split in ("train", "val")})
    params = {"hp": hp, "alphas": sorted(alphas), "seed": seed, "num_classes": num_classes, "max_steps": max_steps,
              "device": device.type}

    def compute() -> tuple[HeadRun, dict]:
        common = dict(num_classes=num_classes, seed=seed, device=device, max_steps=max_steps)
        val = {role: CachedSource(features[role, "val"], device=device) for role in ("teacher", "student")}
        teacher_run = train_head(CachedSource(features["teacher", "train"], device=device), labels["train"],
                                 val["teacher"], labels["val"], hp, desc="teacher head", **common)
        zt = view_logits(teacher_run.head, features["teacher", "train"])
        distill = CachedSource(features["student", "train"], zt, device=device)
        students = {alpha: train_head(distill, labels["train"], val["student"], labels["val"], hp.replace(alpha=alpha),
                                      desc=f"student head alpha={alpha}", **common) for alpha in alphas}
        for run in (teacher_run, *students.values()):
            run.head.cpu()  # stored device-free: a GPU job's seed is reused on any machine
        return teacher_run, students

    teacher_run, students = _stored_seed("tlkd-h1-seed", tensors, params, compute)
    teacher_run.head.to(device)
    for run in students.values():
        run.head.to(device)
    return teacher_run, students


def tl_vs_kd(student: dict, teacher: dict, labels: dict, hp: HeadParams, alpha: float, seeds, *,
             num_classes: int, device="cpu", max_steps: int | None = None) -> dict:
    """One H4 condition: per seed a teacher head, then TL and TL+KD student heads; test metrics.

    `student` and `teacher` map "train", "val", "test" to `CachedSource`s of
    the same images, `labels` maps them to labels. The teacher head trains on
    the same (reduced, noisy or corrupted) training data as the students.
    Returns {seed: {"teacher", "tl", "kd"}: classification report in %}; each seed is stored.
    """
    tensors = {f"{role}_{split}": sources[split].features for role, sources in (("student", student),
                                                                               ("teacher", teacher))
               for split in ("train", "val", "test")}
    tensors.update({f"labels_{split}": y for split, y in labels.items()})

    def one_seed(seed: int) -> dict:
        common = dict(num_classes=num_classes, seed=seed, device=device, max_steps=max_steps)
        t_run = train_head(teacher["train"], labels["train"], teacher["val"], labels["val"],
                           hp.replace(alpha=0.0), **common)
        zt = view_logits(t_run.head, teacher["train"].features)
        with_teacher = CachedSource(student["train"].features, zt, student["train"].device)
        tl = train_head(student["train"], labels["train"], student["val"], labels["val"], hp.replace(alpha=0.0),
                        **common)
        kd = train_head(with_teacher, labels["train"], student["val"], labels["val"], hp.replace(alpha=alpha),
                        **common)
        return {name: metrics.classification_report(labels["test"], head_logits(run.head, source["test"]))
                for name, run, source in (("teacher", t_run, teacher), ("tl", tl, student), ("kd", kd, student))}

    params = {"hp": hp, "alpha": alpha, "num_classes": num_classes, "max_steps": max_steps,
              "device": torch.device(device).type}
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


# --------------------------------------------------------------- report helpers

def per_class_gain(y_true, pred_tl, pred_kd, class_names) -> list[dict]:
    """The thesis's per-class table: N, TP1 (TL), TP2 (TL+KD), TP2 - TP1, (TP2 - TP1) / (N - TP1).

    The error decrement is the share of TL's misses that TL+KD gets right
    (negative when TL+KD loses more than it gains); None when TL missed none.
    """
    y, a, b = (np.asarray(v) for v in (y_true, pred_tl, pred_kd))
    rows = []
    for c, name in enumerate(class_names):
        in_c = y == c
        n, tp1, tp2 = int(in_c.sum()), int((a[in_c] == c).sum()), int((b[in_c] == c).sum())
        rows.append({"class": name, "N": n, "TP1": tp1, "TP2": tp2, "TP2-TP1": tp2 - tp1,
                     "error_decrement": (tp2 - tp1) / (n - tp1) if n > tp1 else None})
    return rows


def first_epoch_reaching(curve, threshold: float) -> int | None:
    """The first (1-based) epoch whose value is >= threshold, or None if never."""
    for i, v in enumerate(curve):
        if v >= threshold:
            return i + 1
    return None


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b != 0)
    return out


def foreground_analysis(tl: dict, kd: dict) -> tuple[dict, dict]:
    """H2 from two `attribution.region_table`s of the same images (TL and TL+KD).

    Returns (per-image columns: A, B, C, D, A/B, C/D, (A/B)/(C/D)) and the
    paired two-sided Wilcoxon tests STUDIES.md lists (`stats.paired_wilcoxon`).
    A ratio with a zero denominator is NaN.
    """
    from .stats import paired_wilcoxon

    a, c, b, d = tl["fg_diff"], tl["bg_diff"], kd["fg_diff"], kd["bg_diff"]
    ab, cd = _ratio(a, b), _ratio(c, d)
    columns = {"A": a, "B": b, "C": c, "D": d, "A/B": ab, "C/D": cd, "(A/B)/(C/D)": _ratio(ab, cd)}
    tests = {
        "TL: foreground diff vs 0": paired_wilcoxon(a),
        "TL+KD: foreground diff vs 0": paired_wilcoxon(b),
        "foreground diff: TL (A) vs TL+KD (B)": paired_wilcoxon(a, b),
        "background diff: TL (C) vs TL+KD (D)": paired_wilcoxon(c, d),
        "background pos: TL vs TL+KD": paired_wilcoxon(tl["bg_pos"], kd["bg_pos"]),
        "foreground |neg|: TL vs TL+KD": paired_wilcoxon(np.abs(tl["fg_neg"]), np.abs(kd["fg_neg"])),
    }
    return columns, tests


def study_seeds(profile: str, seeds, overrides: dict | None) -> list[int]:
    """H1-H3 seeds: the notebook's `seeds` when given, else `s4_h1_seeds` (overrides first, then the profile)."""
    if seeds is not None:
        return list(seeds)
    if isinstance(overrides, dict) and overrides.get("s4_h1_seeds") is not None:
        return list(overrides["s4_h1_seeds"])
    from .profiles import profile_values

    return list(profile_values(profile)["s4_h1_seeds"])
