"""Study 3's images at each scale: SynthWorld's target task (tiny, small) or ImageNet-100 (paper), and loaders.

Its `StudyData` has a "train" split (labels unused; in memory for SynthWorld, where the view bank draws from
it, or read lazily at paper) and the linear probe's labelled "probe_train" and "probe_test". Its `key` holds
the cache keys of the training ("train", also the probe's) and test ("test") images.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from . import splits
from .kassl_config import SSL_TEACHERS, TEACHER_LABELS
from .models import weights_requirement
from .paths import under
from .pretrain import DATA_SEEDS, SynthData
from .splits import StudyData

__all__ = ["input_side", "paper_paths", "paper_requirements", "synth_key", "load_data", "data_loader"]


def input_side(data: StudyData) -> int:
    """The models' input side: the probe images' (training views are cropped from the larger training
    images, the canvas, and resampled to it)."""
    return data.splits["probe_test"].side


def paper_paths(cfg) -> dict:
    """Where the `paper` profile looks for ImageNet-100 and the checkpoints."""
    return {"imagenet100": under(cfg.data_root, cfg.s3_imagenet100),
            "byol": under(cfg.weights_root, cfg.s3_byol_checkpoint),
            "moco_v2": under(cfg.weights_root, cfg.s3_moco_checkpoint)}


def paper_requirements(cfg) -> dict:
    """{what: (path, how to get it)} for `session.require_files` at `paper`.

    The data is always required; the teachers' weights only outside dry runs
    (a dry run may stand random weights in for a missing checkpoint).
    """
    from .ssl_checkpoints import CHECKPOINT_SOURCES

    paths = paper_paths(cfg)
    need = splits.paper_data(cfg, "imagenet100")
    if not cfg.dry_run:
        for t in cfg.s3_teachers:
            if t in SSL_TEACHERS:
                need[f"{TEACHER_LABELS[t]} ResNet-50 checkpoint"] = (
                    paths[t], f"Download {CHECKPOINT_SOURCES[t]} to that path (or set weights_root / "
                              f"s3_{'byol' if t == 'byol' else 'moco'}_checkpoint).")
            elif t == "supervised":
                need["supervised ResNet-50 weights"] = weights_requirement(cfg.s3_checkpoint_arch,
                                                                           cfg.s3_supervised_weights)
    return need


def synth_key(data: SynthData, split: str) -> dict:
    """The cache key of one of `data`'s SynthWorld splits: its size, data seed and world."""
    return {"split": split, "n": data.sizes[split], "seed": DATA_SEEDS[split], "world": asdict(data.world)}


def load_data(cfg) -> StudyData:
    """SynthWorld target train/test (tiny, small) or ImageNet-100 train/val (paper)."""
    if cfg.profile != "paper":
        train, test = (splits.synthworld_split(cfg, name) for name in ("target_train", "target_test"))
        synth = SynthData.of(cfg)
        return StudyData("SynthWorld target task", {"train": train, "probe_train": train, "probe_test": test},
                         train.class_names, {"train": synth_key(synth, "target_train"),
                                             "test": synth_key(synth, "target_test")})

    from torchvision.transforms import v2

    from .datasets import imagenet100

    size = cfg.image_size
    canvas = round(size * 8 / 7)  # 256 for 224: views are cropped from the central 256x256
    root = paper_paths(cfg)["imagenet100"]
    train_tf = v2.Compose([v2.Resize(canvas, antialias=True), v2.CenterCrop(canvas), v2.PILToTensor()])
    probe_tf = v2.Compose([v2.Resize(canvas, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])
    train = splits.folder_split(imagenet100(root, "train", transform=train_tf))
    probe_train = splits.folder_split(imagenet100(root, "train", transform=probe_tf))
    probe_test = splits.folder_split(imagenet100(root, "val", transform=probe_tf))

    def key(split, name):
        return {"imagenet100": str(root), "split": name, "n": len(split), "size": size}

    return StudyData("ImageNet-100", {"train": train, "probe_train": probe_train, "probe_test": probe_test},
                     train.class_names, {"train": key(train, "train"), "test": key(probe_test, "val")})


def data_loader(dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0):
    """Batches in a `seed`ed random order without the last partial one (training), or all in order."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return splits.loader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                         generator=gen if shuffle else None, num_workers=num_workers,
                         pin_memory=torch.cuda.is_available())
