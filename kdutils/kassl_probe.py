"""Judging study 3's encoders: cached features of the plain images, linear probes, and how well a student
imitates its teacher on test images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .augment import as_float_images
from .cache import cached, model_fingerprint
from .frozen import outputs
from .kassl_data import data_loader, input_side
from .splits import StudyData
from .kassl_views import center_crop
from .probe import linear_probe
from .train import seed_everything

if TYPE_CHECKING:
    from .kassl import KASSLStudent

__all__ = ["plain_features", "encode", "imitation", "probe", "random_init_probe"]


def plain_features(encoder: nn.Module, dataset, size: int, device, num_workers: int = 0, forward=None) -> torch.Tensor:
    """`forward` (default the encoder) of the plain central crops of `dataset`, in order."""
    forward = forward or encoder
    return outputs(encoder, data_loader(dataset, 256, shuffle=False, num_workers=num_workers),
                   lambda b: forward(center_crop(as_float_images(b[0]), size)), device=device)


def encode(encoder: nn.Module, data: StudyData, split: str, device, num_workers: int = 0) -> torch.Tensor:
    """Features of the probe's `split` ('train' or 'test'), cached by the encoder's weights."""
    dataset, size = data.splits[f"probe_{split}"], input_side(data)
    key = {"model": model_fingerprint(encoder), "data": data.key[split]}
    return cached("kassl_features", key, lambda: plain_features(encoder, dataset, size, device, num_workers),
                  verbose=False)


def imitation(student: KASSLStudent, teacher: nn.Module, data: StudyData, device, num_workers: int = 0) -> float:
    """Mean test cosine between the student's extension output and its teacher target.

    How well the student imitates the teacher on images it never trained on
    (minus the un-augmented KASSL loss on the test split).
    """
    s = plain_features(student, data.splits["probe_test"], input_side(data), device, num_workers,
                       forward=student.embed)
    t = encode(teacher, data, "test", device, num_workers)
    return float(F.cosine_similarity(s, outputs(student, [t], student.target, device=device), dim=1).mean())


def probe(encoder: nn.Module, data: StudyData, *, seed: int, device, epochs: int, max_steps: int | None = None,
          num_workers: int = 0) -> dict:
    """Linear probe of a frozen encoder: top-1 / top-5 (%) on the probe's test split."""
    xtr, xte = (encode(encoder, data, split, device, num_workers) for split in ("train", "test"))
    result = linear_probe(xtr, data.splits["probe_train"].labels, xte, data.splits["probe_test"].labels,
                          epochs=epochs, seed=seed, max_steps=max_steps)
    return {"top1": result["top1"], "top5": result["top5"]}


def random_init_probe(arch_builder, data: StudyData, *, seed: int, **probe_kwargs) -> dict:
    """The probe of an untrained network: what SSL has to beat to have learned anything."""
    seed_everything(seed)
    return probe(arch_builder(), data, seed=seed, **probe_kwargs)
