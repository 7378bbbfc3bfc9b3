"""Study 4's frozen backbones: SynthWorld networks pretrained here, or torchvision ones by name.

"Frozen" means frozen weights *and* batch-norm statistics (eval mode): that makes a backbone a
fixed feature extractor, and caching its features exact.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError
from .models import SMALL_ARCHS
from .teacher import CIFAR10_MEAN, CIFAR10_STD, FrozenTeacher, Normalize

__all__ = ["load_encoder", "frozen_student"]


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


def frozen_student(net: nn.Module) -> nn.Module:
    """Weights and batch-norm statistics fixed, but differentiable: SHAP explains through the student.

    (Teachers are wrapped in `FrozenTeacher`, whose forward runs without gradients.)
    """
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


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
        return (FrozenTeacher(net, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if teacher else frozen_student(net)), info
    net, size = _torchvision_backbone(arch, weights, input_size, allow_random=cfg.dry_run)
    if not teacher and arch.startswith(("resnet", "wide_resnet")):
        from .attribution import shap_safe_resnet

        net = shap_safe_resnet(net)
    info = {"arch": arch, "weights": "random (dry run)" if cfg.dry_run else weights,
            "input_size": size or cfg.image_size, "parameters": sum(p.numel() for p in net.parameters())}
    size = size or None
    encoder = (FrozenTeacher(net, CIFAR10_MEAN, CIFAR10_STD, size) if teacher
               else frozen_student(nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD, size), net)))
    return encoder, info
