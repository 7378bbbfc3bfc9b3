"""Every knowledge-distillation method of the lab: one small class each (mdistiller's shape).

A distiller maps the student's output, the frozen teacher's output for the same inputs and the
labels to named losses: `"loss"` is the one to back-propagate, the other entries are its terms
(before their weights) for `train.fit` to log; the hard-label term is `"ce"` in every one. The teacher's
outputs arrive precomputed (cached by `kdutils.cache`) or from a `FrozenTeacher`, which keeps itself in eval
mode; the logit distillers detach them, so a forgotten `no_grad` cannot train the teacher.
`FeatureRegression` does not: a projection on its teacher side may train through its targets.

>>> kd = HintonKD(T=10, alpha=0.1)                 # study 4's TL+KD
>>> parts = kd(student_logits, teacher_logits, labels)
>>> sorted(parts)
['ce', 'kd', 'loss']

Conventions: inputs are logits unless a name says otherwise; every loss is a batch mean; KL
divergences are summed over classes (`batchmean`); `alpha` weights the distillation term and
`1 - alpha` the hard-label term. Bad hyperparameters raise, and so do bad shapes: the distillers with a
teacher check them before torch would broadcast, `CrossEntropy` and `BinaryCrossEntropy` leave them to torch's
own loss, which does not broadcast.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError
from .losses import check_pair, check_temperature, check_tensor, negative_cosine

__all__ = ["Distiller", "CrossEntropy", "HintonKD", "SoftTargetKD", "BinaryCrossEntropy", "BinarySoftmaxKD",
           "SigmoidKD", "FeatureRegression", "binary", "tempered_kl", "spread"]


class Distiller(nn.Module):
    """Base class: `name`, the hyperparameters in `config()` (for cache keys) and a readable `label`."""

    name = "distiller"

    def config(self) -> dict:
        return {"kind": self.name}

    @property
    def label(self) -> str:
        extra = " ".join(f"{k}={v:g}" for k, v in self.config().items() if k != "kind")
        return f"{self.name} {extra}".strip()


class _Weighted(Distiller):
    """A distillation term weighted by alpha against a hard-label term: `alpha * kd + (1 - alpha) * ce`."""

    def __init__(self, T: float, alpha: float):
        super().__init__()
        self.T, self.alpha = check_temperature(T), _check_alpha(alpha)

    def config(self) -> dict:
        return {"kind": self.name, "T": self.T, "alpha": self.alpha}

    def _combine(self, kd: torch.Tensor, ce: torch.Tensor) -> dict:
        return {"loss": self.alpha * kd + (1.0 - self.alpha) * ce, "kd": kd, "ce": ce}


# ------------------------------------------------------------------ multi-class (studies 1 and 4)

class CrossEntropy(Distiller):
    """No teacher: cross-entropy on the labels (TL, and every student trained alone)."""

    name = "ce"

    def forward(self, student_logits, teacher_logits=None, labels=None) -> dict:
        return {"loss": F.cross_entropy(student_logits, labels)}


class HintonKD(_Weighted):
    """Hinton et al. (2015): `alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(y, z_s)`.

    T^2 keeps the soft term's gradient on the hard term's scale as T changes; the TL+KD thesis
    uses T = 10, alpha = 0.1.
    """

    name = "hinton_kd"

    def forward(self, student_logits, teacher_logits, labels) -> dict:
        kd = self.T * self.T * tempered_kl(student_logits, teacher_logits, self.T)
        n, c = student_logits.shape
        return self._combine(kd, F.cross_entropy(student_logits, _check_class_targets(labels, n, c)))


class SoftTargetKD(Distiller):
    """Study 1's self-distillation: soft cross-entropy `-sum softmax(z_t) * log softmax(z_s)`, no labels.

    The teacher is the image-text head; its logits are turned into probabilities in float32 (even
    under AMP, so rows sum to 1). At T = 1 it differs from the KL only by the teacher's entropy.
    """

    name = "soft_target_kd"

    def forward(self, student_logits, teacher_logits, labels=None) -> dict:
        check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits", "(batch, num_classes)")
        p = F.softmax(teacher_logits.detach().float(), dim=1)
        return {"loss": -(p * F.log_softmax(student_logits.float(), dim=1)).sum(dim=1).mean()}


# ------------------------------------------------------------------ one logit per sample (study 2)

class BinaryCrossEntropy(Distiller):
    """No teacher: binary cross-entropy of the match logit against the 0/1 label."""

    name, label = "bce", "BCE"

    def forward(self, student_logit, teacher_logit=None, labels=None) -> dict:
        ce = F.binary_cross_entropy_with_logits(student_logit, labels)
        return {"loss": ce, "ce": ce.detach()}


class BinarySoftmaxKD(_Weighted):
    """Study 2's "softmax KD": Hinton KD on the two-class logits `[0, z]` of a one-logit model.

    `softmax([0, z]/T) = [1 - sigmoid(z/T), sigmoid(z/T)]`, so the KL is the binary KL between the
    tempered sigmoids, times T^2; the hard term is BCE (= CE over `[0, z]`). Reported to fail.
    """

    name = "softmax_kd"

    def forward(self, student_logit, teacher_logit, labels) -> dict:
        zs, zt, y = _binary_inputs(student_logit, teacher_logit, labels)
        kd = self.T * self.T * tempered_kl(_two_class(zs), _two_class(zt), self.T)
        return self._combine(kd, F.binary_cross_entropy_with_logits(zs, y))


class SigmoidKD(_Weighted):
    """Study 2's "sigmoid KD": `alpha * BCE(sigmoid(z_s/T), sigmoid(z_t/T)) + (1 - alpha) * BCE(z_s, y)`.

    The paper uses no T^2 factor. The soft BCE differs from the binary KL only by the teacher's
    entropy: the same gradient, a minimum at that entropy.
    """

    name = "sigmoid_kd"

    def forward(self, student_logit, teacher_logit, labels) -> dict:
        zs, zt, y = _binary_inputs(student_logit, teacher_logit, labels)
        kd = F.binary_cross_entropy_with_logits(zs / self.T, torch.sigmoid(zt.detach() / self.T))
        return self._combine(kd, F.binary_cross_entropy_with_logits(zs, y))


def binary(kind: str, T: float = 1.0, alpha: float = 0.0) -> Distiller:
    """Study 2's distillers by name: "bce", "softmax_kd" or "sigmoid_kd"."""
    if kind == "bce":
        return BinaryCrossEntropy()
    if kind not in ("softmax_kd", "sigmoid_kd"):
        raise ConfigError(f"loss kind must be bce, softmax_kd or sigmoid_kd, got {kind!r}.")
    return (BinarySoftmaxKD if kind == "softmax_kd" else SigmoidKD)(T, alpha)


# ------------------------------------------------------------------ features (study 3)

class FeatureRegression(Distiller):
    """KASSL: the student's extension output regresses the teacher's feature of the *other* view.

    `0.5 * (neg_cos(s1, t2) + neg_cos(s2, t1))` (the mean of both directions, range [-1, 1], as the
    presentation's plateau of about -0.9 implies). Without second views (`s2 = t2 = None`) the same
    image went to both networks and one direction is the whole loss. Targets are not detached: in
    the feature-reduction ablation a projection on the teacher side trains through them. The
    spreads (`spread`) watch for a collapsed extension.
    """

    name = "feature_regression"

    def forward(self, s1, t1, s2=None, t2=None) -> dict:
        if s2 is None:
            loss = negative_cosine(s1, t1)
        else:
            loss = 0.5 * (negative_cosine(s1, t2) + negative_cosine(s2, t1))
        return {"loss": loss, "target_spread": spread(t1), "student_spread": spread(s1)}


def spread(z: torch.Tensor) -> torch.Tensor:
    """Collapse check: mean per-dimension std of the L2-normalised rows, times sqrt(dim).

    About 1 for features spread evenly over the sphere, 0 when every row is the same vector
    (SimSiam's diagnostic, rescaled).
    """
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(0).mean() * math.sqrt(z.shape[1])


# ------------------------------------------------------------------ shared pieces

def tempered_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, mean over the batch; no T^2.

    From log-probabilities on both sides (`log_target=True`), so a teacher probability that
    underflows to 0 cannot give `0 * log 0 = nan`.
    """
    check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits", "(batch, num_classes)")
    T = check_temperature(T)
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")


def _two_class(z: torch.Tensor) -> torch.Tensor:
    """One logit z per sample as two-class logits `[0, z]`: `softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]`."""
    return torch.stack([torch.zeros_like(z), z], dim=1)


def _check_alpha(alpha) -> float:
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1] (weight of the distillation term), got {alpha}")
    return alpha


def _check_class_targets(targets, n: int, num_classes: int) -> torch.Tensor:
    check_tensor(targets, "targets")
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
    check_tensor(z, name)
    if z.dim() == 2 and z.shape[1] == 1:
        z = z[:, 0]
    if z.dim() != 1:
        raise ValueError(f"{name} must hold one logit per sample, shape (N,) or (N, 1), got {tuple(z.shape)}")
    return z


def _as_binary_targets(y, n: int, like: torch.Tensor) -> torch.Tensor:
    """Binary targets as floats in [0, 1] of shape (N,); (N, 1) accepted."""
    check_tensor(y, "targets")
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


def _binary_inputs(student_logit, teacher_logit, targets):
    """Checked (z_s, z_t, y) of a one-logit KD loss: both logits flat and of one length."""
    zs = _as_binary_logit(student_logit, "student_logit")
    zt = _as_binary_logit(teacher_logit, "teacher_logit")
    if zs.shape != zt.shape:
        raise ValueError(
            f"student_logit and teacher_logit must hold the same number of samples, "
            f"got {tuple(student_logit.shape)} and {tuple(teacher_logit.shape)}"
        )
    return zs, zt, _as_binary_targets(targets, zs.shape[0], zs)
