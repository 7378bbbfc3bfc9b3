"""One model zoo: every backbone of the studies by name, features out, with a card saying what it is.

Names are SynthWorld's small ResNets (`models.SMALL_ARCHS`: `resnet_xs` ... `resnet_l`, 32x32 images in
[0, 1], no normalisation) and torchvision's classifiers (`resnet18`, `resnet50`, `vit_b_16`...: ImageNet
normalisation, published weights from torch's hub cache, see `models.torchvision_model`). The classifier
is removed here and only here (`headless`); `source_backbone` gives a small ResNet pretrained on the
SynthWorld source task (`pretrain.pretrain_source`, cached) the same way. Freezing is `teacher.freeze` /
`teacher.FrozenTeacher`; the studies choose which, and which normalisation to put in front.
Text encoders (`text_encoder`: small BERT/RoBERTa built here, or a published checkpoint) come as a
`text.TextEncoder` (one mean-pooled vector per text) with a `TextCard`; CLIP (`clip`) as a CLIPModel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from .errors import ConfigError
from .models import SMALL_ARCHS, SmallResNet, small_resnet, torchvision_model
from .teacher import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Normalize

if TYPE_CHECKING:  # the pretrainings import the zoo
    from .clip import ClipPretraining
    from .pretrain import SourcePretraining

__all__ = ["ModelCard", "TextCard", "backbone", "headless", "source_backbone", "text_encoder", "clip"]

NO_NORMALISATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class ModelCard:
    """What a zoo network is: its feature size, parameters, the input it expects and where its weights came from.

    `input_size` None: any size (the images' own); `mean`/`std` normalise [0, 1] images for it.
    """

    name: str
    feature_dim: int
    parameters: int
    input_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str

    def normalize(self) -> nn.Module:
        """The preprocessing of [0, 1] images this network expects (Identity when it needs none)."""
        if (self.mean, self.std) == NO_NORMALISATION and self.input_size is None:
            return nn.Identity()
        return Normalize(self.mean, self.std, self.input_size)


def headless(net: nn.Module) -> tuple[nn.Module, int]:
    """`net` with its classifier replaced by Identity (in place: features out), and the feature size."""
    if isinstance(net, SmallResNet):
        net.fc = nn.Identity()
        return net, net.feature_dim
    if hasattr(net, "heads") and hasattr(net, "hidden_dim"):  # torchvision ViT
        net.heads = nn.Identity()
        return net, net.hidden_dim
    if isinstance(getattr(net, "fc", None), nn.Linear):  # torchvision ResNet / WideResNet
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim
    raise ConfigError(f"do not know how to remove the head of {type(net).__name__}; the zoo knows SmallResNet, "
                      "torchvision ResNets and ViTs.")


def _parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def backbone(name: str, *, weights: str | None = None, input_size: int | None = None, num_classes: int | None = None,
             placeholder: bool = False, seed: int | None = None) -> tuple[nn.Module, ModelCard]:
    """A freshly built network `name` (features out unless `num_classes`) and its card.

    SynthWorld names take `num_classes` (a fresh linear head; None: features out) and no weights. torchvision
    names load `weights` (an enum member name; None: random initialisation, from the global RNG unless `seed`);
    `placeholder` (dry runs) builds random weights instead, whether or not the file is there, drawn in
    `models.seeded_rng(seed or 0)` (the same weights every dry run, the global stream untouched); see
    `models.torchvision_model`. A ViT with published weights must be given its own `input_size` (or none);
    with random weights it is built for `input_size`.
    """
    if name in SMALL_ARCHS:
        if weights is not None:
            raise ConfigError(f"{name} has no published weights; use source_backbone for the SynthWorld pretraining.")
        net = small_resnet(name, num_classes=num_classes or 0)
        return net, ModelCard(name, net.feature_dim, _parameters(net), input_size, *NO_NORMALISATION, "random init")
    if num_classes is not None:
        raise ConfigError(f"num_classes is for the SynthWorld architectures {sorted(SMALL_ARCHS)}; {name} comes "
                          "features out.")
    net = torchvision_model(name, weights, placeholder=placeholder, seed=seed, image_size=input_size)
    if hasattr(net, "image_size"):  # ViTs are built for one input size
        if input_size and input_size != net.image_size:
            raise ConfigError(f"{name} with {weights} takes {net.image_size}x{net.image_size} images, "
                              f"but its input size is set to {input_size}.")
        input_size = net.image_size
    net, dim = headless(net)
    origin = "random init" if weights is None or placeholder else f"torchvision {weights}"
    return net, ModelCard(name, dim, _parameters(net), input_size or None, IMAGENET_MEAN, IMAGENET_STD, origin)


def source_backbone(arch: str, pretraining: SourcePretraining, seed: int) -> tuple[nn.Module, ModelCard, dict]:
    """SynthWorld `arch` pretrained on the source task by `pretraining` (cached; `pretrain.pretrain_source`),
    headless, on [0, 1] images; with its card and the pretraining summary."""
    from .pretrain import pretrain_source

    net, summary = pretrain_source(arch, pretraining, seed=seed)
    net, dim = headless(net)
    card = ModelCard(arch, dim, _parameters(net), pretraining.data.world.size, *NO_NORMALISATION,
                     f"pretrained here on the SynthWorld source task (60 classes, seed {seed}, "
                     f"top-1 {summary['source_top1']:.1f}%)")
    return net, card, summary


@dataclass(frozen=True)
class TextCard:
    """What a zoo text encoder is: output size, parameters, longest input (tokens), where its weights came from."""

    name: str
    feature_dim: int
    parameters: int
    max_length: int
    weights: str


SMALL_TEXT = ("bert", "roberta")


def text_encoder(name: str, *, hidden: int = 128, layers: int = 2, max_length: int = 32, tokenizer=None,
                 path=None, allow_random: bool = False, normalize: bool = False):
    """(`text.TextEncoder`, its `TextCard`): a text encoder by name, mean-pooled vectors out.

    `bert`/`roberta`: a small encoder built here (random init from the global RNG; seed before calling)
    with `hidden` width, `layers` layers, one head per 32 dims, over SynthWorld's word-level tokenizer
    (`tokenizer` to share one, else a new one) truncating at `max_length` tokens. Any other name is a
    published checkpoint's Hub id, read from the folder `path` (nothing downloads; `allow_random`: random
    weights in dry runs when the folder has none; `normalize`: L2-normalised vectors).
    """
    from . import text

    if name in SMALL_TEXT:
        if tokenizer is None:
            from .synthworld import vocabulary

            tokenizer = text.build_tokenizer(vocabulary(), max_length=max_length)
        with text.quiet_transformers():
            model = text.small_text_model(name, len(tokenizer), hidden=hidden, layers=layers,
                                          heads=max(1, hidden // 32), max_positions=max_length,
                                          pad_token_id=tokenizer.pad_token_id)
        encoder = text.TextEncoder(tokenizer, model, max_length=max_length, normalize=normalize)
        weights = "random init"
    else:
        if path is None:
            raise ConfigError(f"text encoder {name!r} is a published checkpoint: give the folder holding it (path=); "
                              f"the encoders built here are {SMALL_TEXT}.")
        encoder = text.load_text_encoder(path, allow_random=allow_random, normalize=normalize, repo_id=name)
        weights = f"{name}{' (random if no weights: dry run)' if allow_random else ''}"
    card = TextCard(name, encoder.dim, _parameters(encoder.model), encoder.max_length, weights)
    return encoder, card


def clip(pretraining: ClipPretraining | None = None, *, seed: int = 0, path=None, repo_id: str | None = None,
         allow_random: bool = False):
    """(CLIPModel, tokenizer, card of its image tower, pretraining summary).

    With `pretraining` (tiny/small): the small CLIP pretrained here by it on SynthWorld source captions
    (`clip.pretrain_small_clip`, cached, seed `seed`). Without (paper): the published checkpoint in the folder
    `path` (`repo_id` names the checkpoint in the card and in the how-to-get-it hint of a missing folder; nothing
    downloads; `allow_random`: random weights in dry runs when the folder has none) and an empty summary.
    """
    from . import clip as kclip

    if pretraining is not None:
        model, tokenizer, summary = kclip.pretrain_small_clip(pretraining, seed=seed)
        name, weights = summary["arch"]["name"], f"pretrained here on SynthWorld source captions (seed {seed})"
    else:
        name = repo_id or kclip.PAPER_CLIP
        model, tokenizer = kclip.load_clip(path, allow_random=allow_random, repo_id=name)
        summary, weights = {}, f"{name}{' (random if no weights: dry run)' if allow_random else ''}"
    vision = model.config.vision_config
    card = ModelCard(f"clip:{name}",
                     model.config.projection_dim, _parameters(model), vision.image_size, CLIP_MEAN, CLIP_STD, weights)
    return model, tokenizer, card, summary
