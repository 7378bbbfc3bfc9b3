"""Study 3's settings: the teachers and variants it knows, the checks of a profile, and what it derives from one."""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["VARIANTS", "TEACHER_LABELS", "TARGET_NORMS", "SSL_TEACHERS", "check_config", "ssl_epochs",
           "grid", "probe_args"]


#: variant -> (augmented views?, teacher feature reduced?)
VARIANTS = {"original": (True, False), "no_aug": (False, False), "feature_reduction": (True, True),
            "no_aug_fr": (False, True)}

TEACHER_LABELS = {"byol": "BYOL", "moco_v2": "MoCo-v2", "supervised": "Supervised"}
#: What is done to the teacher's feature before the cosine: nothing (the presentation) or standardisation.
TARGET_NORMS = ("none", "standardize")
#: The teachers pretrained self-supervised (in-run at tiny/small, published checkpoints at paper).
SSL_TEACHERS = ("byol", "moco_v2")


def check_config(cfg) -> None:
    """Refuse, before any work, what the profile's field rules cannot see: they check one field at a time."""
    if len(set(cfg.s3_teachers)) != len(cfg.s3_teachers):
        raise ConfigError(f"s3_teachers must be distinct, got {cfg.s3_teachers}.")
    if cfg.s3_view_bank % 2:
        raise ConfigError(f"s3_view_bank must be 0 (fresh views) or an even number >= 2, got {cfg.s3_view_bank}.")
    if cfg.profile == "paper" and cfg.s3_view_bank:
        raise ConfigError("s3_view_bank > 0 keeps every view in memory: only for SynthWorld; use 0 at paper.")
    if cfg.s3_ssl_batch % cfg.s3_moco_bn_splits:
        raise ConfigError(f"s3_ssl_batch ({cfg.s3_ssl_batch}) must be a multiple of s3_moco_bn_splits "
                          f"({cfg.s3_moco_bn_splits}).")
    for t in cfg.s3_teachers:
        if t in SSL_TEACHERS and cfg.profile != "paper" and ssl_epochs(cfg, t) < 1:
            raise ConfigError(f"{_SSL_EPOCH_FIELDS[t]} must be >= 1 to pretrain the {TEACHER_LABELS[t]} teacher "
                              f"in-run.")


_SSL_EPOCH_FIELDS = {"byol": "s3_byol_epochs", "moco_v2": "s3_moco_epochs"}


def ssl_epochs(cfg, method: str) -> int:
    """The profile's pretraining epochs of an SSL teacher."""
    return getattr(cfg, _SSL_EPOCH_FIELDS[method])


def grid(cfg) -> list[tuple[str, str]]:
    """(teacher, variant) pairs to train: all `s3_variants` for the first teacher, the others' list for the rest."""
    return [(t, v) for i, t in enumerate(cfg.s3_teachers)
            for v in (cfg.s3_variants if i == 0 else cfg.s3_variants_other_teachers)]


def probe_args(cfg) -> dict:
    """The profile's linear-probe settings, for `probe(..., **probe_args(cfg))`."""
    return {"epochs": cfg.phase_epochs(cfg.s3_probe_epochs), "max_steps": cfg.max_steps,
            "num_workers": cfg.num_workers}
