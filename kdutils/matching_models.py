"""Study 2's networks at each profile: the CLIP teacher, the two-tower students' starting encoders, and
what `paper` needs on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .clip import PAPER_CLIP, ClipPretraining
from .matching import TwoTowerMatcher
from .models import weights_requirement
from .paths import under
from .pretrain import SourcePretraining

__all__ = ["MINILM", "paper_requirements", "MatchingModels", "build_teacher", "student_factory"]

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def paper_requirements(cfg) -> dict:
    """{what: (path, how to get it)} for `session.require_files` at `paper`.

    Data is always required; weights only outside dry runs (where random
    weights are allowed, though the model folders' config and tokenizer are
    still read).
    """
    from .splits import paper_data
    from .text import hf_download_hint

    need = paper_data(cfg, "coco")
    weights = under(cfg.weights_root)
    clip_dir, text_dir = weights / cfg.s2_clip_weights, weights / cfg.s2_text_weights
    need["CLIP teacher config"] = (clip_dir / "config.json", hf_download_hint(PAPER_CLIP, clip_dir))
    need["MiniLM text encoder config"] = (text_dir / "config.json", hf_download_hint(MINILM, text_dir))
    if not cfg.dry_run:
        need[f"{cfg.student_arch} {cfg.s2_student_weights} weights"] = weights_requirement(
            cfg.student_arch, cfg.s2_student_weights)
    return need


@dataclass(frozen=True, kw_only=True)
class MatchingModels:
    """Where study 2's networks come from. tiny/small: the small CLIP pretrained here by `clip`, the image tower by
    `source` and a random `text_layers` x `text_hidden` BERT; `paper` (`clip`, `source` None): the folders
    `clip_path`, `text_path` and torchvision `student_weights`, random in a `dry_run`. `head_width`: the students'."""

    student_arch: str
    head_width: int
    clip: ClipPretraining | None
    source: SourcePretraining | None
    text_hidden: int
    text_layers: int
    clip_path: Path
    text_path: Path
    student_weights: str
    dry_run: bool

    @classmethod
    def of(cls, cfg) -> MatchingModels:
        synthworld, weights = cfg.profile != "paper", under(cfg.weights_root)
        return cls(student_arch=cfg.student_arch, head_width=cfg.s2_head_width,
                   clip=ClipPretraining.of(cfg) if synthworld else None,
                   source=SourcePretraining.of(cfg) if synthworld else None,
                   text_hidden=cfg.s2_text_hidden, text_layers=cfg.s2_text_layers,
                   clip_path=weights / cfg.s2_clip_weights, text_path=weights / cfg.s2_text_weights,
                   student_weights=cfg.s2_student_weights, dry_run=cfg.dry_run)


def build_teacher(models: MatchingModels, seed: int = 0):
    """(CLIPModel, tokenizer, info): the small CLIP pretrained here with `seed` (tiny/small) or the published one
    (paper, which has no seeds)."""
    from .zoo import clip

    if models.clip is not None:
        model, tokenizer, card, summary = clip(models.clip, seed=seed)
        kept = ("source_test_recalls", "target_zero_shot_top1", "parameters")
        return model, tokenizer, {"source": f"small CLIP ({summary['arch']['name']}) pretrained on SynthWorld source",
                                  **{k: summary[k] for k in kept},
                                  "pretrain_loss": [e["train_loss"] for e in summary["history"]["epochs"]]}
    model, tokenizer, card, _ = clip(path=models.clip_path, allow_random=models.dry_run)
    return model, tokenizer, {"source": str(models.clip_path), "parameters": card.parameters}


def student_factory(models: MatchingModels, seed: int = 0):
    """(make(head, seed) -> TwoTowerMatcher, tokenizer, info): fresh students from the same starting encoders.

    `seed`: the backbone seed of the pretrained image tower (tiny/small; `paper`'s weights have none).

    tiny/small: the image tower is a SmallResNet (`student_arch`) pretrained on
    the SynthWorld source task (`pretrain.pretrain_source`, classifier
    removed); the text tower a small BERT from a config over the offline
    SynthWorld tokenizer, randomly initialised per seed (nothing to download).
    paper: torchvision `student_arch` with `student_weights`, classifier
    removed, ImageNet normalisation; `all-MiniLM-L6-v2`, mean-pooled.
    """
    import copy

    from .text import build_tokenizer
    from .zoo import backbone, source_backbone, text_encoder

    arch = models.student_arch
    if models.source is not None:
        from .synthworld import vocabulary

        image_tower, card, summary = source_backbone(arch, models.source, seed=seed)
        tokenizer = build_tokenizer(vocabulary(), max_length=32)

        def text_tower(seed):
            torch.manual_seed(seed)
            return text_encoder("bert", hidden=models.text_hidden, layers=models.text_layers, tokenizer=tokenizer)[0]
        info = {"image_tower": f"{arch} pretrained on SynthWorld source (top-1 {summary['source_top1']:.1f}%)",
                "text_tower": f"BERT {models.text_layers} layers x {models.text_hidden}, random init, mean-pooled"}
    else:
        net, card = backbone(arch, weights=models.student_weights, placeholder=models.dry_run)
        image_tower = nn.Sequential(card.normalize(), net)
        pretrained_text, _ = text_encoder(MINILM, path=models.text_path, allow_random=models.dry_run)
        tokenizer = pretrained_text.tokenizer

        def text_tower(seed):
            return copy.deepcopy(pretrained_text)
        info = {"image_tower": f"torchvision {arch} ({models.student_weights})",
                "text_tower": f"{models.text_path} (mean-pooled, {pretrained_text.dim}-d)"}

    def make(head: str, seed: int) -> TwoTowerMatcher:
        text_encoder = text_tower(seed)
        torch.manual_seed(seed)
        return TwoTowerMatcher(copy.deepcopy(image_tower), card.feature_dim, text_encoder, head=head,
                               width=models.head_width)

    return make, tokenizer, info
