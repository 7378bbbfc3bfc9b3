"""Self-supervised and contrastive losses (studies 1 and 3), and the checks every loss shares.

The distillation methods are classes in `kdutils.distillers`. Conventions: losses are averaged
over the batch; feature losses (`negative_cosine`) do not detach, because in KASSL's
feature-reduction ablation a teacher-side projection trains through the loss; bad shapes or
hyperparameters raise `ValueError` (`ConfigError` for hyperparameters) naming the argument.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError

__all__ = ["negative_cosine", "byol_loss", "info_nce", "clip_contrastive_loss", "ClipLoss", "MoCoQueue",
           "check_temperature", "check_tensor", "check_pair"]


# ---------------------------------------------------------------------------
# validation helpers


def check_temperature(T) -> float:
    """T as a float, or a ConfigError unless it is a finite number > 0."""
    try:
        T = float(T)
    except (TypeError, ValueError):
        raise ConfigError(f"temperature T must be a number, got {T!r}") from None
    if not (T > 0 and math.isfinite(T)):
        raise ConfigError(f"temperature T must be a finite number > 0, got {T}")
    return T


def check_tensor(x, name: str) -> torch.Tensor:
    """`x` itself, or a ValueError naming `name` unless it is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_pair(a, b, a_name: str, b_name: str, shape: str = "(batch, dim)"):
    """Two tensors of one 2-d `shape`, or a ValueError naming them (before torch would broadcast)."""
    check_tensor(a, a_name)
    check_tensor(b, b_name)
    if a.dim() != 2:
        raise ValueError(f"{a_name} must have shape {shape}, got {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape {shape}, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


# ---------------------------------------------------------------------------
# feature distillation and self-supervised losses (studies 1 and 3)


def negative_cosine(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """``-cos(s, t)`` per sample, mean over the batch; range [-1, 1], best -1.

    KASSL's loss between the encoder extension's output and the teacher's
    feature. Not detached: detach the teacher feature at the call site unless
    a teacher-side projection (feature-reduction ablation) should train.
    """
    check_pair(student_feat, teacher_feat, "student_feat", "teacher_feat")
    return -F.cosine_similarity(student_feat, teacher_feat, dim=1, eps=1e-8).mean()


def byol_loss(online_pred: torch.Tensor, target_proj: torch.Tensor) -> torch.Tensor:
    """BYOL's ``2 - 2 * cos(p, z)`` per sample, mean over batch; range [0, 4].

    Equal to the squared distance of the L2-normalised vectors. The target
    projection is detached here (BYOL's stop-gradient). The BYOL paper's loss
    is the *sum* over the two view orders: call this twice with the views
    swapped and add, ``byol_loss(p1, z2) + byol_loss(p2, z1)``.
    """
    check_pair(online_pred, target_proj, "online_pred", "target_proj")
    cos = F.cosine_similarity(online_pred, target_proj.detach(), dim=1, eps=1e-8)
    return (2.0 - 2.0 * cos).mean()


def info_nce(query: torch.Tensor, keys_pos: torch.Tensor, keys_neg: torch.Tensor,
             temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE against a queue of negatives (MoCo-v2): logits ``[q.k+, q.queue] / tau``, (N, 1 + K).

    All inputs are L2-normalised here, so logits are cosine similarities over
    ``temperature``; the positive is at index 0. Nothing is detached: MoCo's
    keys come from the momentum encoder, run it under ``torch.no_grad()`` (or
    detach) at the call site.
    """
    check_pair(query, keys_pos, "query", "keys_pos")
    tau = check_temperature(temperature)
    q = F.normalize(query, dim=1)
    k = F.normalize(keys_pos, dim=1)
    check_tensor(keys_neg, "keys_neg")
    if keys_neg.dim() != 2 or keys_neg.shape[1] != q.shape[1]:
        raise ValueError(
            f"keys_neg (the queue) must have shape (K, {q.shape[1]}) to match the "
            f"query dimension, got {tuple(keys_neg.shape)}"
        )
    queue = F.normalize(keys_neg.to(q.dtype), dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([pos, q @ queue.T], dim=1) / tau
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def clip_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale,
                          negative_text_emb: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric loss: mean of image->text and text->image cross-entropy.

    Embeddings are L2-normalised here; ``logits = logit_scale * img @ txt.T``,
    the matching pair of row i is column i. ``logit_scale`` is the multiplier
    itself (CLIP's ``logit_scale.exp()``, i.e. 1 / temperature), a float or a
    scalar tensor; ``ClipLoss`` keeps it as a learnable log-parameter.

    ``negative_text_emb`` (NegCLIP): row i is a caption *almost* right for
    image i (one attribute changed), added to the image->text side only. Each
    image must then pick its caption among the batch's and these near misses,
    so the towers cannot ignore an attribute that in-batch negatives alone
    rarely need (in SynthWorld, the shape: colour, position and background
    already tell 128 captions apart).
    """
    check_pair(image_emb, text_emb, "image_emb", "text_emb")
    scale = logit_scale if isinstance(logit_scale, torch.Tensor) else torch.tensor(float(logit_scale))
    if scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(scale.shape)}")
    if not float(scale.detach()) > 0:
        raise ConfigError(
            f"logit_scale must be > 0 (it multiplies cosine similarities), got {float(scale.detach())}"
        )
    img = F.normalize(image_emb, dim=1)
    txt = F.normalize(text_emb, dim=1)
    scale = scale.to(img.device, img.dtype).reshape(())
    labels = torch.arange(img.shape[0], device=img.device)
    if negative_text_emb is None:
        logits = scale * img @ txt.T
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    i2t = scale * img @ torch.cat([txt, F.normalize(negative_text_emb, dim=1)]).T
    return 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(scale * txt @ img.T, labels))


class ClipLoss(nn.Module):
    """CLIP loss with a learnable temperature (state: ``log_scale``).

    Initialised at ``1 / 0.07`` as in CLIP, and clamped at 100 in the forward
    pass as CLIP does, so training cannot blow the logits up.
    Put this module's parameters in the optimiser.
    """

    def __init__(self, init_scale: float = 1 / 0.07):
        super().__init__()
        if not 0 < init_scale <= 100:
            raise ConfigError(f"need 0 < init_scale <= 100 (the clamp), got {init_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return clip_contrastive_loss(image_emb, text_emb, self.scale)


class MoCoQueue(nn.Module):
    """First-in-first-out queue of L2-normalised keys for ``info_nce`` (MoCo).

    Kept as a buffer so it moves with ``.to(device)`` and is saved in the
    state dict. Starts filled with random unit vectors, as in MoCo.
    """

    def __init__(self, dim: int, size: int = 4096):
        super().__init__()
        if dim < 1 or size < 1:
            raise ConfigError(f"queue dim and size must be >= 1, got dim={dim}, size={size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries by ``keys`` (N, D), wrapping around."""
        size, dim = self.keys.shape
        if keys.dim() != 2 or keys.shape[1] != dim:
            raise ValueError(f"keys must have shape (N, {dim}), got {tuple(keys.shape)}")
        keys = F.normalize(keys.detach().to(self.keys.dtype), dim=1)[-size:]
        idx = (int(self.ptr) + torch.arange(keys.shape[0], device=self.keys.device)) % size
        self.keys[idx] = keys
        self.ptr.fill_((int(self.ptr) + keys.shape[0]) % size)
