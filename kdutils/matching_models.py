"""Study 2's networks at each profile: the CLIP teacher, the two-tower students' starting encoders, and
what `paper` needs on disk."""

from __future__ import annotations

import torch
from torch import nn

from .clip import PAPER_CLIP
from .matching import TwoTowerMatcher
from .models import weights_requirement
from .paths import under

__all__ = ["MINILM", "paper_inputs", "build_teacher", "student_factory"]

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def paper_inputs(cfg) -> dict:
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


def build_teacher(cfg, seed: int = 0):
    """(CLIPModel, tokenizer, info): the small CLIP pretrained here with `seed` (tiny/small) or the published one
    (paper, which has no seeds)."""
    from .clip import ClipPretraining
    from .zoo import clip

    if cfg.profile != "paper":
        model, tokenizer, card, summary = clip(ClipPretraining.of(cfg), seed=seed)
        kept = ("source_test_recalls", "target_zero_shot_top1", "parameters")
        return model, tokenizer, {"source": f"small CLIP ({summary['arch']['name']}) pretrained on SynthWorld source",
                                  **{k: summary[k] for k in kept},
                                  "pretrain_loss": [e["train_loss"] for e in summary["history"]["epochs"]]}
    path = under(cfg.weights_root) / cfg.s2_clip_weights
    model, tokenizer, card, _ = clip(path=path, allow_random=cfg.dry_run)
    return model, tokenizer, {"source": str(path), "parameters": card.parameters}


def student_factory(cfg, seed: int = 0):
    """(make(head, seed) -> TwoTowerMatcher, tokenizer, info): fresh students from the same starting encoders.

    `seed`: the backbone seed of the pretrained image tower (tiny/small; `paper`'s weights have none).

    tiny/small: the image tower is a SmallResNet (`student_arch`) pretrained on
    the SynthWorld source task (`pretrain.pretrain_source`, classifier
    removed); the text tower a small BERT from a config over the offline
    SynthWorld tokenizer, randomly initialised per seed (nothing to download).
    paper: torchvision `student_arch` with `s2_student_weights`, classifier
    removed, ImageNet normalisation; `all-MiniLM-L6-v2`, mean-pooled.
    """
    import copy

    from .text import build_tokenizer
    from .zoo import backbone, source_backbone, text_encoder

    if cfg.profile != "paper":
        from .pretrain import SourcePretraining
        from .synthworld import vocabulary

        image_tower, card, summary = source_backbone(cfg.student_arch, SourcePretraining.of(cfg), seed=seed)
        tokenizer = build_tokenizer(vocabulary(), max_length=32)

        def text_tower(seed):
            torch.manual_seed(seed)
            return text_encoder("bert", hidden=cfg.s2_text_hidden, layers=cfg.s2_text_layers, tokenizer=tokenizer)[0]
        info = {"image_tower": f"{cfg.student_arch} pretrained on SynthWorld source (top-1 "
                               f"{summary['source_top1']:.1f}%)",
                "text_tower": f"BERT {cfg.s2_text_layers} layers x {cfg.s2_text_hidden}, random init, mean-pooled"}
    else:
        net, card = backbone(cfg.student_arch, weights=cfg.s2_student_weights, allow_random=cfg.dry_run)
        image_tower = nn.Sequential(card.normalize(), net)
        path = under(cfg.weights_root) / cfg.s2_text_weights
        pretrained_text, _ = text_encoder(MINILM, path=path, allow_random=cfg.dry_run)
        tokenizer = pretrained_text.tokenizer

        def text_tower(seed):
            return copy.deepcopy(pretrained_text)
        info = {"image_tower": f"torchvision {cfg.student_arch} ({cfg.s2_student_weights})",
                "text_tower": f"{path} (mean-pooled, {pretrained_text.dim}-d)"}

    def make(head: str, seed: int) -> TwoTowerMatcher:
        text_encoder = text_tower(seed)
        torch.manual_seed(seed)
        return TwoTowerMatcher(copy.deepcopy(image_tower), card.feature_dim, text_encoder, head=head,
                               width=cfg.s2_head_width)

    return make, tokenizer, info
