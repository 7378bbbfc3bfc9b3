"""CLIP at two sizes: a small one pretrained here on SynthWorld, the published one loaded from disk.

Studies 1 and 2 need an image-text model. At `paper` it is
`openai/clip-vit-base-patch32` (Hugging Face `CLIPModel`). At `small`/`tiny`
it is the same class built from a small `CLIPConfig` (a ViT on 32x32 images
and a causal text transformer over SynthWorld's word-level tokenizer) and
pretrained with CLIP's symmetric contrastive loss on the SynthWorld *source*
images and their captions. Two additions, both measured to matter here:
attribute-changed captions as extra negatives (NegCLIP), and a share of images
captioned by their class prompt. Without the prompts, zero-shot accuracy with
"This is an image of a star." stayed near chance (11-14%) although the image
embeddings held the shape (a caption-ensemble classifier reached 38%): a
bare prompt looked like no training caption. With them it reached 38%.
Pretraining runs once per (config, data, schedule, seed): the training loop's
checkpoint is the cache, so the second notebook that asks for it gets the
finished weights in seconds.

The helpers below hide two things notebooks should not care about:
preprocessing (every model in the lab takes images in [0, 1]; CLIP resizes
them to its input size and normalises with its own statistics here), and the
return types of transformers 5.x, where `get_image_features` /
`get_text_features` return a ModelOutput whose `pooler_output` holds the
projected embedding (older versions returned the tensor itself).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import metrics
from .cache import code_fingerprint
from .errors import ConfigError
from .frozen import batches, outputs
from .losses import clip_contrastive_loss
from .pretrain import SynthData, SynthPretraining, to_tensors
from .published import PretrainingFiles, recipe
from .splits import tensor_loader
from .synthworld import class_prompts, vocabulary
from .teacher import CLIP_MEAN, CLIP_STD, Normalize
from .text import build_tokenizer, load_local_model, quiet_transformers, tokenize
from .recipes import Recipe
from .train import resolve_device, seed_everything, train

__all__ = ["SMALL_CLIP_ARCHS", "PAPER_CLIP", "small_clip_config", "preprocess", "image_embeds", "text_embeds",
           "encode_texts", "encode_images", "retrieval_recalls", "zero_shot_accuracy",
           "ClipPretraining", "pretrain_small_clip", "load_clip"]

#: Named small CLIP sizes (like `models.SMALL_ARCHS`): 32x32 images in 8x8 patches -> 16 patch tokens.
#: Patch 4 (64 tokens) learned less in the same CPU time (measured: worse recall and zero-shot).
SMALL_CLIP_ARCHS = {
    "clip_xs": dict(patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, heads=2,
                    projection_dim=32),
    "clip_s": dict(patch_size=8, vision_hidden=64, vision_layers=2, text_hidden=64, text_layers=2, heads=4,
                   projection_dim=64),
}
PAPER_CLIP = "openai/clip-vit-base-patch32"
#: Longest SynthWorld caption is 25 tokens with [CLS]/[SEP]; prompts are shorter.
SYNTH_MAX_TOKENS = 32


def small_clip_config(vocab_size: int, *, patch_size: int, vision_hidden: int, vision_layers: int, text_hidden: int,
                      text_layers: int, heads: int, projection_dim: int, image_size: int = 32,
                      max_positions: int = SYNTH_MAX_TOKENS, pad_token_id: int = 0, bos_token_id: int = 2,
                      eos_token_id: int = 3):
    """A `CLIPConfig` for small images and a word-level tokenizer (ids as `text.build_tokenizer` gives them).

    The architecture (patch size to projection size) has no default: one of `SMALL_CLIP_ARCHS`, or spelled out.

    The text tower pools at the first `eos_token_id` ([SEP]), which must not be
    2: transformers treats eos id 2 as the legacy "argmax of the ids" rule.
    """
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    if image_size % patch_size:
        raise ConfigError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size}).")
    if eos_token_id == 2:
        raise ConfigError("eos_token_id 2 selects transformers' legacy pooling rule; use the [SEP] id (3).")
    for name, hidden in (("vision_hidden", vision_hidden), ("text_hidden", text_hidden)):
        if hidden % heads:
            raise ConfigError(f"{name} ({hidden}) must be divisible by heads ({heads}).")
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=4 * text_hidden,
                          num_hidden_layers=text_layers, num_attention_heads=heads,
                          max_position_embeddings=max_positions,
                          projection_dim=projection_dim, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                          eos_token_id=eos_token_id)
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=heads, image_size=image_size,
                              patch_size=patch_size, projection_dim=projection_dim)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)


def preprocess(model, images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (N, 3, H, W) -> CLIP pixel values: resized to the vision input size, CLIP-normalised."""
    if images01.dim() != 4 or images01.shape[1] != 3 or not images01.is_floating_point():
        raise ValueError(f"images must be (N, 3, H, W) floats in [0, 1], got {tuple(images01.shape)} "
                         f"{images01.dtype} (uint8 images: augment.as_float_images)")
    norm = Normalize(CLIP_MEAN, CLIP_STD, input_size=int(model.config.vision_config.image_size))
    return norm.to(images01.device)(images01.float())


def _embedding(out, name: str) -> torch.Tensor:
    """The projected embedding, whether transformers returned a tensor or a ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    for key in (name, "pooler_output"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find the {name} in a {type(out).__name__}: transformers changed its return type again.")


def image_embeds(model, images01: torch.Tensor) -> torch.Tensor:
    """Projected (not normalised) image embeddings (N, projection_dim) of [0, 1] images."""
    return _embedding(model.get_image_features(pixel_values=preprocess(model, images01)), "image_embeds")


def text_embeds(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Projected (not normalised) text embeddings (N, projection_dim) of tokenized texts."""
    return _embedding(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask), "text_embeds")


def encode_texts(model, tokenizer, texts, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised text embeddings of a list of strings, on the CPU (model in eval mode)."""
    device = next(model.parameters()).device

    def embed(chunk):
        enc = tokenize(tokenizer, chunk)
        return F.normalize(text_embeds(model, enc["input_ids"].to(device), enc["attention_mask"].to(device)).float(),
                           dim=-1)

    return outputs(model, batches(list(texts), batch_size), embed)


def encode_images(model, images01: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings of a [0, 1] image tensor, on the CPU (model in eval mode)."""
    device = next(model.parameters()).device
    return outputs(model, batches(images01, batch_size),
                   lambda x: F.normalize(image_embeds(model, x.to(device)).float(), dim=-1))


def retrieval_recalls(image_emb: torch.Tensor, text_emb: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k in % for image->text and text->image retrieval; row i of each is a matching pair.

    Keys `i2t_r{k}` and `t2i_r{k}`. Ties count against the query (the true
    item must score strictly higher than all but k-1 others).
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings must be paired row by row, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    sims = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    out = {}
    for name, s in (("i2t", sims), ("t2i", sims.T)):
        rank = (s > s.diag().unsqueeze(1)).sum(1) + (s == s.diag().unsqueeze(1)).sum(1) - 1
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float((rank < k).float().mean())
    return out


def zero_shot_accuracy(model, tokenizer, images01: torch.Tensor, labels: torch.Tensor, prompts) -> float:
    """Top-1 in % of classifying images by their most similar class prompt (CLIP's zero-shot rule)."""
    scores = encode_images(model, images01) @ encode_texts(model, tokenizer, list(prompts)).T
    return metrics.accuracy(labels, scores)


@dataclass(frozen=True, kw_only=True)
class ClipPretraining(SynthPretraining):
    """How `pretrain_small_clip` trains: the small CLIP `arch` (`SMALL_CLIP_ARCHS`) for `epochs` at `lr` on
    `device`, with attribute-changed captions as extra negatives (`hard_negatives`) and a share `prompt_p` of
    images captioned by their class prompt (the profile's `s2_clip_*`)."""

    arch: str
    epochs: int
    lr: float
    hard_negatives: bool
    prompt_p: float
    device: str

    def __post_init__(self):
        if self.arch not in SMALL_CLIP_ARCHS:
            raise ConfigError(f"unknown small CLIP '{self.arch}'; choose one of {sorted(SMALL_CLIP_ARCHS)}.")

    @classmethod
    def of(cls, cfg) -> ClipPretraining:
        if cfg.profile == "paper":
            raise ConfigError(f"the small CLIP is for the tiny/small profiles; `paper` loads {PAPER_CLIP} "
                              "with load_clip().")
        return cls(arch=cfg.s2_clip_arch, epochs=int(cfg.s2_clip_epochs), lr=float(cfg.s2_clip_lr),
                   hard_negatives=bool(cfg.s2_clip_hard_negatives), prompt_p=float(cfg.s2_clip_prompt_p),
                   device=cfg.device, **SynthPretraining.of_profile(cfg))


def pretrain_small_clip(pretraining: ClipPretraining, seed: int = 0):
    """A small `CLIPModel` pretrained contrastively on SynthWorld source images and captions; cached.

    Returns `(model, tokenizer, summary)`: the model in eval mode on the CPU,
    the word-level tokenizer it reads, and a summary with the training
    history, the retrieval recalls on the source test split and the zero-shot
    accuracy on the target test split with the class prompts (a sanity
    number: far above the 10% of chance when the towers learned). The cache
    key holds the recipe `pretraining`, the SynthWorld data, the seed and
    `dry_run`. AdamW (weight decay 0.1 on matrices), warm-up then cosine, no
    augmentation (a flip or shift would falsify the captions' position words).
    """
    from transformers import CLIPModel

    data, epochs, lr = pretraining.data, pretraining.epochs, pretraining.lr
    hard_negatives, prompt_p = pretraining.hard_negatives, pretraining.prompt_p
    arch = {"name": pretraining.arch, **SMALL_CLIP_ARCHS[pretraining.arch]}
    tokenizer = build_tokenizer(vocabulary(), max_length=SYNTH_MAX_TOKENS)
    config = small_clip_config(len(tokenizer), image_size=data.world.size, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                               **SMALL_CLIP_ARCHS[pretraining.arch])
    key = {"what": "small-clip", "config": config.to_dict(), "vocab": tokenizer.get_vocab(),
           "world": asdict(data.world), "n_train": data.sizes["source_train"], "n_test": data.sizes["source_test"],
           "n_target_test": data.sizes["target_test"], "epochs": epochs, "lr": lr, "batch": pretraining.batch_size,
           "seed": seed, "hard_negatives": hard_negatives, "prompt_p": prompt_p, "dry_run": pretraining.dry_run,
           "code": code_fingerprint(__name__)}
    key["config"].pop("transformers_version", None)
    run = PretrainingFiles(f"clip-{arch['name']}", key)
    device = resolve_device(pretraining.device)

    gen = seed_everything(seed)
    with quiet_transformers():
        model = CLIPModel(config)
    if (summary := run.shipped(model) or run.finished(model)) is not None:  # skip generating the training data
        return model.eval(), tokenizer, summary

    loader = tensor_loader(*_source_pairs(data, tokenizer), batch_size=pretraining.batch_size, shuffle=True,
                           generator=gen, drop_last=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    training = Recipe(optimizer="adamw", lr=lr, betas=(0.9, 0.98), eps=1e-6, schedule="warmup_cosine",
                      warmup_fraction=0.1, warmup_cap=200, epochs=epochs, max_steps=pretraining.max_steps)

    def compute_loss(batch):
        images, ids, mask, neg_ids, neg_mask, prompt_ids, prompt_mask = batch
        scale = model.logit_scale.exp().clamp(max=100.0)
        if prompt_p > 0:  # some images are described by their class prompt, so prompts are in-distribution
            use = (torch.rand(len(ids), device=ids.device) < prompt_p).unsqueeze(1)
            ids, mask = torch.where(use, prompt_ids, ids), torch.where(use, prompt_mask, mask)
        if hard_negatives:  # one attribute-changed caption per image, drawn afresh each step
            pick = torch.randint(neg_ids.shape[1], (len(ids),), device=ids.device)
            rows = torch.arange(len(ids), device=ids.device)
            ids = torch.cat([ids, neg_ids[rows, pick]])
            mask = torch.cat([mask, neg_mask[rows, pick]])
        texts = text_embeds(model, ids, mask)
        loss = clip_contrastive_loss(image_embeds(model, images), texts[:len(images)], scale,
                                     texts[len(images):] if hard_negatives else None)
        return {"loss": loss, "scale": scale.detach()}

    history = train(model, compute_loss, loader, training, parameters=[
        {"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], checkpoint=run.checkpoint,
        checkpoint_key=run.digest, device=device, desc=f"pretrain {arch['name']} (CLIP) on source",
        progress=pretraining.progress)
    model.eval()

    summary = run.finish({
        "arch": arch, "epochs": epochs, "lr": lr, "seed": seed, "recipe": recipe(key), "history": history.to_dict(),
        **_clip_evaluation(model, tokenizer, data), "parameters": sum(p.numel() for p in model.parameters())})
    return model.cpu().eval(), tokenizer, summary


def _source_pairs(data: SynthData, tokenizer) -> tuple[torch.Tensor, ...]:
    """SynthWorld source images with their caption, one-attribute hard negatives and class prompt, tokenised."""
    train = data.split("source_train")
    x, _ = to_tensors(train)
    enc = tokenize(tokenizer, train.captions, SYNTH_MAX_TOKENS)
    attrs = sorted(train.hard_negatives[0])
    neg = tokenize(tokenizer, [h[a] for h in train.hard_negatives for a in attrs], SYNTH_MAX_TOKENS)
    neg = {k: v.view(len(train), len(attrs), -1) for k, v in neg.items()}
    prompt_of = class_prompts("source")
    prompts = tokenize(tokenizer, [prompt_of[k] for k in train.labels], SYNTH_MAX_TOKENS)
    width = enc["input_ids"].shape[1]
    prompts = {k: F.pad(v, (0, width - v.shape[1])) for k, v in prompts.items()}  # [PAD] = 0, mask 0
    return (x, enc["input_ids"], enc["attention_mask"], neg["input_ids"], neg["attention_mask"], prompts["input_ids"],
            prompts["attention_mask"])


def _clip_evaluation(model, tokenizer, data: SynthData) -> dict:
    """Retrieval recalls on the source test split and zero-shot top-1 on the target test split."""
    test = data.split("source_test")
    xt, _ = to_tensors(test)
    recalls = retrieval_recalls(encode_images(model, xt), encode_texts(model, tokenizer, test.captions), ks=(1, 5))
    xz, yz = to_tensors(data.split("target_test"))
    return {"source_test_recalls": recalls, "target_zero_shot_top1": zero_shot_accuracy(
        model, tokenizer, xz, yz, class_prompts("target")), "n_source_test": len(test)}


def load_clip(name_or_path=PAPER_CLIP, allow_random: bool = False, repo_id: str = PAPER_CLIP):
    """`(CLIPModel, tokenizer)` from disk (`text.load_local_model`: nothing downloads; `allow_random`, dry runs:
    random weights only when the folder has none)."""
    from transformers import CLIPConfig, CLIPModel

    model, tokenizer = load_local_model(
        name_or_path, config_class=CLIPConfig, what=f"CLIP model {repo_id}", repo_id=repo_id,
        allow_random=allow_random, build=CLIPModel,
        load=lambda source, config: CLIPModel.from_pretrained(source, local_files_only=True))
    return model.eval(), tokenizer
