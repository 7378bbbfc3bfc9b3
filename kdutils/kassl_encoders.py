"""Study 3's networks other than the KASSL student: the student's backbone, the frozen teachers (pretrained
in-run, published, or the paper's checkpoints) and the BYOL baseline, each self-supervised by `ssl`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .augment import view_pair
from .cache import cache_root, code_fingerprint, key_digest
from .errors import ConfigError
from .frozen import outputs
from .kassl_config import SSL_TEACHERS, TEACHER_LABELS, ssl_epochs
from .kassl_data import data_loader, input_side, paper_paths, synth_key
from .kassl_probe import probe, random_init_probe
from .kassl_views import to_uint8
from .models import weights_file
from .ssl import make_learner, train_ssl
from .ssl_checkpoints import CHECKPOINT_SOURCES, load_ssl_resnet
from .splits import StudyData, tensor_loader
from .teacher import IMAGENET_MEAN, IMAGENET_STD, FrozenTeacher
from .parallel import launch
from .pretrain import SourcePretraining, SynthData, to_tensors
from .recipes import FrozenDict, ParallelRunSettings
from .train import resolve_device, seed_everything
from .zoo import NO_NORMALISATION, backbone, source_backbone

__all__ = ["student_backbone", "teacher_architecture", "feature_dim_of", "SSLRecipe", "TeacherSources",
           "frozen_teacher", "ssl_teacher", "teacher_probes", "train_baseline"]


def student_backbone(arch: str, *, paper: bool) -> tuple[nn.Module, int]:
    """A freshly initialised student backbone (features out) and its feature size.

    tiny/small: `SmallResNet(arch)` on [0, 1] inputs; paper: torchvision's `arch` (ResNet-18) with
    ImageNet normalisation in front.
    """
    net, card = backbone(arch)
    return (nn.Sequential(card.normalize(), net) if paper else net), card.feature_dim


def teacher_architecture(arch: str, *, paper: bool) -> nn.Module:
    """The teachers' architecture with random weights (features out): the floor an SSL teacher must beat."""
    net, _ = backbone(arch)
    return FrozenTeacher(net, IMAGENET_MEAN, IMAGENET_STD) if paper else net


def feature_dim_of(model: nn.Module, size: int) -> int:
    """The size of `model`'s output on size x size images."""
    return outputs(model, [torch.zeros(2, 3, size, size)], device=next(model.parameters()).device).shape[1]


@dataclass(frozen=True, kw_only=True)
class SSLRecipe(ParallelRunSettings):
    """How an SSL teacher (tiny/small) or the BYOL baseline (`baseline=True`: the student architecture) self-supervises;
    `key()` is the recipe part of its cache key, so a checkpoint's name and the training it holds stay in step.
    `processes` shares the baseline's batches (`train_baseline`); a teacher pretrains in one process."""

    method: str
    arch: str
    paper: bool
    epochs: int
    lr: float
    batch: int
    views: str
    hyper: FrozenDict

    @classmethod
    def of(cls, cfg, method: str, *, baseline: bool = False) -> SSLRecipe:
        hyper = FrozenDict({"hidden_dim": cfg.s3_ssl_hidden, "proj_dim": cfg.s3_ssl_proj_dim,
                            "byol_momentum": cfg.s3_byol_momentum, "moco_momentum": cfg.s3_moco_momentum,
                            "queue_size": cfg.s3_moco_queue, "temperature": cfg.s3_moco_temperature,
                            "bn_splits": cfg.s3_moco_bn_splits if method == "moco_v2" else 1})
        return cls(method=method, arch=cfg.student_arch if baseline else cfg.teacher_arch, paper=cfg.profile == "paper",
                   epochs=cfg.phase_epochs(cfg.s3_baseline_epochs if baseline else ssl_epochs(cfg, method)),
                   lr=cfg.s3_ssl_lr, batch=cfg.s3_ssl_batch, views=cfg.s3_view_preset, hyper=hyper,
                   **ParallelRunSettings.of_profile(cfg))

    def key(self) -> dict:
        return {"arch": self.arch, "epochs": self.epochs, "lr": self.lr, "batch": self.batch, "views": self.views,
                "hyper": self.hyper, "dry_run": self.dry_run}


@dataclass(frozen=True, kw_only=True)
class TeacherSources:
    """Where study 3's frozen teachers come from, read from a profile once. tiny/small: the `arch` encoder pretrained
    here with the study's one backbone `seed` (its replicates are its students and baselines, so `of(cfg)` refuses
    several), supervised by `source` or self-supervised by `ssl` ({method: recipe}); paper (`source`, `ssl` None):
    the `arch` checkpoints ({method: file}) or torchvision's `supervised_weights`, random for a file a `dry_run`
    lacks (`trust_pickle`: may unpickle a checkpoint). `image_size`: the side the feature size is read at."""

    arch: str
    seed: int
    image_size: int
    source: SourcePretraining | None
    ssl: FrozenDict | None  # method -> SSLRecipe
    checkpoints: FrozenDict  # method -> Path
    supervised_weights: str
    trust_pickle: bool
    dry_run: bool

    @classmethod
    def of(cls, cfg) -> TeacherSources:
        seed = cfg.shared_backbone_seed("study 3 replicates over its students and baselines with one set of frozen "
                                        "teachers")
        synthworld, paths = cfg.profile != "paper", paper_paths(cfg)
        return cls(arch=cfg.teacher_arch if synthworld else cfg.s3_checkpoint_arch, seed=seed,
                   image_size=cfg.image_size, source=SourcePretraining.of(cfg) if synthworld else None,
                   ssl=FrozenDict({m: SSLRecipe.of(cfg, m) for m in SSL_TEACHERS}) if synthworld else None,
                   checkpoints=FrozenDict({m: paths[m] for m in SSL_TEACHERS}),
                   supervised_weights=cfg.s3_supervised_weights, trust_pickle=cfg.s3_trust_pickled_checkpoints,
                   dry_run=cfg.dry_run)


def frozen_teacher(name: str, sources: TeacherSources, device) -> tuple[FrozenTeacher, dict]:
    """A frozen teacher (pooled features out) on `device` and a summary of where it came from.

    SynthWorld profiles: the shared source-task pretraining ('supervised') or `ssl_teacher`, with the
    one backbone seed; paper: the published ResNet-50 checkpoints or torchvision's supervised weights
    (random weights, said in the summary, for a file a dry run lacks).
    """
    if name not in TEACHER_LABELS:
        raise ConfigError(f"unknown teacher '{name}'; choose from {sorted(TEACHER_LABELS)}.")
    arch, (mean, std), source = sources.arch, NO_NORMALISATION, sources.source
    if source is None:
        mean, std, weights = IMAGENET_MEAN, IMAGENET_STD, sources.supervised_weights
        path = weights_file(arch, weights) if name == "supervised" else sources.checkpoints[name]
        if sources.dry_run and not path.exists():
            model, info = backbone(arch)[0], {"source": f"RANDOM {arch} weights (dry run; {path} is missing)"}
        elif name == "supervised":
            model = backbone(arch, weights=weights)[0]
            info = {"source": f"torchvision {arch} {weights} (supervised ImageNet-1k)"}
        else:
            model, info = load_ssl_resnet(path, arch, how_to_get=f"Download {CHECKPOINT_SOURCES[name]}.",
                                          trust_pickle=sources.trust_pickle)
            info["source"] = f"{path.name} ({info['format']} format)"
    elif name == "supervised":
        model, _, summary = source_backbone(arch, source, seed=sources.seed)
        info = {"source": f"supervised on the SynthWorld source task ({source.epochs} epochs, "
                          f"{_where(summary)})", "source_top1": summary["source_top1"]}
    else:
        model, summary = ssl_teacher(sources.ssl[name], source.data, seed=sources.seed, device=source.device)
        info = {"source": f"{TEACHER_LABELS[name]} on {source.data.sizes['source_train']} SynthWorld source images, "
                          f"{summary['epochs']} epochs ({_where(summary)})", "history": summary["history"]}
    teacher = FrozenTeacher(model, mean, std).to(device)
    info.update({"name": name, "arch": arch, "feature_dim": feature_dim_of(teacher, sources.image_size)})
    return teacher, info


def _where(summary: dict) -> str:
    return f"published/{summary['published']['file']}" if "published" in summary else "trained in-run"


def ssl_teacher(recipe: SSLRecipe, data: SynthData, *, seed: int = 0, device="auto") -> tuple[nn.Module, dict]:
    """Study 3's `recipe.method` ('byol', 'moco_v2') teacher at tiny/small: the `recipe.arch` encoder and a summary.

    Self-supervised on `data`'s source images with `seed` by `recipe` (`SSLRecipe.of(cfg, method)`): loaded from
    `published/` when that recipe is shipped there, else trained in-run on `device` and cached.
    """
    from . import published

    key = {"what": "kassl-ssl-teacher", "method": recipe.method, **recipe.key(),
           "data": synth_key(data, "source_train"), "seed": seed, "code": code_fingerprint(__name__)}
    run = published.PretrainingFiles(f"ssl-{recipe.method}-{recipe.arch}", key)
    gen = seed_everything(seed)
    encoder, _ = backbone(recipe.arch)
    if (shipped := run.shipped(encoder)) is not None:
        return encoder.eval(), shipped
    x, _ = to_tensors(data.split("source_train"))
    loader = tensor_loader(to_uint8(x), batch_size=recipe.batch, shuffle=True, drop_last=True, generator=gen)
    encoder, history = _train_ssl_encoder(recipe, encoder, encoder.feature_dim, loader, run.checkpoint, run.digest,
                                          size=x.shape[-1], device=resolve_device(device),
                                          desc=f"{recipe.method} teacher")
    return encoder, {"method": recipe.method, "arch": recipe.arch, "epochs": recipe.epochs,
                     "recipe": published.recipe(key),
                     "history": {"epochs": history["epochs"], "steps": [round(v, 4) for v in history["steps"]]}}


def teacher_probes(encoder: nn.Module, arch: str, data: StudyData, *, device, **probe_settings) -> dict:
    """What `publish` records of an SSL teacher besides its training: linear probes of `encoder` and of a random
    `arch` on the target task (`probe_settings`: `kassl_config.probe_args(cfg)`), the floor it must beat."""
    return {"probe": probe(encoder, data, seed=0, device=device, **probe_settings),
            "random_init_probe": random_init_probe(lambda: backbone(arch)[0], data, seed=0, device=device,
                                                   **probe_settings)}


def train_baseline(recipe: SSLRecipe, data: StudyData, seed: int, device) -> tuple[nn.Module, dict]:
    """The paper's baseline: the student architecture trained with BYOL on the training images by `recipe`
    (`SSLRecipe.of(cfg, "byol", baseline=True)`); the backbone and its history {"epochs": [...], "steps": [losses]}.
    Data-parallel with `recipe.processes` > 1 (`parallel.launch`)."""
    key = {"what": "kassl-baseline", **recipe.key(), "data": data.key["train"], "seed": seed,
           "code": code_fingerprint(__name__)}
    return launch(_fit_baseline, (recipe, data.splits["train"], input_side(data), seed, key_digest(key), device),
                  recipe.processes)


def _fit_baseline(recipe: SSLRecipe, dataset, size: int, seed: int, digest: str, device):
    """`train_baseline`'s training, run by `launch`."""
    seed_everything(seed)
    backbone, dim = student_backbone(recipe.arch, paper=recipe.paper)
    loader = data_loader(dataset, recipe.batch, shuffle=True, seed=seed, num_workers=recipe.num_workers)
    return _train_ssl_encoder(recipe, backbone, dim, loader, cache_root() / "kassl" / f"BYOL-baseline-seed-{seed}-"
                              f"{digest}.pt", digest, size=size, device=device, desc=f"BYOL baseline seed {seed}")


def _train_ssl_encoder(recipe: SSLRecipe, encoder: nn.Module, dim: int, loader, checkpoint, digest: str, *,
                       size: int, device, desc: str):
    """BYOL / MoCo-v2 by `recipe`, checkpointed under its cache key's `digest`; (encoder, history)."""
    steps = recipe.epochs * min(len(loader), recipe.max_steps or len(loader))
    learner = make_learner(recipe.method, encoder, dim, total_steps=max(1, steps), **recipe.hyper)
    history = train_ssl(learner, loader, view_pair(recipe.views, out_size=size), epochs=recipe.epochs, lr=recipe.lr,
                        device=device, checkpoint=checkpoint, checkpoint_key=digest, max_steps=recipe.max_steps,
                        progress=recipe.progress, desc=desc)
    encoder = learner.encoder.cpu().eval()
    return encoder, {"epochs": history.epochs, "steps": learner.trace.series()}
