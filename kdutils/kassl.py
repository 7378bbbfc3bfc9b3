"""KASSL (study 3): distil a frozen self-supervised teacher into a small student's backbone.

The student (ResNet-18) feeds an *encoder extension* (a 4-layer MLP to the teacher's feature size);
the loss is the negative cosine between the extension's output on one view and the frozen teacher's
feature of another view, symmetrised (`distillers.FeatureRegression`). A linear probe then judges the
student's backbone. Ablations: no augmentation (the same plain image to both), feature reduction (a
projection of the teacher's feature that the extension targets) and both; an option, not in the
presentation, standardises the teacher's targets. Views come pre-drawn from a `ViewBank` whose
teacher features are computed once (cached), or fresh with a live teacher; teachers are pretrained
in-run or published (SynthWorld), or the published ResNet-50 checkpoints (`paper`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import cache_root, cached, code_fingerprint, key_digest, model_fingerprint
from .distillers import FeatureRegression
from .errors import ConfigError
from .frozen import batches, outputs
from .models import torchvision_model, weights_file, weights_requirement
from .paths import under
from .probe import linear_probe
from .ssl import LossTrace, ViewAugment, as_float_images, make_learner, train_ssl, view_pair
from .teacher import IMAGENET_MEAN, IMAGENET_STD, FrozenTeacher, Normalize
from .train import History, Recipe, launch, per_example, resolve_device, seed_everything, train

__all__ = [
    "VARIANTS", "TEACHER_LABELS", "TARGET_NORMS", "mean_direction_cosine",
    "EncoderExtension", "KASSLStudent", "feature_pairs", "probe_args",
    "ViewBank", "BankViews", "FreshViews", "SameImage", "train_kassl",
    "check_config", "grid", "phase_epochs", "view_bank", "teacher_architecture", "imitation", "encode", "center_crop",
    "KASSLData", "load_data", "load_teacher", "required_files", "student_backbone", "train_baseline",
    "random_init_probe", "probe", "probe_labels", "feature_dim_of", "train_student",
]

# ------------------------------------------------------------ the variants and teachers

#: variant -> (augmented views?, teacher feature reduced?)
VARIANTS = {"original": (True, False), "no_aug": (False, False), "feature_reduction": (True, True),
            "no_aug_fr": (False, True)}
TEACHER_LABELS = {"byol": "BYOL", "moco_v2": "MoCo-v2", "supervised": "Supervised"}
#: What is done to the teacher's feature before the cosine: nothing (the presentation) or standardisation.
TARGET_NORMS = ("none", "standardize")
_SSL = ("byol", "moco_v2")

# ------------------------------------------------------------ the student


class EncoderExtension(nn.Sequential):
    """KASSL's 4-layer MLP from the student's feature size to the teacher's.

    Three hidden layers Linear -> BatchNorm -> ReLU of width `hidden`, then a
    linear output layer of the target size (SimReg's design).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int = 4):
        if layers < 2:
            raise ConfigError(f"the encoder extension needs >= 2 layers, got {layers}.")
        dims = [in_dim] + [hidden] * (layers - 1)
        blocks = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
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


_REGRESSION = FeatureRegression()


# ------------------------------------------------------------ where views come from

def _quantise(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


@dataclass
class ViewBank:
    """K pre-drawn views of every image, stored as uint8 (N, K, 3, H, W).

    Views 0..K/2-1 come from the first augmentation t, views K/2..K-1 from the
    second t' (BYOL's asymmetric pair). A training step picks one of each per
    image, so the student and the frozen teacher see different views, and the
    teacher's features for all N*K views are computed once (`features`).
    """

    views: torch.Tensor
    key: dict

    @classmethod
    def draw(cls, images: torch.Tensor, pair: tuple[ViewAugment, ViewAugment], k: int, seed: int,
             data_key: dict, batch_size: int = 512) -> ViewBank:
        if k < 2 or k % 2:
            raise ConfigError(f"a view bank needs an even number of views >= 2, got {k}.")
        gen_state = torch.get_rng_state()
        torch.manual_seed(seed)
        out = [torch.stack([_quantise(pair[j * 2 // k](x)) for j in range(k)], 1)
               for x in map(as_float_images, batches(images, batch_size))]
        torch.set_rng_state(gen_state)
        key = {"data": data_key, "views": [asdict(t) for t in pair], "k": k, "seed": seed}
        return cls(torch.cat(out), key)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def k(self) -> int:
        return self.views.shape[1]

    def features(self, teacher: nn.Module, device, batch_size: int = 512) -> torch.Tensor:
        """The frozen teacher's features of every view, (N, K, D), cached on disk."""
        def compute():
            views = map(as_float_images, batches(self.views.flatten(0, 1), batch_size))
            return outputs(teacher, views, device=device).view(len(self), self.k, -1)

        return cached("kassl_bank", {"teacher": model_fingerprint(teacher), "bank": self.key}, compute)


class BankViews:
    """Views from a `ViewBank`; teacher features from its cache (`features`) or from `teacher` live.

    The loader yields image indices. Both ways give the same numbers (a test
    checks it): the cache only saves the teacher's forward passes.
    """

    def __init__(self, bank: ViewBank, features: torch.Tensor | None = None, teacher: nn.Module | None = None):
        if (features is None) == (teacher is None):
            raise ConfigError("BankViews needs exactly one of cached `features` or a live `teacher`.")
        self.bank, self.features, self.teacher = bank, features, teacher

    def __call__(self, batch, device):
        idx = batch[0].cpu()
        half = self.bank.k // 2
        i = per_example(lambda n: torch.randint(0, half, (n,)), len(idx))
        j = per_example(lambda n: torch.randint(half, self.bank.k, (n,)), len(idx))
        v1 = as_float_images(self.bank.views[idx, i].to(device))
        v2 = as_float_images(self.bank.views[idx, j].to(device))
        if self.features is not None:
            return v1, v2, self.features[idx, i].to(device), self.features[idx, j].to(device)
        return v1, v2, self.teacher(v1), self.teacher(v2)


class FreshViews:
    """New random views t(x), t'(x) at every step; the teacher runs on them live (the GPU path)."""

    def __init__(self, pair: tuple[ViewAugment, ViewAugment], teacher: nn.Module):
        self.pair, self.teacher = pair, teacher

    def __call__(self, batch, device):
        x = as_float_images(batch[0].to(device))
        v1, v2 = self.pair[0](x), self.pair[1](x)
        return v1, v2, self.teacher(v1), self.teacher(v2)


class SameImage:
    """No augmentation: the same plain image to student and teacher (ablation Exp 1).

    The loader yields (index, image); the teacher's features of the plain
    images come from `features` (cached, indexed) or from `teacher` live.
    """

    def __init__(self, size: int, features: torch.Tensor | None = None, teacher: nn.Module | None = None):
        if (features is None) == (teacher is None):
            raise ConfigError("SameImage needs exactly one of cached `features` or a live `teacher`.")
        self.size, self.features, self.teacher = size, features, teacher

    def __call__(self, batch, device):
        idx, x = batch[0], batch[1]
        x = center_crop(as_float_images(x.to(device)), self.size)
        t = self.features[idx.cpu()].to(device) if self.features is not None else self.teacher(x)
        return x, None, t, None


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size pixels (the plain, un-augmented view of a canvas)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size} pixels out of a {h}x{w} image")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def train_kassl(student: KASSLStudent, loader, views, recipe: Recipe, *, device="cpu", **fit_options) -> History:
    """Train `student` by `recipe` on `FeatureRegression` over `views(batch, device)`.

    Per-step losses go to `student.trace` (checkpointed with the student); `fit_options` go to `fit`.
    """
    device = torch.device(device)
    student.trace = LossTrace(recipe.epochs * min(len(loader), recipe.max_steps or len(loader)))
    return train(student, _REGRESSION, loader, recipe, outputs=lambda b: feature_pairs(student, *views(b, device)),
                 device=device, on_step=lambda losses: student.trace.record(losses["loss"]), **fit_options)


# ------------------------------------------------------------ the grid

def check_config(cfg) -> None:
    """Refuse unknown teachers / variants and impossible sizes before any work."""
    bad = [t for t in cfg.s3_teachers if t not in TEACHER_LABELS]
    if bad or not cfg.s3_teachers or len(set(cfg.s3_teachers)) != len(cfg.s3_teachers):
        raise ConfigError(f"s3_teachers must be distinct names from {sorted(TEACHER_LABELS)}, got {cfg.s3_teachers}.")
    for field in ("s3_variants", "s3_variants_other_teachers"):
        bad = [v for v in getattr(cfg, field) if v not in VARIANTS]
        if bad:
            raise ConfigError(f"{field} has unknown variants {bad}; choose from {list(VARIANTS)}.")
    if cfg.s3_target_norm not in TARGET_NORMS:
        raise ConfigError(f"s3_target_norm must be one of {TARGET_NORMS}, got '{cfg.s3_target_norm}'.")
    if cfg.s3_view_bank < 0 or cfg.s3_view_bank % 2:
        raise ConfigError(f"s3_view_bank must be 0 (fresh views) or an even number >= 2, got {cfg.s3_view_bank}.")
    if cfg.profile == "paper" and cfg.s3_view_bank:
        raise ConfigError("s3_view_bank > 0 keeps every view in memory: only for SynthWorld; use 0 at paper.")
    if cfg.s3_moco_bn_splits < 1 or cfg.s3_ssl_batch % cfg.s3_moco_bn_splits:
        raise ConfigError(f"s3_ssl_batch ({cfg.s3_ssl_batch}) must be a multiple of s3_moco_bn_splits "
                          f"({cfg.s3_moco_bn_splits}).")
    for field in ("s3_baseline_epochs", "s3_kassl_epochs", "s3_probe_epochs"):
        if getattr(cfg, field) < 1:
            raise ConfigError(f"{field} must be >= 1, got {getattr(cfg, field)}.")
    for t in cfg.s3_teachers:
        if t in _SSL and cfg.profile != "paper" and _ssl_epochs(cfg, t) < 1:
            raise ConfigError(f"{_SSL_EPOCHS[t]} must be >= 1 to pretrain the {TEACHER_LABELS[t]} teacher in-run.")


_SSL_EPOCHS = {"byol": "s3_byol_epochs", "moco_v2": "s3_moco_epochs"}


def _ssl_epochs(cfg, method: str) -> int:
    return getattr(cfg, _SSL_EPOCHS[method])


def phase_epochs(cfg, n: int) -> int:
    """Epochs of a training phase: `n`, or 1 in a dry run (whose epochs stop after two steps)."""
    return 1 if cfg.dry_run else n


def grid(cfg) -> list[tuple[str, str]]:
    """(teacher, variant) pairs to train: all `s3_variants` for the first teacher, the others' list for the rest."""
    return [(t, v) for i, t in enumerate(cfg.s3_teachers)
            for v in (cfg.s3_variants if i == 0 else cfg.s3_variants_other_teachers)]


# ------------------------------------------------------------ data at each scale

@dataclass
class KASSLData:
    """The images of one scale: unlabelled training images and the probe's labelled splits.

    Datasets yield (uint8 image, label). `canvas` is the side of the training
    images (views are cropped from it and resampled to `size`, the models'
    input side); probe images are already `size`. `images` holds the training
    images in memory (SynthWorld) for the view bank, else None.
    """

    train: torch.utils.data.Dataset
    probe_train: torch.utils.data.Dataset
    probe_test: torch.utils.data.Dataset
    size: int
    canvas: int
    keys: dict
    images: torch.Tensor | None
    num_classes: int
    class_names: list


def paper_paths(cfg) -> dict:
    """Where the `paper` profile looks for ImageNet-100 and the checkpoints."""
    return {"imagenet100": under(cfg.data_root, cfg.s3_imagenet100),
            "byol": under(cfg.weights_root, cfg.s3_byol_checkpoint),
            "moco_v2": under(cfg.weights_root, cfg.s3_moco_checkpoint)}


def required_files(cfg) -> dict:
    """{what: (path, how to get it)} for `session.require_files` at `paper`.

    The data is always required; the teachers' weights only outside dry runs
    (a dry run may stand random weights in for a missing checkpoint).
    """
    from .ssl_checkpoints import CHECKPOINT_SOURCES

    paths = paper_paths(cfg)
    how_data = ("Download ILSVRC2012 from https://image-net.org and put (or symlink) the 100 wnid folders "
                "listed in kdutils/data/imagenet100-classes.txt under train/ and val/ there "
                "(or set data_root / s3_imagenet100; the full ImageNet folder works too).")
    need = {"ImageNet-100 train folder": (paths["imagenet100"] / "train", how_data),
            "ImageNet-100 val folder": (paths["imagenet100"] / "val", how_data)}
    if not cfg.dry_run:
        for t in cfg.s3_teachers:
            if t in _SSL:
                need[f"{TEACHER_LABELS[t]} ResNet-50 checkpoint"] = (
                    paths[t], f"Download {CHECKPOINT_SOURCES[t]} to that path (or set weights_root / "
                              f"s3_{'byol' if t == 'byol' else 'moco'}_checkpoint).")
            elif t == "supervised":
                need["supervised ResNet-50 weights"] = weights_requirement(cfg.s3_checkpoint_arch,
                                                                           cfg.s3_supervised_weights)
    return need


def _synth_key(cfg, split: str) -> dict:
    from .pretrain import DATA_SEEDS, world_config

    return {"split": split, "n": getattr(cfg, f"n_{split}"), "seed": DATA_SEEDS[split],
            "world": asdict(world_config(cfg))}


def load_data(cfg) -> KASSLData:
    """SynthWorld target train/test (tiny, small) or ImageNet-100 train/val (paper)."""
    if cfg.profile != "paper":
        from .pretrain import synth_split

        def split(name):
            batch = synth_split(cfg, name)
            x = torch.from_numpy(batch.images).permute(0, 3, 1, 2).contiguous()
            return batch, x, torch.from_numpy(batch.labels).long()

        tr_batch, xtr, ytr = split("target_train")
        _, xte, yte = split("target_test")
        train = torch.utils.data.TensorDataset(xtr, ytr)
        size = xtr.shape[-1]
        return KASSLData(train, train, torch.utils.data.TensorDataset(xte, yte), size, size,
                         {"train": _synth_key(cfg, "target_train"), "test": _synth_key(cfg, "target_test")},
                         xtr, len(tr_batch.class_names), list(tr_batch.class_names))

    from torchvision.transforms import v2

    from .datasets import imagenet100

    size = cfg.image_size
    canvas = round(size * 8 / 7)  # 256 for 224: views are cropped from the central 256x256
    root = paper_paths(cfg)["imagenet100"]
    train_tf = v2.Compose([v2.Resize(canvas, antialias=True), v2.CenterCrop(canvas), v2.PILToTensor()])
    probe_tf = v2.Compose([v2.Resize(canvas, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])
    train = imagenet100(root, "train", transform=train_tf)
    probe_train = imagenet100(root, "train", transform=probe_tf)
    probe_test = imagenet100(root, "val", transform=probe_tf)

    def key(dataset, split):
        return {"imagenet100": str(root), "split": split, "n": len(dataset.samples), "size": size}

    return KASSLData(train, probe_train, probe_test, size, canvas,
                     {"train": key(train, "train"), "test": key(probe_test, "val")}, None, len(train.classes),
                     list(train.classes))


class _Indexed(torch.utils.data.Dataset):
    """(index, image) items: the no-augmentation path looks cached teacher features up by index."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return i, self.base[i][0]


def _loader(dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0):
    gen = torch.Generator()
    gen.manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                                       generator=gen if shuffle else None, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available())


# ------------------------------------------------------------ models at each scale

def student_backbone(cfg) -> tuple[nn.Module, int]:
    """A freshly initialised student backbone (features out) and its feature size.

    tiny/small: `SmallResNet(cfg.student_arch)` on [0, 1] inputs; paper:
    torchvision's ResNet-18 (`cfg.student_arch`) with ImageNet normalisation
    in front and `fc = Identity`.
    """
    if cfg.profile != "paper":
        from .models import small_resnet

        net = small_resnet(cfg.student_arch)
        return net, net.feature_dim
    net, dim = _headless(cfg.student_arch)
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), net), dim


def teacher_architecture(cfg) -> nn.Module:
    """The teachers' architecture with random weights (features out): the floor an SSL teacher must beat."""
    if cfg.profile != "paper":
        from .models import small_resnet

        return small_resnet(cfg.teacher_arch)
    return FrozenTeacher(_headless(cfg.s3_checkpoint_arch)[0], IMAGENET_MEAN, IMAGENET_STD)


def _headless(arch: str, weights: str | None = None) -> tuple[nn.Module, int]:
    """A torchvision classifier with its head removed (features out), and its feature size."""
    net = torchvision_model(arch, weights)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def view_bank(cfg, data: KASSLData, seed: int) -> ViewBank | None:
    """A bank of `s3_view_bank` views per training image drawn with `seed` (None: fresh views at every step).

    The notebook draws one per backbone seed: like the frozen teacher, the bank is shared by the
    replicates, each of which draws its own view pairs from it, its initialisation and its order.
    """
    if not cfg.s3_view_bank or data.images is None:
        return None
    pair = view_pair(cfg.s3_view_preset, out_size=data.size)
    return ViewBank.draw(data.images, pair, cfg.s3_view_bank, seed, data.keys["train"])


def feature_dim_of(model: nn.Module, size: int) -> int:
    """The size of `model`'s output on size x size images."""
    return outputs(model, [torch.zeros(2, 3, size, size)], device=next(model.parameters()).device).shape[1]


def _ssl_hyper(cfg, method: str) -> dict:
    return {"hidden_dim": cfg.s3_ssl_hidden, "proj_dim": cfg.s3_ssl_proj_dim,
            "byol_momentum": cfg.s3_byol_momentum, "moco_momentum": cfg.s3_moco_momentum,
            "queue_size": cfg.s3_moco_queue, "temperature": cfg.s3_moco_temperature,
            "bn_splits": cfg.s3_moco_bn_splits if method == "moco_v2" else 1}


def _train_ssl_encoder(method: str, encoder: nn.Module, dim: int, loader, key: dict, *, size: int, device,
                       max_steps: int | None, progress: bool, desc: str):
    """BYOL / MoCo-v2 by the recipe its cache `key` records (epochs, lr, views, hyper); (encoder, history).

    Reading the recipe from the key keeps the checkpoint's name and the training it holds in step.
    """
    digest, epochs = key_digest(key), key["epochs"]
    steps = epochs * min(len(loader), max_steps or len(loader))
    learner = make_learner(method, encoder, dim, total_steps=max(1, steps), **key["hyper"])
    history = train_ssl(learner, loader, view_pair(key["views"], out_size=size), epochs=epochs, lr=key["lr"],
                        device=device, checkpoint=cache_root() / "kassl" / f"{desc.replace(' ', '-')}-{digest}.pt",
                        checkpoint_key=digest, max_steps=max_steps, progress=progress, desc=desc)
    encoder = learner.encoder.cpu().eval()
    return encoder, {"epochs": history.epochs, "steps": learner.trace.series()}


def load_teacher(name: str, cfg, device) -> tuple[FrozenTeacher, dict]:
    """A frozen teacher (pooled features out) and a summary of where it came from.

    SynthWorld profiles: the shared source-task pretraining ('supervised') or `ssl_teacher`, with the
    one backbone seed; paper: the published ResNet-50 checkpoints or torchvision's supervised weights
    (random weights, said in the summary, for a file a dry run lacks).
    """
    if name not in TEACHER_LABELS:
        raise ConfigError(f"unknown teacher '{name}'; choose from {sorted(TEACHER_LABELS)}.")
    if len(set(cfg.backbone_seeds)) > 1:
        raise ConfigError(f"study 3 replicates over its students and baselines with one set of frozen teachers; got "
                          f"backbone_seeds={cfg.backbone_seeds}. Run it once per backbone seed instead "
                          f"(-p backbone_seeds=[1], ...).")
    if cfg.profile != "paper":
        return _synthworld_teacher(name, cfg, device, seed=cfg.backbone_seeds[0])
    model, info = _paper_teacher(name, cfg)
    teacher = FrozenTeacher(model, IMAGENET_MEAN, IMAGENET_STD).to(device)
    info.update({"name": name, "arch": cfg.s3_checkpoint_arch,
                 "feature_dim": feature_dim_of(teacher, cfg.image_size)})
    return teacher, info


def _paper_teacher(name: str, cfg) -> tuple[nn.Module, dict]:
    from .ssl_checkpoints import CHECKPOINT_SOURCES, load_ssl_resnet

    arch = cfg.s3_checkpoint_arch
    path = weights_file(arch, cfg.s3_supervised_weights) if name == "supervised" else paper_paths(cfg)[name]
    if cfg.dry_run and not path.exists():
        return _headless(arch)[0], {"source": f"RANDOM {arch} weights (dry run; {path} is missing)"}
    if name == "supervised":
        return (_headless(arch, cfg.s3_supervised_weights)[0],
                {"source": f"torchvision {arch} {cfg.s3_supervised_weights} (supervised ImageNet-1k)"})
    model, info = load_ssl_resnet(path, arch, how_to_get=f"Download {CHECKPOINT_SOURCES[name]}.",
                                  trust_pickle=cfg.s3_trust_pickled_checkpoints)
    info["source"] = f"{path.name} ({info['format']} format)"
    return model, info


def _synthworld_teacher(name: str, cfg, device, seed: int):
    from .pretrain import pretrain_source

    arch = cfg.teacher_arch
    if name == "supervised":
        model, summary = pretrain_source(arch, cfg, seed=seed)
        model = copy.deepcopy(model)
        model.fc, model.dropout = nn.Identity(), nn.Identity()
        info = {"source": f"supervised on the SynthWorld source task ({cfg.pretrain_epochs} epochs, "
                          f"{_where(summary)})", "source_top1": summary["source_top1"]}
    else:
        model, summary = ssl_teacher(name, cfg, seed=seed)
        info = {"source": f"{TEACHER_LABELS[name]} on {cfg.n_source_train} SynthWorld source images, "
                          f"{summary['epochs']} epochs ({_where(summary)})", "history": summary["history"]}
    teacher = FrozenTeacher(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).to(device)
    info.update({"name": name, "arch": arch, "feature_dim": feature_dim_of(teacher, cfg.image_size)})
    return teacher, info


def _where(summary: dict) -> str:
    return f"published/{summary['published']['file']}" if "published" in summary else "trained in-run"


def ssl_teacher(method: str, cfg, probe_it: bool = False, seed: int = 0) -> tuple[nn.Module, dict]:
    """Study 3's `method` ('byol', 'moco_v2') teacher at tiny/small: the `teacher_arch` encoder and a summary.

    Self-supervised on the SynthWorld source images with `seed`: loaded from
    `published/` when its recipe is shipped there (`kdutils.published`), else
    trained in-run and cached. `probe_it` adds the linear probes of the encoder
    and of its random initialisation on the target task (what `publish` records).
    """
    from .models import small_resnet
    from .pretrain import synth_split, to_tensors
    from .published import lookup, recipe

    arch, n_epochs = cfg.teacher_arch, phase_epochs(cfg, _ssl_epochs(cfg, method))
    key = {"what": "kassl-ssl-teacher", "method": method, "arch": arch, "data": _synth_key(cfg, "source_train"),
           "epochs": n_epochs, "lr": cfg.s3_ssl_lr, "batch": cfg.s3_ssl_batch,
           "views": cfg.s3_view_preset, "hyper": _ssl_hyper(cfg, method), "seed": seed, "dry_run": cfg.dry_run,
           "code": code_fingerprint(__name__)}
    gen = seed_everything(seed)
    encoder = small_resnet(arch)
    shipped = lookup(f"ssl-{method}-{arch}", key)
    if shipped is not None:
        encoder.load_state_dict(shipped[0])
        return encoder.eval(), shipped[1]
    x, _ = to_tensors(synth_split(cfg, "source_train"))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(_quantise(x)), batch_size=cfg.s3_ssl_batch,
                                         shuffle=True, drop_last=True, generator=gen)
    device = resolve_device(cfg.device)
    encoder, history = _train_ssl_encoder(method, encoder, encoder.feature_dim, loader, key, size=x.shape[-1],
                                          device=device, max_steps=cfg.max_steps, progress=cfg.progress,
                                          desc=f"{method} teacher")
    summary = {"method": method, "arch": arch, "epochs": n_epochs, "recipe": recipe(key),
               "history": {"epochs": history["epochs"], "steps": [round(v, 4) for v in history["steps"]]}}
    if probe_it:
        data = load_data(cfg)
        summary["probe"] = probe(encoder, data, seed=0, device=device, **probe_args(cfg))
        summary["random_init_probe"] = random_init_probe(lambda: small_resnet(arch), data, seed=0, device=device,
                                                         **probe_args(cfg))
    return encoder, summary


def train_baseline(cfg, data: KASSLData, seed: int, device) -> tuple[nn.Module, dict]:
    """The paper's baseline: the student architecture trained with BYOL on the training images.

    Returns the backbone and its training history {"epochs": [...], "steps": [per-step losses]}.
    With `cfg.num_processes` > 1 it trains data-parallel (`train.launch`).
    """
    n_epochs = phase_epochs(cfg, cfg.s3_baseline_epochs)
    key = {"what": "kassl-baseline", "arch": cfg.student_arch, "data": data.keys["train"], "epochs": n_epochs,
           "lr": cfg.s3_ssl_lr, "batch": cfg.s3_ssl_batch, "views": cfg.s3_view_preset,
           "hyper": _ssl_hyper(cfg, "byol"), "seed": seed, "dry_run": cfg.dry_run, "code": code_fingerprint(__name__)}
    return launch(_fit_baseline, (cfg, data.train, data.size, seed, key, device), cfg.num_processes)


def _fit_baseline(cfg, dataset, size: int, seed: int, key: dict, device):
    """`train_baseline`'s training, run by `launch`."""
    seed_everything(seed)
    backbone, dim = student_backbone(cfg)
    loader = _loader(dataset, cfg.s3_ssl_batch, shuffle=True, seed=seed, num_workers=cfg.num_workers)
    return _train_ssl_encoder("byol", backbone, dim, loader, key, size=size, device=device, max_steps=cfg.max_steps,
                              progress=cfg.progress, desc=f"BYOL baseline seed {seed}")


def train_student(teacher: FrozenTeacher, teacher_info: dict, variant: str, cfg, data: KASSLData, seed: int,
                  device, bank: ViewBank | None = None, reduction_trainable: bool | None = None,
                  target_norm: str | None = None):
    """One KASSL student and its history {"epochs": per-epoch records, "steps": per-step losses}.

    Views and teacher features come from `bank` (cached) or are fresh with a live teacher; checkpointed
    in the cache by teacher weights, variant, hyperparameters and seed; data-parallel with
    `cfg.num_processes` > 1.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown KASSL variant '{variant}'; choose from {list(VARIANTS)}.")
    augmented, reduced = VARIANTS[variant]
    trainable = cfg.s3_fr_trainable if reduction_trainable is None else reduction_trainable
    target_norm = cfg.s3_target_norm if target_norm is None else target_norm
    if target_norm not in TARGET_NORMS:
        raise ConfigError(f"target_norm must be one of {TARGET_NORMS}, got '{target_norm}'.")
    views, dataset = _views(teacher, data, augmented=augmented, bank=bank, view_preset=cfg.s3_view_preset,
                            device=device, num_workers=cfg.num_workers)
    key = {"what": "kassl-student", "teacher": model_fingerprint(teacher), "variant": variant,
           "trainable_reduction": trainable if reduced else None, "arch": cfg.student_arch,
           "data": data.keys["train"], "bank": bank.key if (bank is not None and augmented) else None,
           "views": cfg.s3_view_preset, "epochs": phase_epochs(cfg, cfg.s3_kassl_epochs),
           "warmup": cfg.s3_kassl_warmup_epochs,
           "lr": cfg.s3_kassl_lr, "batch": cfg.s3_kassl_batch, "wd": cfg.s3_kassl_weight_decay,
           "hidden": cfg.s3_extension_hidden, "reduced": cfg.s3_reduced_dim if reduced else None,
           "target_norm": target_norm,
           "seed": seed, "dry_run": cfg.dry_run, "code": code_fingerprint(__name__)}
    digest = key_digest(key)
    name = (f"{teacher_info['name']}-{variant}{'' if trainable or not reduced else '-fixed'}-{target_norm}"
            f"-s{seed}")
    return launch(_fit_student, (cfg, teacher_info["feature_dim"], reduced, trainable, target_norm, dataset, views,
                                 seed, device, cache_root() / "kassl" / f"student-{name}-{digest}.pt", digest,
                                 f"KASSL {name}"), cfg.num_processes)


def _views(teacher: FrozenTeacher, data: KASSLData, *, augmented: bool, bank: ViewBank | None, view_preset: str,
           device, num_workers: int) -> tuple:
    """(views, dataset) of a student: the bank's cached teacher features, fresh views, or the plain image."""
    if augmented and bank is not None:
        return (BankViews(bank, features=bank.features(teacher, device)),
                torch.utils.data.TensorDataset(torch.arange(len(bank))))
    if augmented:
        return FreshViews(view_pair(view_preset, out_size=data.size), teacher), data.train
    if data.images is None:
        return SameImage(data.size, teacher=teacher), _Indexed(data.train)
    plain = cached("kassl_plain", {"teacher": model_fingerprint(teacher), "data": data.keys["train"]},
                   lambda: _features(teacher, data.train, data.size, device, num_workers))
    return SameImage(data.size, features=plain), _Indexed(data.train)


def _fit_student(cfg, teacher_dim: int, reduced: bool, trainable: bool, target_norm: str, dataset, views, seed: int,
                 device, checkpoint, digest: str, desc: str):
    """`train_student`'s training (views and teacher features already cached), run by `launch`."""
    seed_everything(seed)
    backbone, dim = student_backbone(cfg)
    student = KASSLStudent(backbone, dim, teacher_dim, cfg.s3_extension_hidden,
                           cfg.s3_reduced_dim if reduced else None, trainable, target_norm == "standardize")
    loader = _loader(dataset, cfg.s3_kassl_batch, shuffle=True, seed=seed, num_workers=cfg.num_workers)
    recipe = Recipe(lr=cfg.s3_kassl_lr, weight_decay=cfg.s3_kassl_weight_decay, schedule="warmup_cosine",
                    warmup_epochs=cfg.s3_kassl_warmup_epochs, epochs=phase_epochs(cfg, cfg.s3_kassl_epochs),
                    max_steps=cfg.max_steps)
    history = train_kassl(student, loader, views, recipe, device=device, checkpoint=checkpoint, checkpoint_key=digest,
                          progress=cfg.progress, desc=desc)
    return student.cpu().eval(), {"epochs": history.epochs, "steps": student.trace.series()}


# ------------------------------------------------------------ evaluation

def _features(encoder: nn.Module, dataset, size: int, device, num_workers: int = 0, forward=None) -> torch.Tensor:
    """`forward` (default the encoder) of the plain central crops of `dataset`, in order."""
    forward = forward or encoder
    return outputs(encoder, _loader(dataset, 256, shuffle=False, num_workers=num_workers),
                   lambda b: forward(center_crop(as_float_images(b[0]), size)), device=device)


def encode(encoder: nn.Module, data: KASSLData, split: str, device, num_workers: int = 0) -> torch.Tensor:
    """Features of the probe's `split` ('train' or 'test'), cached by the encoder's weights."""
    dataset = data.probe_train if split == "train" else data.probe_test
    key = {"model": model_fingerprint(encoder), "data": data.keys[split]}
    return cached("kassl_features", key, lambda: _features(encoder, dataset, data.size, device, num_workers),
                  verbose=False)


def imitation(student: KASSLStudent, teacher: nn.Module, data: KASSLData, device, num_workers: int = 0) -> float:
    """Mean test cosine between the student's extension output and its teacher target.

    How well the student imitates the teacher on images it never trained on
    (minus the un-augmented KASSL loss on the test split).
    """
    s = _features(student, data.probe_test, data.size, device, num_workers, forward=student.embed)
    t = encode(teacher, data, "test", device, num_workers)
    return float(F.cosine_similarity(s, outputs(student, [t], student.target, device=device), dim=1).mean())


def probe_labels(dataset) -> torch.Tensor:
    """The labels of a probe split (a TensorDataset's second tensor or an image folder's targets)."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return dataset.tensors[1]
    return torch.as_tensor(dataset.targets, dtype=torch.long)


def probe_args(cfg) -> dict:
    """The profile's linear-probe settings, for `probe(..., **probe_args(cfg))`."""
    return {"epochs": phase_epochs(cfg, cfg.s3_probe_epochs), "max_steps": cfg.max_steps,
            "num_workers": cfg.num_workers}


def probe(encoder: nn.Module, data: KASSLData, *, seed: int, device, epochs: int, max_steps: int | None = None,
          num_workers: int = 0) -> dict:
    """Linear probe of a frozen encoder: top-1 / top-5 (%) on the probe's test split."""
    xtr, xte = (encode(encoder, data, split, device, num_workers) for split in ("train", "test"))
    result = linear_probe(xtr, probe_labels(data.probe_train), xte, probe_labels(data.probe_test),
                          epochs=epochs, seed=seed, max_steps=max_steps)
    return {"top1": result["top1"], "top5": result["top5"]}


def random_init_probe(arch_builder, data: KASSLData, *, seed: int, **probe_kwargs) -> dict:
    """The probe of an untrained network: what SSL has to beat to have learned anything."""
    seed_everything(seed)
    return probe(arch_builder(), data, seed=seed, **probe_kwargs)
