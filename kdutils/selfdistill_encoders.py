"""Study 1's frozen encoders and fresh students, by name and profile.

`Encoders` loads (or pretrains once and caches) the image encoders, which
give a token sequence and a pooled vector (`ImageEncoder`, a `FrozenTeacher`),
and the text encoders, which give one vector per prompt or caption
(`TextQueries`). A `Student` is a freshly initialised copy of an image
encoder's architecture plus a linear layer over the classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import clip as kclip
from . import text as ktext
from .cache import cached, code_fingerprint, content_digest, model_fingerprint
from .errors import ConfigError
from .frozen import batches, outputs
from .models import torchvision_model
from .paths import under
from .pretrain import SourcePretraining, SynthPretraining, pretrain_source
from .published import PretrainingFiles, recipe
from .selfdistill_data import clip_path
from .splits import tensor_loader
from .teacher import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, FrozenTeacher, Normalize
from .recipes import FrozenDict, Recipe
from .train import seed_everything, train
from .zoo import backbone, clip, text_encoder

__all__ = ["ImageEncoder", "Student", "TextQueries", "EncoderSources", "Encoders", "TextPretraining",
           "pretrain_small_roberta"]

def _resnet_feature_map(net, x: torch.Tensor) -> torch.Tensor:
    """torchvision ResNet up to layer4 (the last feature map, before pooling)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class ImageEncoder(FrozenTeacher):
    """A frozen pretrained image encoder (a `FrozenTeacher`): [0, 1] images -> (tokens (N, T, D), pooled (N, P)).

    Tokens are the head's keys and values: ViT patch tokens (class token
    dropped) or the last feature map flattened to H*W tokens. `pooled` is the
    encoder's own summary, the input of the no-text teacher and of the probe:
    CLIP's post-LayerNorm class token, the ResNet's global average pool.
    `student_spec` describes the architecture a fresh student copies. The
    default normalisation (mean 0, std 1) leaves images as they are (the
    SmallResNets were trained on [0, 1] images).
    """

    def __init__(self, name: str, kind: str, net: nn.Module, student_spec: dict, description: str, *,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size: int | None = None):
        if kind not in ("small_resnet", "torchvision_resnet", "clip_vision"):
            raise ConfigError(f"unknown image encoder kind '{kind}'.")
        super().__init__(net, mean, std, input_size)
        self.name, self.kind, self.student_spec, self.description = name, kind, student_spec, description
        self.fingerprint = model_fingerprint(self)

    @torch.no_grad()
    def forward(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(images01)
        if self.kind == "small_resnet":
            tokens = self.model.tokens(x)
            return tokens, tokens.mean(1)
        if self.kind == "torchvision_resnet":
            tokens = _resnet_feature_map(self.model, x).flatten(2).transpose(1, 2)
            return tokens, tokens.mean(1)
        out = self.model(pixel_values=x)
        return out.last_hidden_state[:, 1:], out.pooler_output


class Student(nn.Module):
    """A freshly initialised copy of an image encoder's architecture plus a linear layer over classes."""

    def __init__(self, spec: dict, num_classes: int):
        super().__init__()
        self.kind = spec["kind"]
        if self.kind in ("small_resnet", "torchvision_resnet"):
            self.backbone, card = backbone(spec["arch"], input_size=spec.get("input_size"))
            dim, self.preprocess = card.feature_dim, card.normalize()
        elif self.kind == "clip_vision":
            from transformers import CLIPVisionConfig, CLIPVisionModel

            with ktext.quiet_transformers():
                self.backbone = CLIPVisionModel(CLIPVisionConfig(**spec["config"]))
            dim = spec["config"]["hidden_size"]
            self.preprocess = Normalize(CLIP_MEAN, CLIP_STD, spec["config"]["image_size"])
        else:
            raise ConfigError(f"unknown student kind '{self.kind}'.")
        self.fc = nn.Linear(dim, num_classes)

    def features(self, images01: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images01)
        if self.kind == "small_resnet":
            return self.backbone.features(x)
        if self.kind == "torchvision_resnet":
            return self.backbone(x)
        return self.backbone(pixel_values=x).pooler_output

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images01))


class TextQueries:
    """A frozen text encoder: a list of texts -> one vector per text (the head's queries), on the CPU.

    `encode(texts)` runs `model` (the module put in eval mode while it encodes).
    """

    def __init__(self, name: str, model: nn.Module, encode, dim: int, fingerprint: str, description: str):
        self.name, self.model, self._encode, self.dim = name, model, encode, dim
        self.fingerprint, self.description = fingerprint, description

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode.")
        return outputs(self.model, batches(texts, 256), self._encode)

    def cached(self, texts: Sequence[str]) -> torch.Tensor:
        """Encodings of many texts (captions), cached on disk by encoder and text."""
        key = {"what": "s1-text", "encoder": self.fingerprint, "texts": content_digest(list(texts)), "n": len(texts)}
        return cached("s1-text", key, lambda: self(texts), verbose=False)


def _masked_lm(tokenizer, model: nn.Module, lm_head: nn.Module):
    """(encode(texts) -> (ids, attention mask), loss(ids, attention) -> (loss, logits, targets)) of masked
    language modelling: 15% of the word tokens (never the special ones) become [MASK] and are predicted."""
    mask_id, first_word = tokenizer.mask_token_id, len(ktext.SPECIAL_TOKENS)

    def encode(texts):
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=kclip.SYNTH_MAX_TOKENS,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def loss_of(ids, attention):
        chosen = (torch.rand(ids.shape, device=ids.device) < 0.15) & (ids >= first_word)
        inputs, targets = ids.masked_fill(chosen, mask_id), ids.masked_fill(~chosen, -100)
        logits = lm_head(model(input_ids=inputs, attention_mask=attention).last_hidden_state)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100), logits, targets

    return encode, loss_of


@dataclass(frozen=True, kw_only=True)
class TextPretraining(SynthPretraining):
    """How `pretrain_small_roberta` trains: a `hidden`-wide, `layers`-deep encoder for `epochs` (one in a dry
    run) of masked language modelling (the profile's `s1_text_hidden`, `s1_text_layers`, `s1_mlm_epochs`)."""

    hidden: int
    layers: int
    epochs: int

    @classmethod
    def of(cls, cfg) -> TextPretraining:
        return cls(hidden=cfg.s1_text_hidden, layers=cfg.s1_text_layers, epochs=cfg.phase_epochs(cfg.s1_mlm_epochs),
                   **SynthPretraining.of_profile(cfg))


def pretrain_small_roberta(pretraining: TextPretraining, seed: int = 0):
    """A small RoBERTa-style encoder trained as a masked language model on SynthWorld source captions; cached.

    The zoo's `roberta` (`zoo.text_encoder`: word-level tokenizer over
    SynthWorld's closed vocabulary) plus a linear MLM head: 15% of the word
    tokens become [MASK] and are predicted. Returns the `TextEncoder`
    (mean-pooled) and a summary with the masked-word accuracy on source test
    captions. Cached via the training loop's checkpoint.
    """
    data, hidden, layers, epochs = pretraining.data, pretraining.hidden, pretraining.layers, pretraining.epochs
    gen = seed_everything(seed)
    encoder, card = text_encoder("roberta", hidden=hidden, layers=layers, max_length=kclip.SYNTH_MAX_TOKENS)
    tokenizer, model = encoder.tokenizer, encoder.model
    key = {"what": "s1-roberta-mlm", "vocab": len(tokenizer), "hidden": hidden, "layers": layers,
           "heads": model.config.num_attention_heads, "world": asdict(data.world),
           "n_train": data.sizes["source_train"], "epochs": epochs, "batch": pretraining.batch_size, "seed": seed,
           "dry_run": pretraining.dry_run, "code": code_fingerprint(__name__)}
    run = PretrainingFiles("roberta-small", key)
    lm_head = nn.Linear(hidden, len(tokenizer))
    mlm = nn.ModuleDict({"encoder": model, "lm_head": lm_head})
    if (shipped := run.shipped(model)) is not None:  # published weights (kdutils.published)
        return encoder.eval(), shipped
    encode, loss_of = _masked_lm(tokenizer, model, lm_head)
    ids, attention = encode(data.split("source_train").captions)
    loader = tensor_loader(ids, attention, batch_size=pretraining.batch_size, shuffle=True, generator=gen,
                           drop_last=True)
    training = Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.01, schedule="warmup_cosine", warmup_fraction=0.1,
                      warmup_cap=100, epochs=epochs, max_steps=pretraining.max_steps)
    history = train(mlm, lambda b: {"loss": loss_of(*b)[0]}, loader, training,
                    checkpoint=run.checkpoint, checkpoint_key=run.digest,
                    desc="MLM small RoBERTa on source captions", progress=pretraining.progress)
    mlm.eval()
    with torch.no_grad():
        torch.manual_seed(seed + 1)
        _, logits, targets = loss_of(*encode(data.split("source_test").captions))
        chosen = targets != -100
        masked_acc = 100.0 * float((logits.argmax(-1)[chosen] == targets[chosen]).float().mean())
    summary = {"hidden": hidden, "layers": layers, "epochs": epochs, "recipe": recipe(key),
               "history": history.to_dict(), "masked_word_top1_source_test": masked_acc,
               "parameters": card.parameters}
    return encoder.eval(), summary


@dataclass(frozen=True, kw_only=True)
class EncoderSources:
    """Where study 1's encoders come from, read from a profile once. tiny/small: pretrained here by `source` (the
    SmallResNet `resnet_arch`), `clip` and `text`; paper (those three None): the CLIP folders `clips` ({image
    encoder: (folder, Hub id)}), torchvision ResNet-50 with `resnet50_weights` at `image_size` and the text encoder
    `roberta` (a Hub id, read from `roberta_path`), random in a `dry_run`."""

    resnet_arch: str
    source: SourcePretraining | None
    clip: kclip.ClipPretraining | None
    text: TextPretraining | None
    clips: FrozenDict  # image encoder -> (folder, Hub id)
    resnet50_weights: str
    roberta: str
    roberta_path: Path
    image_size: int
    dry_run: bool

    @classmethod
    def of(cls, cfg) -> EncoderSources:
        synthworld = cfg.profile != "paper"
        return cls(resnet_arch=cfg.s1_resnet_arch, source=SourcePretraining.of(cfg) if synthworld else None,
                   clip=kclip.ClipPretraining.of(cfg) if synthworld else None,
                   text=TextPretraining.of(cfg) if synthworld else None,
                   clips=FrozenDict({e: clip_path(cfg, e) for e in ("vit_b_32", "vit_b_16", "resnet50")}),
                   resnet50_weights=cfg.s1_resnet50_weights, roberta=cfg.s1_roberta,
                   roberta_path=under(cfg.weights_root, cfg.s1_roberta), image_size=cfg.image_size,
                   dry_run=cfg.dry_run)


class Encoders:
    """The run's pretrained encoders from `sources`, each loaded (or pretrained and cached) once, frozen, on `device`.

    tiny/small: `resnet` is the SmallResNet pretrained on SynthWorld's source
    task (`resnet_arch`), `vit` the small CLIP's vision tower (study 2's
    `pretrain_small_clip`); text `clip` is that CLIP's text tower and
    `roberta` a small RoBERTa trained by MLM (`pretrain_small_roberta`).
    paper: `vit_b_32`/`vit_b_16` are CLIP's vision towers, `resnet50` is
    torchvision's ImageNet ResNet-50 (open_clip's CLIP RN50 is not a
    dependency of the lab); text `clip` is the CLIP text tower of the image
    encoder's checkpoint (ViT-B/32's for ResNet-50), `roberta` is roberta-base.
    `seed` is the backbone seed (`cfg.backbone_seed(seed)` of a replicate): the
    pretraining seed of every tiny/small encoder, one set of encoders per
    distinct backbone seed; at `paper` the weights are the downloaded ones.
    """

    def __init__(self, sources: EncoderSources, device, seed: int = 0):
        self.sources, self.device, self.seed = sources, torch.device(device), seed
        self.paper = sources.source is None
        self._images, self._texts, self._clips = {}, {}, {}
        self.summaries: dict = {}

    def clip(self, image_encoder: str | None = None):
        """(CLIPModel, tokenizer) of the small CLIP, or the paper checkpoint paired with `image_encoder`."""
        sources = self.sources
        if not self.paper:
            if "small" not in self._clips:
                model, tokenizer, _, summary = clip(sources.clip, seed=self.seed)
                self.summaries["small_clip"] = summary
                self._clips["small"] = (model.to(self.device).eval(), tokenizer, "small CLIP pretrained on "
                                        f"SynthWorld source captions ({summary['arch']['name']})")
            return self._clips["small"]
        path, repo = sources.clips[image_encoder or "vit_b_32"]
        if repo not in self._clips:
            model, tokenizer, _, _ = clip(path=path, repo_id=repo, allow_random=sources.dry_run)
            self._clips[repo] = (model.to(self.device).eval(), tokenizer, f"CLIP {repo}")
        return self._clips[repo]

    def image(self, name: str) -> ImageEncoder:
        if name in self._images:
            return self._images[name]
        sources, small = self.sources, not self.paper
        if small and name == "resnet":
            net, summary = pretrain_source(sources.resnet_arch, sources.source, seed=self.seed)
            self.summaries["resnet"] = summary
            enc = ImageEncoder(name, "small_resnet", net, {"kind": "small_resnet", "arch": sources.resnet_arch},
                               f"SmallResNet {sources.resnet_arch} pretrained on SynthWorld source "
                               f"(source top-1 {summary['source_top1']:.1f}%)")
        elif (small and name == "vit") or (not small and name in ("vit_b_32", "vit_b_16")):
            model, _, description = self.clip(name)
            vc = model.config.vision_config
            spec = {"kind": "clip_vision", "config": {k: v for k, v in vc.to_dict().items()
                                                      if k in _VISION_CONFIG_KEYS}}
            enc = ImageEncoder(name, "clip_vision", model.vision_model, spec, f"vision tower of {description}",
                               mean=CLIP_MEAN, std=CLIP_STD, input_size=vc.image_size)
        elif not small and name == "resnet50":
            net = torchvision_model("resnet50", sources.resnet50_weights, placeholder=sources.dry_run)
            enc = ImageEncoder(name, "torchvision_resnet", net,
                               {"kind": "torchvision_resnet", "arch": "resnet50", "input_size": sources.image_size},
                               f"torchvision resnet50 {sources.resnet50_weights}"
                               f"{' (random weights: dry run)' if sources.dry_run else ''}; open_clip RN50 not used "
                               "(not a dependency of the lab)",
                               mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=sources.image_size)
        else:
            known = "resnet, vit" if small else "vit_b_32, vit_b_16, resnet50"
            raise ConfigError(f"unknown image encoder '{name}' at profile {'tiny/small' if small else 'paper'}; "
                              f"choose {known}.")
        self._images[name] = enc.to(self.device)
        return enc

    def text(self, name: str, image_encoder: str | None = None) -> TextQueries:
        """Text encoder `name` ('clip' or 'roberta'); CLIP's text tower is paired with `image_encoder` at paper."""
        sources = self.sources
        if name == "clip":
            model, tokenizer, description = self.clip(image_encoder if self.paper else None)
            tag = f"clip:{description}"
            if tag not in self._texts:
                fp = model_fingerprint(model.text_model) + model_fingerprint(model.text_projection)
                self._texts[tag] = TextQueries(
                    "clip", model, lambda texts: kclip.encode_texts(model, tokenizer, texts),
                    model.config.projection_dim, fp, f"text tower of {description} (projected, L2-normalised)")
            return self._texts[tag]
        if name == "roberta":
            if "roberta" not in self._texts:
                if self.paper:
                    encoder, _ = text_encoder(sources.roberta, path=sources.roberta_path,
                                              allow_random=sources.dry_run)
                    description = f"{sources.roberta} (mean-pooled)"
                else:
                    encoder, summary = pretrain_small_roberta(sources.text, seed=self.seed)
                    self.summaries["roberta"] = summary
                    description = (f"small RoBERTa ({summary['hidden']}-d, {summary['layers']} layers), MLM on "
                                   "source captions (masked-word top-1 "
                                   f"{summary['masked_word_top1_source_test']:.1f}%), mean-pooled")
                encoder = encoder.to(self.device).eval()
                self._texts["roberta"] = TextQueries("roberta", encoder, encoder.encode, encoder.dim,
                                                     model_fingerprint(encoder.model), description)
            return self._texts["roberta"]
        raise ConfigError(f"unknown text encoder '{name}'; choose clip or roberta.")


_VISION_CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                       "patch_size", "num_channels", "hidden_act", "layer_norm_eps", "projection_dim")
