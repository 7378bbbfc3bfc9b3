"""Classification metrics for the studies, computed with scikit-learn.

Every rate is returned in **percent** (0-100) as a Python float, because the
papers the studies reproduce report percentages; ``confusion`` returns counts.
Inputs may be NumPy arrays, torch tensors (any device, with or without grad)
or lists. Precision/recall/F1 use ``zero_division=0``: a class that is never
predicted scores 0 precision instead of raising a warning.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "accuracy",
    "topk_accuracy",
    "classification_report",
    "binary_report",
    "confusion",
]


def _np(x, name: str) -> np.ndarray:
    """Tensor / array / list -> NumPy array (detached, on the CPU); NaN or infinite scores raise.

    argmax and sorting silently rank NaN first or last, so a diverged model
    would get an accuracy instead of an error.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise ValueError(f"{name} must be numeric, got an object array")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(a)).sum())} NaN or infinite values: "
                         "the model or the scores diverged upstream")
    return a


def _labels(x, name: str) -> np.ndarray:
    """1-D integer class labels; floats allowed only if integral."""
    a = _np(x, name)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(
                f"{name} holds non-integer values: pass class labels, not scores "
                "(use argmax for logits, or binary_report for probabilities)"
            )
        a = a.astype(np.int64)
    elif not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    return a


def _pair(y_true, y_pred):
    t = _labels(y_true, "y_true")
    p = _np(y_pred, "y_pred")
    # Convenience: (N, C) scores are reduced to predicted labels.
    p = p.argmax(axis=1) if p.ndim == 2 and p.shape[1] > 1 else _labels(p, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_pred must have the same length, got {t.shape[0]} and {p.shape[0]}")
    if t.shape[0] == 0:
        raise ValueError("metrics need at least one sample, got empty inputs")
    return t, p


def accuracy(y_true, y_pred) -> float:
    """Top-1 accuracy in percent.

    ``y_pred`` is labels (N,) or scores (N, C), reduced by argmax.
    """
    t, p = _pair(y_true, y_pred)
    return 100.0 * float(skm.accuracy_score(t, p))


def topk_accuracy(logits_or_scores, y_true, k: int = 5) -> float:
    """Top-k accuracy in percent: the true class among the k highest scores.

    ``k`` larger than the number of classes C is clamped to C (every label is
    then in the top k, so the result is 100%), so one notebook can ask for
    top-5 on any data set. Ties are broken towards the lower class index, as
    ``torch.topk`` usually does.
    """
    s = _np(logits_or_scores, "logits_or_scores")
    if s.ndim != 2:
        raise ValueError(f"logits_or_scores must have shape (N, num_classes), got {s.shape}")
    t = _labels(y_true, "y_true")
    n, c = s.shape
    if t.shape[0] != n:
        raise ValueError(f"y_true has {t.shape[0]} labels but logits_or_scores has {n} rows")
    if n == 0:
        raise ValueError("metrics need at least one sample, got empty inputs")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if t.min() < 0 or t.max() >= c:
        raise ValueError(f"y_true must lie in [0, {c - 1}] for {c} classes, got values from {t.min()} to {t.max()}")
    k = min(int(k), c)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return 100.0 * float((top == t[:, None]).any(axis=1).mean())


def classification_report(y_true, y_pred, average: str = "macro") -> dict[str, float]:
    """Accuracy, precision, recall and F1 in percent, ``average`` over classes.

    ``average`` is scikit-learn's: "macro" (the studies' choice: each class
    counts equally), "weighted", "micro", or "binary" (positive class 1).
    Returns ``{"accuracy", "precision", "recall", "f1"}``.
    """
    return _percent_report(*_pair(y_true, y_pred), average=average)


def _percent_report(t: np.ndarray, pred: np.ndarray, **averaging) -> dict[str, float]:
    """Accuracy and scikit-learn's precision, recall and F1 (`averaging` passed on), in percent."""
    prec, rec, f1, _ = skm.precision_recall_fscore_support(t, pred, zero_division=0, **averaging)
    return {"accuracy": 100.0 * float(skm.accuracy_score(t, pred)), "precision": 100.0 * float(prec),
            "recall": 100.0 * float(rec), "f1": 100.0 * float(f1)}


def binary_report(y_true, prob_or_logit, threshold: float = 0.5, *, from_logits: bool = False) -> dict[str, float]:
    """Study 2's table: accuracy, and precision, recall, F1 of the positive class, in %.

    ``prob_or_logit`` holds one score per sample, (N,) or (N, 1): a probability
    of class 1 by default, or a logit with ``from_logits=True`` (a sigmoid is
    applied first). ``threshold`` applies to the probability: predict 1 when
    ``p >= threshold``. Values outside [0, 1] without ``from_logits`` raise,
    which catches logits passed as probabilities.
    """
    t = _labels(y_true, "y_true")
    if not np.isin(t, (0, 1)).all():
        raise ValueError(f"y_true must be binary (0/1), got values {np.unique(t)[:10].tolist()}")
    s = _np(prob_or_logit, "prob_or_logit").astype(np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"prob_or_logit must hold one score per sample, shape (N,) or (N, 1), got {s.shape}")
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"y_true and prob_or_logit must have the same length, got {t.shape[0]} and {s.shape[0]}")
    if t.shape[0] == 0:
        raise ValueError("metrics need at least one sample, got empty inputs")
    if from_logits:
        s = 1.0 / (1.0 + np.exp(-s))
    elif s.min() < 0 or s.max() > 1:
        raise ValueError(
            f"prob_or_logit has values in [{s.min():.3g}, {s.max():.3g}], outside [0, 1]: "
            "pass from_logits=True for logits"
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
    return _percent_report(t, (s >= threshold).astype(np.int64), average="binary", pos_label=1, labels=[0, 1])


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Confusion matrix of counts, shape (C, C): rows = true class, columns = predicted.

    Always C x C (classes absent from both inputs give zero rows), int64.
    Labels outside [0, C) raise instead of being dropped silently.
    """
    t, p = _pair(y_true, y_pred)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.min() < 0 or a.max() >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
                f"got values from {a.min()} to {a.max()}"
            )
    return skm.confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.int64)
