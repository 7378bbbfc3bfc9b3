"""Study 4's data: the SynthWorld target task (tiny / small) or CIFAR-10 (paper), and what paper needs.

Splits are `splits.Split`s keyed by a content hash, so the frozen-feature cache
(`tlkd_features.frozen_features`) is keyed by the pixels and labels themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import splits
from .errors import ConfigError
from .models import weights_requirement
from .paths import under
from .splits import StudyData

__all__ = ["load_data", "paper_requirements"]


def load_data(cfg) -> StudyData:
    """The study's "train", "val" and "test" splits.

    tiny / small: the SynthWorld target task (10 shapes) with its exact masks.
    paper: CIFAR-10 from the official python batches under `data_root`; the
    last `s4_val_fraction` of a fixed permutation of the training set is held
    out for validation (early stopping), the official test set is the test
    set, and foreground masks come from `s4_mask_annotations` when given.
    """
    if cfg.profile != "paper":
        parts = {name: splits.synthworld_split(cfg, f"target_{name}") for name in ("train", "val", "test")}
        return StudyData("SynthWorld target task", parts, parts["train"].class_names)

    parts = splits.cifar_splits(under(cfg.data_root), "cifar10", verify=cfg.s4_verify_data)
    train, test = parts["train"], parts["test"]
    order = np.random.default_rng(0).permutation(len(train))
    n_val = int(round(cfg.s4_val_fraction * len(train)))
    if not 0 < n_val < len(train):
        raise ConfigError(f"s4_val_fraction={cfg.s4_val_fraction} leaves no training or validation images.")
    if cfg.s4_mask_annotations:
        test.masks, test.has_mask = _annotated_masks(under(cfg.s4_mask_annotations), len(test), test.images.shape[2:])
    parts = {"train": train.part(np.sort(order[:-n_val])), "val": train.part(np.sort(order[-n_val:])), "test": test}
    return StudyData("CIFAR-10", parts, train.class_names)


def _annotated_masks(path: Path, n: int, size) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the annotated test images (index = last number in the file name), nearest-resized."""
    from PIL import Image

    from .attribution_regions import coco_polygon_masks, index_from_file_name

    masks, has = np.zeros((n, *size), dtype=bool), np.zeros(n, dtype=bool)
    for name, mask in coco_polygon_masks(path).items():
        i = index_from_file_name(name)
        if not 0 <= i < n:
            raise ConfigError(f"{path}: annotated image '{name}' has index {i}, outside the test set (0-{n - 1}).")
        if mask.shape != tuple(size):
            mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
        masks[i], has[i] = mask, True
    return masks, has


def paper_requirements(cfg) -> dict:
    """{what: (path, how to get it)} for `session.require_files` at the paper profile.

    Data always (dry runs read fixture batches); weights unless `dry_run`
    (which allows random weights); the mask annotations when configured.
    """
    need = splits.paper_data(cfg, "cifar10")
    if not cfg.dry_run:
        for role, arch, weights in (("student", cfg.student_arch, cfg.s4_student_weights),
                                    ("teacher", cfg.teacher_arch, cfg.s4_teacher_weights),
                                    ("H4 teacher", cfg.s4_h4_teacher_arch, cfg.s4_h4_teacher_weights)):
            need[f"{role} weights {arch} {weights}"] = weights_requirement(arch, weights)
    if cfg.s4_mask_annotations:
        need["foreground polygon annotations"] = (
            under(cfg.s4_mask_annotations),
            "Export COCO-format polygons from the VGG Image Annotator; name each image by its test index.")
    return need
