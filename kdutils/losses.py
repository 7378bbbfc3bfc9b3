"""Distillation and self-supervised losses used by the four studies.

Conventions (the same for every function here):

- Inputs are *logits* (unnormalised scores) unless a name says ``probs``.
- Losses are averaged over the batch. KL divergences are summed over the
  classes and averaged over the samples (``reduction="batchmean"``), which is
  the mathematically correct per-sample KL; ``reduction="mean"`` would divide
  by the number of classes as well.
- Teacher outputs are detached inside the KD losses: the teacher is frozen in
  every study, and detaching here makes a forgotten ``torch.no_grad()`` at the
  call site harmless. Feature losses (``negative_cosine``) do *not* detach,
  because in KASSL's feature-reduction ablation a projection on the teacher
  side is trained through the loss; detach at the call site when needed.
- Bad shapes or hyperparameters raise ``ValueError`` (``ConfigError`` for
  hyperparameters, a subclass of ``ValueError``) with a sentence naming the
  argument, before torch produces a less readable broadcast error.

Combined losses (``hinton_kd``, ``binary_softmax_kd``, ``sigmoid_kd``) accept
``return_parts=True`` and then return ``{"kd", "ce", "total"}``: ``kd`` is the
distillation term *before* the ``alpha`` weight, ``ce`` the hard-label term
before ``1 - alpha``, ``total = alpha * kd + (1 - alpha) * ce``. All three are
tensors; ``total`` is the one to back-propagate, the others are for logging.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError

__all__ = [
    "tempered_kl",
    "hinton_kd",
    "soft_cross_entropy",
    "soft_cross_entropy_from_logits",
    "binary_two_class_logits",
    "binary_softmax_kd",
    "sigmoid_kd",
    "negative_cosine",
    "symmetric_negative_cosine",
    "byol_loss",
    "info_nce",
    "clip_contrastive_loss",
    "ClipLoss",
    "MoCoQueue",
]


# ---------------------------------------------------------------------------
# validation helpers


def _check_T(T) -> float:
    try:
        T = float(T)
    except (TypeError, ValueError):
        raise ConfigError(f"temperature T must be a number, got {T!r}") from None
    if not (T > 0 and math.isfinite(T)):
        raise ConfigError(f"temperature T must be a finite number > 0, got {T}")
    return T


def _check_alpha(alpha) -> float:
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1] (weight of the distillation term), got {alpha}")
    return alpha


def _check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_logit_pair(student: torch.Tensor, teacher: torch.Tensor, s_name: str, t_name: str):
    _check_tensor(student, s_name)
    _check_tensor(teacher, t_name)
    if student.dim() != 2:
        raise ValueError(f"{s_name} must have shape (batch, num_classes), got {tuple(student.shape)}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"{s_name} and {t_name} must have the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def _check_class_targets(targets, n: int, num_classes: int) -> torch.Tensor:
    _check_tensor(targets, "targets")
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(
            f"targets must be class indices of shape ({n},) to match the logits, "
            f"got {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if n:
        lo, hi = (int(v) for v in torch.aminmax(targets))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"targets must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                f"got values from {lo} to {hi}"
            )
    return targets


def _as_binary_logit(z, name: str) -> torch.Tensor:
    """Accept one logit per sample as (N,) or (N, 1); return (N,)."""
    _check_tensor(z, name)
    if z.dim() == 2 and z.shape[1] == 1:
        z = z[:, 0]
    if z.dim() != 1:
        raise ValueError(f"{name} must hold one logit per sample, shape (N,) or (N, 1), got {tuple(z.shape)}")
    return z


def _as_binary_targets(y, n: int, like: torch.Tensor) -> torch.Tensor:
    """Binary targets as floats in [0, 1] of shape (N,); (N, 1) accepted."""
    _check_tensor(y, "targets")
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"targets must have shape ({n},) or ({n}, 1) to match the logits, got {tuple(y.shape)}")
    y = y.to(dtype=like.dtype)
    if n:
        lo, hi = (float(v) for v in torch.aminmax(y))
        if lo < 0 or hi > 1:
            raise ValueError(f"binary targets must lie in [0, 1], got values from {lo} to {hi}")
    return y


def _check_feature_pair(a, b, a_name: str, b_name: str):
    _check_tensor(a, a_name)
    _check_tensor(b, b_name)
    if a.dim() != 2:
        raise ValueError(f"{a_name} must have shape (batch, dim), got {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape (batch, dim), got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def _combine(kd: torch.Tensor, ce: torch.Tensor, alpha: float, return_parts: bool):
    total = alpha * kd + (1.0 - alpha) * ce
    if return_parts:
        return {"kd": kd, "ce": ce, "total": total}
    return total


# ---------------------------------------------------------------------------
# multi-class KD (studies 1 and 4)


def tempered_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, mean over batch.

    No T^2 factor here (``hinton_kd`` adds it). Computed from log-probabilities
    on both sides (``log_target=True``) so that a teacher probability that
    underflows to 0 cannot produce ``0 * log 0 = nan``.
    """
    _check_logit_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    T = _check_T(T)
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")


def hinton_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None,
    T: float,
    alpha: float,
    *,
    return_parts: bool = False,
):
    """Hinton et al. (2015) KD: ``alpha * T^2 * KL_T + (1 - alpha) * CE(y, z_s)``.

    The T^2 factor keeps the soft term's gradient on the same scale as the hard
    term's when T changes (soft gradients shrink as 1/T^2). ``alpha`` weights the
    *distillation* term, as in the TL+KD thesis (T = 10, alpha = 0.1).
    ``targets`` may be ``None`` only when ``alpha == 1`` (pure distillation).
    """
    _check_logit_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    T, alpha = _check_T(T), _check_alpha(alpha)
    kd = T * T * tempered_kl(student_logits, teacher_logits, T)
    if targets is None:
        if alpha != 1.0:
            raise ValueError("targets=None is only allowed with alpha=1 (no hard-label term)")
        ce = torch.zeros_like(kd)
    else:
        n, c = student_logits.shape
        ce = F.cross_entropy(student_logits, _check_class_targets(targets, n, c))
    return _combine(kd, ce, alpha, return_parts)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """``-sum_c p_c * log softmax(z_s)_c``, mean over batch (study 1's loss).

    ``teacher_probs`` are probabilities (rows sum to 1), e.g. the frozen
    image-text head's softmax y_hat; a row check catches logits passed by
    mistake. Equals cross-entropy when the rows are one-hot, and differs from
    ``tempered_kl`` at T=1 only by the teacher's entropy (a constant for the
    student).
    """
    _check_logit_pair(student_logits, teacher_probs, "student_logits", "teacher_probs")
    p = teacher_probs.detach().to(student_logits.dtype)
    if p.numel():
        lo = float(p.min())
        worst = float((p.sum(dim=1) - 1).abs().max())
        if lo < 0 or worst > 1e-3:
            raise ValueError(
                "teacher_probs must be probabilities (>= 0, rows summing to 1); "
                f"got min {lo:.3g} and a row sum off by {worst:.3g}. "
                "For teacher logits use soft_cross_entropy_from_logits."
            )
    return -(p * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def soft_cross_entropy_from_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0
) -> torch.Tensor:
    """Soft cross-entropy against ``softmax(z_t/T)``, student also at T.

    ``-sum softmax(z_t/T) * log softmax(z_s/T)``, mean over batch, no T^2
    factor (multiply at the call site for Hinton-style scaling). Born-Again
    style self-distillation (study 1's no-text baseline) uses T = 1.
    """
    _check_logit_pair(student_logits, teacher_logits, "student_logits", "teacher_logits")
    T = _check_T(T)
    p = F.softmax(teacher_logits.detach() / T, dim=1)
    return -(p * F.log_softmax(student_logits / T, dim=1)).sum(dim=1).mean()


# ---------------------------------------------------------------------------
# binary KD with one logit per sample (study 2)


def binary_two_class_logits(z: torch.Tensor) -> torch.Tensor:
    """Turn one logit z per sample into two-class logits ``[0, z]`` (N, 2).

    Class 0 gets logit 0 and class 1 gets z, so
    ``softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]`` and
    ``CE([0, z], y) = BCE_with_logits(z, y)``: the binary model is read as a
    two-class model without changing its probabilities. Dividing by T gives
    ``softmax([0, z/T]) = [1 - sigmoid(z/T), sigmoid(z/T)]``.
    """
    z = _as_binary_logit(z, "z")
    return torch.stack([torch.zeros_like(z), z], dim=1)


def _binary_inputs(student_logit, teacher_logit, targets, T, alpha):
    """Checked (z_s, z_t, y, T, alpha) of a one-logit KD loss: both logits flat and of one length."""
    zs = _as_binary_logit(student_logit, "student_logit")
    zt = _as_binary_logit(teacher_logit, "teacher_logit")
    if zs.shape != zt.shape:
        raise ValueError(
            f"student_logit and teacher_logit must hold the same number of samples, "
            f"got {tuple(student_logit.shape)} and {tuple(teacher_logit.shape)}"
        )
    return zs, zt, _as_binary_targets(targets, zs.shape[0], zs), _check_T(T), _check_alpha(alpha)


def binary_softmax_kd(
    student_logit: torch.Tensor,
    teacher_logit: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    alpha: float,
    *,
    return_parts: bool = False,
):
    """Hinton KD applied to a one-logit binary model via two-class logits [0, z].

    ``alpha * T^2 * KL(softmax([0, z_t]/T) || softmax([0, z_s]/T))
    + (1 - alpha) * BCE_with_logits(z_s, y)``. By ``binary_two_class_logits``
    the KL equals the binary KL between ``sigmoid(z_t/T)`` and
    ``sigmoid(z_s/T)``, and the hard term equals CE over the two-class logits.
    This is study 2's "softmax KD" (reported to fail in the paper).
    Logits may be (N,) or (N, 1); targets are 0/1 (or soft values in [0, 1]).
    """
    zs, zt, y, T, alpha = _binary_inputs(student_logit, teacher_logit, targets, T, alpha)
    kd = T * T * tempered_kl(binary_two_class_logits(zs), binary_two_class_logits(zt), T)
    ce = F.binary_cross_entropy_with_logits(zs, y)
    return _combine(kd, ce, alpha, return_parts)


def sigmoid_kd(
    student_logit: torch.Tensor,
    teacher_logit: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    alpha: float,
    *,
    scale_by_T2: bool = False,
    return_parts: bool = False,
):
    """Study 2's "sigmoid KD": BCE of ``sigmoid(z_s/T)`` against ``sigmoid(z_t/T)``.

    ``alpha * BCE_with_logits(z_s/T, sigmoid(z_t/T)) + (1 - alpha) * BCE_with_logits(z_s, y)``.
    The paper uses no T^2 factor (``scale_by_T2=False``, the default); set it
    to True to multiply the distillation term by T^2 as Hinton KD does. The
    soft BCE differs from the binary KL only by the teacher's entropy, so its
    gradient is the same but its minimum is that entropy, not 0.
    """
    zs, zt, y, T, alpha = _binary_inputs(student_logit, teacher_logit, targets, T, alpha)
    p_t = torch.sigmoid(zt.detach() / T)
    kd = F.binary_cross_entropy_with_logits(zs / T, p_t)
    if scale_by_T2:
        kd = T * T * kd
    ce = F.binary_cross_entropy_with_logits(zs, y)
    return _combine(kd, ce, alpha, return_parts)


# ---------------------------------------------------------------------------
# feature distillation and self-supervised losses (studies 1 and 3)


def negative_cosine(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """``-cos(s, t)`` per sample, mean over the batch; range [-1, 1], best -1.

    KASSL's loss between the encoder extension's output and the teacher's
    feature. Not detached: detach the teacher feature at the call site unless
    a teacher-side projection (feature-reduction ablation) should train.
    """
    _check_feature_pair(student_feat, teacher_feat, "student_feat", "teacher_feat")
    return -F.cosine_similarity(student_feat, teacher_feat, dim=1, eps=1e-8).mean()


def symmetric_negative_cosine(
    s1: torch.Tensor, t2: torch.Tensor, s2: torch.Tensor, t1: torch.Tensor
) -> torch.Tensor:
    """KASSL's symmetric loss: ``0.5 * (neg_cos(s1, t2) + neg_cos(s2, t1))``.

    ``s1`` = student on view t, ``t2`` = teacher on view t'; the second term
    swaps the views (student on t', teacher on t). The *mean* of the two
    directions is used, so the range stays [-1, 1]; this matches the
    presentation's reported plateau of about -0.9 (a sum would plateau near
    -1.8).
    """
    return 0.5 * (negative_cosine(s1, t2) + negative_cosine(s2, t1))


def byol_loss(online_pred: torch.Tensor, target_proj: torch.Tensor) -> torch.Tensor:
    """BYOL's ``2 - 2 * cos(p, z)`` per sample, mean over batch; range [0, 4].

    Equal to the squared distance of the L2-normalised vectors. The target
    projection is detached here (BYOL's stop-gradient). The BYOL paper's loss
    is the *sum* over the two view orders: call this twice with the views
    swapped and add, ``byol_loss(p1, z2) + byol_loss(p2, z1)``.
    """
    _check_feature_pair(online_pred, target_proj, "online_pred", "target_proj")
    cos = F.cosine_similarity(online_pred, target_proj.detach(), dim=1, eps=1e-8)
    return (2.0 - 2.0 * cos).mean()


def info_nce(
    query: torch.Tensor,
    keys_pos: torch.Tensor,
    keys_neg: torch.Tensor | None = None,
    temperature: float = 0.2,
) -> torch.Tensor:
    """InfoNCE with a negative queue (MoCo-v2) or in-batch negatives (SimCLR-style).

    All inputs are L2-normalised here, so logits are cosine similarities over
    ``temperature``.

    - ``keys_neg`` given (K, D): logits ``[q.k+, q.queue] / tau`` of shape
      (N, 1 + K), the positive at index 0 (MoCo-v2; default tau 0.2).
    - ``keys_neg`` None: logits ``q @ k.T / tau`` (N, N), the positive of row i
      is column i; one direction only (use ``clip_contrastive_loss`` for the
      symmetric form).

    Nothing is detached: MoCo's keys come from the momentum encoder, run it
    under ``torch.no_grad()`` (or detach) at the call site.
    """
    _check_feature_pair(query, keys_pos, "query", "keys_pos")
    tau = _check_T(temperature)
    q = F.normalize(query, dim=1)
    k = F.normalize(keys_pos, dim=1)
    if keys_neg is None:
        logits = q @ k.T / tau
        labels = torch.arange(q.shape[0], device=q.device)
    else:
        _check_tensor(keys_neg, "keys_neg")
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


def clip_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's symmetric loss: mean of image->text and text->image cross-entropy.

    Embeddings are L2-normalised here; ``logits = logit_scale * img @ txt.T``,
    the matching pair of row i is column i. ``logit_scale`` is the multiplier
    itself (CLIP's ``logit_scale.exp()``, i.e. 1 / temperature), a float or a
    scalar tensor; ``ClipLoss`` keeps it as a learnable log-parameter.
    """
    _check_feature_pair(image_emb, text_emb, "image_emb", "text_emb")
    scale = logit_scale if isinstance(logit_scale, torch.Tensor) else torch.tensor(float(logit_scale))
    if scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(scale.shape)}")
    if not float(scale.detach()) > 0:
        raise ConfigError(
            f"logit_scale must be > 0 (it multiplies cosine similarities), got {float(scale.detach())}"
        )
    img = F.normalize(image_emb, dim=1)
    txt = F.normalize(text_emb, dim=1)
    logits = scale.to(img.device, img.dtype).reshape(()) * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class ClipLoss(nn.Module):
    """CLIP loss with a learnable temperature (state: ``log_scale``).

    Initialised at ``1 / 0.07`` as in CLIP, and clamped at ``max_scale`` (100)
    in the forward pass as CLIP does, so training cannot blow the logits up.
    Put this module's parameters in the optimiser.
    """

    def __init__(self, init_scale: float = 1 / 0.07, max_scale: float = 100.0):
        super().__init__()
        if not init_scale > 0 or not max_scale >= init_scale:
            raise ConfigError(f"need 0 < init_scale <= max_scale, got {init_scale} and {max_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.max_log_scale = math.log(max_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

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

    def forward(self) -> torch.Tensor:
        return self.keys.clone()
