"""Study 3's networks other than the KASSL student: the student's backbone, the frozen teachers (pretrained
in-run, published, or the paper's checkpoints) and the BYOL baseline, each self-supervised by `ssl`."""

from __future__ import annotations

import torch
from torch import nn

from .cache import cache_root, code_fingerprint, key_digest
from .errors import ConfigError
from .frozen import outputs
from .kassl_config import TEACHER_LABELS, phase_epochs, probe_args, ssl_epochs
from .kassl_data import KASSLData, data_loader, load_data, paper_paths, synth_key
from .kassl_probe import probe, random_init_probe
from .kassl_views import to_uint8
from .models import weights_file
from .ssl import make_learner, train_ssl, view_pair
from .teacher import IMAGENET_MEAN, IMAGENET_STD, FrozenTeacher
from .parallel import launch
from .train import resolve_device, seed_everything
from .zoo import backbone, source_backbone

__all__ = ["student_backbone", "teacher_architecture", "feature_dim_of", "load_teacher", "ssl_teacher",
           "train_baseline"]


def student_backbone(arch: str, *, paper: bool) -> tuple[nn.Module, int]:
    """A freshly initialised student backbone (features out) and its feature size.

    tiny/small: `SmallResNet(arch)` on [0, 1] inputs; paper: torchvision's `arch` (ResNet-18) with
    ImageNet normalisation in front.
    """
    net, card = backbone(arch)
    return (nn.Sequential(card.normalize(), net) if paper else net), card.feature_dim


def teacher_architecture(cfg) -> nn.Module:
    """The teachers' architecture with random weights (features out): the floor an SSL teacher must beat."""
    if cfg.profile != "paper":
        return backbone(cfg.teacher_arch)[0]
    return FrozenTeacher(backbone(cfg.s3_checkpoint_arch)[0], IMAGENET_MEAN, IMAGENET_STD)


def feature_dim_of(model: nn.Module, size: int) -> int:
    """The size of `model`'s output on size x size images."""
    return outputs(model, [torch.zeros(2, 3, size, size)], device=next(model.parameters()).device).shape[1]


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
        return backbone(arch)[0], {"source": f"RANDOM {arch} weights (dry run; {path} is missing)"}
    if name == "supervised":
        return (backbone(arch, weights=cfg.s3_supervised_weights)[0],
                {"source": f"torchvision {arch} {cfg.s3_supervised_weights} (supervised ImageNet-1k)"})
    model, info = load_ssl_resnet(path, arch, how_to_get=f"Download {CHECKPOINT_SOURCES[name]}.",
                                  trust_pickle=cfg.s3_trust_pickled_checkpoints)
    info["source"] = f"{path.name} ({info['format']} format)"
    return model, info


def _synthworld_teacher(name: str, cfg, device, seed: int):
    arch = cfg.teacher_arch
    if name == "supervised":
        model, _, summary = source_backbone(arch, cfg, seed=seed)
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
    from .pretrain import synth_split, to_tensors
    from .published import Pretraining, recipe

    arch, n_epochs = cfg.teacher_arch, phase_epochs(cfg, ssl_epochs(cfg, method))
    key = {"what": "kassl-ssl-teacher", "method": method, "arch": arch, "data": synth_key(cfg, "source_train"),
           "epochs": n_epochs, "lr": cfg.s3_ssl_lr, "batch": cfg.s3_ssl_batch,
           "views": cfg.s3_view_preset, "hyper": _ssl_hyper(cfg, method), "seed": seed, "dry_run": cfg.dry_run,
           "code": code_fingerprint(__name__)}
    run = Pretraining(f"ssl-{method}-{arch}", key)
    gen = seed_everything(seed)
    encoder, _ = backbone(arch)
    if (shipped := run.shipped(encoder)) is not None:
        return encoder.eval(), shipped
    x, _ = to_tensors(synth_split(cfg, "source_train"))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(to_uint8(x)), batch_size=cfg.s3_ssl_batch,
                                         shuffle=True, drop_last=True, generator=gen)
    device = resolve_device(cfg.device)
    encoder, history = _train_ssl_encoder(method, encoder, encoder.feature_dim, loader, key, run.checkpoint,
                                          size=x.shape[-1], device=device, max_steps=cfg.max_steps,
                                          progress=cfg.progress, desc=f"{method} teacher")
    summary = {"method": method, "arch": arch, "epochs": n_epochs, "recipe": recipe(key),
               "history": {"epochs": history["epochs"], "steps": [round(v, 4) for v in history["steps"]]}}
    if probe_it:
        data = load_data(cfg)
        summary["probe"] = probe(encoder, data, seed=0, device=device, **probe_args(cfg))
        summary["random_init_probe"] = random_init_probe(lambda: backbone(arch)[0], data, seed=0, device=device,
                                                         **probe_args(cfg))
    return encoder, summary


def train_baseline(cfg, data: KASSLData, seed: int, device) -> tuple[nn.Module, dict]:
    """The paper's baseline: the student architecture trained with BYOL on the training images.

    Returns the backbone and its training history {"epochs": [...], "steps": [per-step losses]}.
    With `cfg.num_processes` > 1 it trains data-parallel (`parallel.launch`).
    """
    n_epochs = phase_epochs(cfg, cfg.s3_baseline_epochs)
    key = {"what": "kassl-baseline", "arch": cfg.student_arch, "data": data.keys["train"], "epochs": n_epochs,
           "lr": cfg.s3_ssl_lr, "batch": cfg.s3_ssl_batch, "views": cfg.s3_view_preset,
           "hyper": _ssl_hyper(cfg, "byol"), "seed": seed, "dry_run": cfg.dry_run, "code": code_fingerprint(__name__)}
    return launch(_fit_baseline, (cfg, data.train, data.size, seed, key, device), cfg.num_processes)


def _fit_baseline(cfg, dataset, size: int, seed: int, key: dict, device):
    """`train_baseline`'s training, run by `launch`."""
    seed_everything(seed)
    backbone, dim = student_backbone(cfg.student_arch, paper=cfg.profile == "paper")
    loader = data_loader(dataset, cfg.s3_ssl_batch, shuffle=True, seed=seed, num_workers=cfg.num_workers)
    checkpoint = cache_root() / "kassl" / f"BYOL-baseline-seed-{seed}-{key_digest(key)}.pt"
    return _train_ssl_encoder("byol", backbone, dim, loader, key, checkpoint, size=size, device=device,
                              max_steps=cfg.max_steps, progress=cfg.progress, desc=f"BYOL baseline seed {seed}")


def _ssl_hyper(cfg, method: str) -> dict:
    return {"hidden_dim": cfg.s3_ssl_hidden, "proj_dim": cfg.s3_ssl_proj_dim,
            "byol_momentum": cfg.s3_byol_momentum, "moco_momentum": cfg.s3_moco_momentum,
            "queue_size": cfg.s3_moco_queue, "temperature": cfg.s3_moco_temperature,
            "bn_splits": cfg.s3_moco_bn_splits if method == "moco_v2" else 1}


def _train_ssl_encoder(method: str, encoder: nn.Module, dim: int, loader, key: dict, checkpoint, *, size: int,
                       device, max_steps: int | None, progress: bool, desc: str):
    """BYOL / MoCo-v2 by the recipe its cache `key` records (epochs, lr, views, hyper); (encoder, history).

    Reading the recipe from the key keeps the checkpoint's name and the training it holds in step.
    """
    digest, epochs = key_digest(key), key["epochs"]
    steps = epochs * min(len(loader), max_steps or len(loader))
    learner = make_learner(method, encoder, dim, total_steps=max(1, steps), **key["hyper"])
    history = train_ssl(learner, loader, view_pair(key["views"], out_size=size), epochs=epochs, lr=key["lr"],
                        device=device, checkpoint=checkpoint, checkpoint_key=digest, max_steps=max_steps,
                        progress=progress, desc=desc)
    encoder = learner.encoder.cpu().eval()
    return encoder, {"epochs": history.epochs, "steps": learner.trace.series()}
