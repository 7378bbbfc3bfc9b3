"""Study 3's settings: the teachers and variants it knows, and what it derives from a profile (its checks are in
`profiles/study3.py`)."""

from __future__ import annotations

from .profiles.study3 import SSL_EPOCH_FIELDS

__all__ = ["VARIANTS", "TEACHER_LABELS", "TARGET_NORMS", "SSL_TEACHERS", "ssl_epochs", "grid", "probe_args"]


#: variant -> (augmented views?, teacher feature reduced?)
VARIANTS = {"original": (True, False), "no_aug": (False, False), "feature_reduction": (True, True),
            "no_aug_fr": (False, True)}

TEACHER_LABELS = {"byol": "BYOL", "moco_v2": "MoCo-v2", "supervised": "Supervised"}
#: What is done to the teacher's feature before the cosine: nothing (the presentation) or standardisation.
TARGET_NORMS = ("none", "standardize")
#: The teachers pretrained self-supervised (in-run at tiny/small, published checkpoints at paper).
SSL_TEACHERS = tuple(SSL_EPOCH_FIELDS)


def ssl_epochs(cfg, method: str) -> int:
    """The profile's pretraining epochs of an SSL teacher."""
    return getattr(cfg, SSL_EPOCH_FIELDS[method])


def grid(cfg) -> list[tuple[str, str]]:
    """(teacher, variant) pairs to train: all `s3_variants` for the first teacher, the others' list for the rest."""
    return [(t, v) for i, t in enumerate(cfg.s3_teachers)
            for v in (cfg.s3_variants if i == 0 else cfg.s3_variants_other_teachers)]


def probe_args(cfg) -> dict:
    """The profile's linear-probe settings, for `probe(..., **probe_args(cfg))`."""
    return {"epochs": cfg.phase_epochs(cfg.s3_probe_epochs), "max_steps": cfg.max_steps,
            "num_workers": cfg.num_workers}
