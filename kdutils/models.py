"""Vision backbones for every scale.

`small`/`tiny` use `SmallResNet`, a CIFAR-sized ResNet whose widths and depths
are parameters, so the students and teachers of the studies are the same
architecture family at different sizes. It is written to be attribution-safe
(STUDIES.md section 5): every ReLU is its own non-in-place module, used once,
and the residual add is out of place, so shap's DeepExplainer can trace it.
Its stem keeps ResNet's overlapping `MaxPool2d(3, 2, 1)`, as the real ResNets do.

`paper` uses torchvision's models with their published weights; a missing
weight file is an error that says where to put it, never random weights
(dry runs ask for a seeded `placeholder` instead of reading them).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, MissingDataError

# name -> (stage widths, blocks per stage). Sizes measured at 32x32 input.
SMALL_ARCHS = {
    "resnet_xs": ((8, 16, 32, 64), (1, 1, 1, 1)),       # tiny-profile student  (~0.08M)
    "resnet_s": ((16, 32, 64, 128), (1, 1, 1, 1)),      # small student         (~0.3M)
    "resnet_m": ((32, 64, 128, 256), (1, 1, 1, 1)),     # small teacher         (~1.2M)
    "resnet_l": ((48, 96, 192, 384), (2, 2, 2, 2)),     # larger teacher        (~6.3M, slow on CPU)
}


class BasicBlock(nn.Module):
    """ResNet basic block with separate ReLUs and an out-of-place residual add."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet for 32x32 images: conv stem + max-pool, four stages, global pooling, optional head.

    `forward` gives class logits when `num_classes > 0`, else pooled features;
    `features` gives the pooled `feature_dim` vector; `tokens` gives the last
    feature map flattened to a (N, H*W, C) token sequence (study 1's head).
    """

    def __init__(self, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), num_classes: int = 0):
        super().__init__()
        if len(widths) != len(blocks):
            raise ConfigError(f"widths {widths} and blocks {blocks} must have the same length.")
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, c_in = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(c_in, w, stride=2 if (i > 0 and j == 0) else 1))
                c_in = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c_in
        self.fc = nn.Linear(c_in, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(x))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def small_resnet(arch: str, num_classes: int = 0) -> SmallResNet:
    """One of the named `SMALL_ARCHS` sizes."""
    if arch not in SMALL_ARCHS:
        raise ConfigError(f"unknown small architecture '{arch}'; choose one of {sorted(SMALL_ARCHS)}.")
    widths, blocks = SMALL_ARCHS[arch]
    return SmallResNet(widths, blocks, num_classes)


def weights_file(name: str, weights: str) -> Path:
    """Where torch's hub cache ($TORCH_HOME) keeps torchvision's `name` weights `weights` (an enum member name)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError as err:
        raise ConfigError(f"torchvision has no model '{name}': {err}") from None
    try:
        w = enum[weights]
    except KeyError:
        raise ConfigError(f"'{weights}' is not a weight set of {name}; "
                          f"choose one of {[m.name for m in enum]}.") from None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name


def weights_requirement(name: str, weights: str) -> tuple[Path, str]:
    """(file, how to get it) of torchvision weights, the form `session.require_files` takes."""
    path = weights_file(name, weights)
    return path, (f"On a machine with internet run `python -c \"import torchvision; "
                  f"torchvision.models.get_model('{name}', weights='{weights}')\"` and copy "
                  f"{path.name} to {path}; set TORCH_HOME to use another cache folder.")


@contextlib.contextmanager
def seeded_rng(seed: int = 0):
    """Draw inside from torch's CPU generator seeded with `seed`; the global stream is untouched outside.

    Dry runs build their placeholder weights here, so every dry run gets the same ones whatever the
    notebook drew before (a cache hit skips the draws a cold run makes).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: a GPU's stream is left alone too
        yield


def torchvision_model(name: str, weights: str | None, *, placeholder: bool = False, seed: int | None = None,
                      image_size: int | None = None) -> nn.Module:
    """A torchvision model with published weights (`weights` is the enum member name).

    The weight file must already be in torch's hub cache ($TORCH_HOME): nothing
    downloads at run time here. When it is missing the error names the file and
    how to fetch it. `placeholder=True` (dry runs) always builds random weights instead, never reading
    the file, as does `weights=None`; they are drawn in `seeded_rng(seed)` (a placeholder's seed defaults
    to 0), or from the global stream for `weights=None` without a seed. A random ViT is built for `image_size`.
    """
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as err:
        raise ConfigError(f"torchvision has no model '{name}': {err}") from None
    if weights is None or placeholder:
        kwargs = {"image_size": image_size} if image_size and name.startswith("vit") else {}
        if seed is None and not placeholder:
            return builder(weights=None, **kwargs)
        with seeded_rng(seed or 0):
            return builder(weights=None, **kwargs)
    path, how = weights_requirement(name, weights)
    if not path.exists():
        raise MissingDataError(f"{name} weights {weights}", path, how)
    return builder(weights=torchvision.models.get_model_weights(name)[weights])
