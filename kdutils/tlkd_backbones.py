"""Study 4's frozen backbones: SynthWorld networks pretrained here, or torchvision ones by name.

"Frozen" means frozen weights *and* batch-norm statistics (eval mode): that makes a backbone a
fixed feature extractor, and caching its features exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .models import SMALL_ARCHS
from .pretrain import SourcePretraining
from .teacher import CIFAR10_MEAN, CIFAR10_STD, FrozenTeacher, Normalize, freeze
from .zoo import backbone, source_backbone

__all__ = ["FrozenBackbones", "load_encoder"]


@dataclass(frozen=True)
class FrozenBackbones:
    """Where study 4's frozen backbones come from: SynthWorld architectures by `pretraining` with the study's one
    backbone `seed` (its replicates are its heads, so `of(cfg)` refuses several backbone seeds), torchvision ones
    with published weights (random in a dry run); `image_size` is the images' own size."""

    pretraining: SourcePretraining
    seed: int
    image_size: int

    @classmethod
    def of(cls, cfg) -> FrozenBackbones:
        seed = cfg.shared_backbone_seed("study 4 replicates over its trained heads with one pair of frozen backbones")
        return cls(SourcePretraining.of(cfg), seed, cfg.image_size)


def load_encoder(arch: str, backbones: FrozenBackbones, *, weights: str = "", input_size: int = 0,
                 teacher: bool = False) -> tuple[nn.Module, dict]:
    """A frozen backbone mapping [0, 1] images to features, and a description of it.

    SynthWorld architectures (`resnet_s`...) are pretrained on the source task
    by `kdutils.pretrain.pretrain_source` (cached; seed: `backbones.seed`) and used at 32x32.
    torchvision names are loaded with `weights` (random in dry runs), resized
    to `input_size` (0: the images' own size) and normalised with the CIFAR-10
    statistics, as in the thesis; students are made SHAP-safe
    (`attribution.shap_safe_resnet`), teachers are wrapped in `FrozenTeacher`.
    """
    if arch in SMALL_ARCHS:
        net, card, summary = source_backbone(arch, backbones.pretraining, seed=backbones.seed)
        info = {"arch": arch, "weights": "pretrained here on the SynthWorld source task (60 classes)",
                "source_top1": summary["source_top1"], "input_size": backbones.image_size,
                "parameters": card.parameters}
        return (FrozenTeacher(net, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if teacher else freeze(net)), info
    dry_run = backbones.pretraining.dry_run
    net, card = backbone(arch, weights=weights, input_size=input_size or None, placeholder=dry_run,
                         seed=0)  # dry runs: the same random weights every time
    if not teacher and arch.startswith(("resnet", "wide_resnet")):
        from .attribution import shap_safe_resnet

        net = shap_safe_resnet(net)
    info = {"arch": arch, "weights": "random (dry run)" if dry_run else weights,
            "input_size": card.input_size or backbones.image_size, "parameters": card.parameters}
    size = card.input_size
    encoder = (FrozenTeacher(net, CIFAR10_MEAN, CIFAR10_STD, size) if teacher
               else freeze(nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD, size), net)))
    return encoder, info
