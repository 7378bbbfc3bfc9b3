"""The image-text representation head of study 1 (a text-queried cross-attention).

The thesis's teacher is a frozen image encoder and a frozen text encoder
joined by one cross-attention block: **Query = the text encoding of a
prompt, Key = Value = the image encoder's token sequence** (ViT patch
tokens, or a ResNet's last feature map flattened to H*W tokens), followed by
a linear layer over the C classes.

Choices made here, and why:

* **Pooled query.** A prompt is encoded to *one* vector (CLIP's projected
  text embedding, or a mean-pooled RoBERTa), so one prompt gives one
  attention map over the image and one attended vector: the map is directly
  the "where did the prompt look" figure, and no second pooling over words
  is needed.
* **No residual from the query.** The attended vector is a weighted average
  of (projected) image tokens only; the text decides *where* to look, the
  image decides *what* is seen. With a residual connection the prompt's
  embedding would reach the classifier directly and the thesis's variant
  below would classify by reading the prompt.
* **Two ways to use one head.** ``own_prompt_logits`` is the thesis's
  variant: each image is queried with its own prompt, "This is an image of a
  [its class]", and the linear layer maps the attended vector to C logits.
  The prompt carries the label, so accuracy measured with the true prompt is
  leakage (reported, and labelled so). ``class_scores`` is the label-free
  variant, as zero-shot CLIP scores a class: every class prompt c queries the
  image and the score of class c is row c of the same linear layer applied to
  the vector attended by prompt c (the diagonal of the full C x C output).
  It needs no label, so it is evaluated on test images; it is also the honest
  way to *test* a head trained the thesis's way.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["TextQueriedHead"]


class TextQueriedHead(nn.Module):
    """Cross-attention (query: pooled text, keys/values: image tokens) + a linear layer over classes.

    Inputs are frozen encoder outputs: image tokens (N, T, image_dim) and
    text encodings (N, text_dim) per image or (C, text_dim) shared class
    prompts. Both are layer-normalised and projected to `dim` (the encoders
    differ in width and scale), then `heads`-head attention, a LayerNorm and
    `fc` (dim -> num_classes).
    """

    def __init__(self, image_dim: int, text_dim: int, num_classes: int, dim: int = 128, heads: int = 4):
        super().__init__()
        if min(image_dim, text_dim, num_classes, dim, heads) < 1:
            raise ConfigError(f"TextQueriedHead sizes must be >= 1, got image_dim={image_dim}, text_dim={text_dim}, "
                              f"num_classes={num_classes}, dim={dim}, heads={heads}.")
        if dim % heads:
            raise ConfigError(f"TextQueriedHead: dim ({dim}) must be divisible by heads ({heads}).")
        self.image_dim, self.text_dim, self.num_classes = image_dim, text_dim, num_classes
        self.image_in = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim))
        self.text_in = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def _check(self, tokens: torch.Tensor, queries: torch.Tensor) -> None:
        if tokens.dim() != 3 or tokens.shape[-1] != self.image_dim:
            raise ValueError(f"image tokens must be (N, T, {self.image_dim}), got {tuple(tokens.shape)}.")
        if queries.shape[-1] != self.text_dim or queries.dim() not in (2, 3):
            raise ValueError(f"text queries must be (Q, {self.text_dim}) or (N, Q, {self.text_dim}), "
                             f"got {tuple(queries.shape)}.")
        if queries.dim() == 3 and queries.shape[0] != tokens.shape[0]:
            raise ValueError(f"{queries.shape[0]} query sets for {tokens.shape[0]} images.")

    def attend(self, tokens: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attended vectors (N, Q, dim) and attention weights (N, Q, T), averaged over heads.

        `queries` (Q, text_dim) are shared by every image (class prompts);
        (N, Q, text_dim) are per image (each image's own prompt or caption).
        """
        self._check(tokens, queries)
        kv = self.image_in(tokens)
        q = self.text_in(queries)
        if q.dim() == 2:
            q = q.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        out, weights = self.attn(q, kv, kv, need_weights=True, average_attn_weights=True)
        return self.norm(out), weights

    def own_prompt_logits(self, tokens: torch.Tensor, query: torch.Tensor,
                          return_attention: bool = False):
        """The thesis's variant: C logits from each image's own prompt (N, text_dim).

        The prompt names the image's class: accuracy with the true prompt is
        leakage, not a test result.
        """
        if query.dim() != 2:
            raise ValueError(f"own_prompt_logits takes one query per image (N, {self.text_dim}), "
                             f"got {tuple(query.shape)}.")
        out, weights = self.attend(tokens, query.unsqueeze(1))
        logits = self.fc(out[:, 0])
        return (logits, weights[:, 0]) if return_attention else logits

    def class_scores(self, tokens: torch.Tensor, class_queries: torch.Tensor,
                     return_attention: bool = False):
        """The label-free variant: score of class c = fc row c of the vector attended by prompt c.

        `class_queries` is (C, text_dim), one prompt per class in label order.
        Returns (N, C) scores (and (N, C, T) attention weights).
        """
        if class_queries.dim() != 2 or class_queries.shape[0] != self.num_classes:
            raise ValueError(f"class_scores needs one query per class ({self.num_classes}, {self.text_dim}), "
                             f"got {tuple(class_queries.shape)}.")
        out, weights = self.attend(tokens, class_queries)
        scores = (out * self.fc.weight).sum(-1) + self.fc.bias
        return (scores, weights) if return_attention else scores
