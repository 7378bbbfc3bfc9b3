"""Study 1's data: the grid's data sets as `splits.StudyData` ("train", "val", "test"), and their texts.

SynthWorld's target task at tiny/small (with its true captions); CIFAR-10,
CIFAR-100 and ImageNet at `paper`, whose captions come from a captioning
model (`image_captions`). An item carries its index into the split, so the
frozen features and the teacher's soft targets of every item and view are
looked up by index (`kdutils.selfdistill`). `val` drives the training curves
only (nothing is selected on it); the real data sets have no validation split,
so there it is the test split itself. A data set's `key` names it for the
feature and caption caches (its name, sizes and seeds, not its pixels).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import datasets
from . import synthworld as sw
from . import text as ktext
from .cache import cached, model_fingerprint
from .errors import ConfigError, MissingDataError
from .models import weights_requirement
from .paths import under
from .pretrain import DATA_SEEDS, SynthData
from .splits import StudyData, cifar_splits, folder_split, paper_data, synthworld_split
from .recipes import RunSettings

__all__ = [
    "load_data", "synthworld_data", "cifar_data", "imagenet_data",
    "imagenet_class_names", "paper_requirements", "Captioner", "image_captions", "mirror_text", "labels_of",
    "indices_of", "in_order", "clip_path",
]


def labels_of(dataset) -> torch.Tensor:
    """Labels of a data set or a `Subset` of one, without loading images."""
    if isinstance(dataset, torch.utils.data.Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return dataset.labels


def indices_of(dataset) -> torch.Tensor:
    """The indices (into the full split) of the items of a data set or `Subset`."""
    if isinstance(dataset, torch.utils.data.Subset):
        return torch.as_tensor(dataset.indices).long()
    return torch.arange(len(dataset))


def in_order(dataset, batch_size: int = 512, num_workers: int | None = None) -> torch.utils.data.DataLoader:
    """In-order batches, for `frozen.outputs`. By default image files (ImageNet) are decoded by worker
    processes, tensors in memory are not."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if base.lazy else 0
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)


def synthworld_data(cfg) -> StudyData:
    splits = {split: synthworld_split(cfg, f"target_{split}") for split in ("train", "val", "test")}
    sizes = {split: len(s) for split, s in splits.items()}
    key = {"data": "synthworld-target", "world": asdict(SynthData.of(cfg).world), "sizes": sizes,
           "seeds": {s: DATA_SEEDS[f"target_{s}"] for s in sizes}}
    return StudyData("SynthWorld target task", splits, list(sw.TARGET_CLASSES), key)


def cifar_data(cfg, name: str) -> StudyData:
    root = under(cfg.data_root)
    parts = cifar_splits(root, name, verify=not cfg.dry_run)  # dry runs read fixture batches in the official format
    train, test = parts["train"], parts["test"]
    classes = [c.replace("_", " ") for c in train.class_names]
    splits = {"train": train, "val": test, "test": test}
    key = {"data": name, "root": str(root), "sizes": {"train": len(train), "test": len(test)}}
    return StudyData({"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name], splits, classes, key)


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names in wnid-sorted order (torchvision's metadata, no download)."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def imagenet_data(cfg) -> StudyData:
    import torchvision.transforms as T

    root = under(cfg.data_root, cfg.s1_imagenet_dir)
    size = cfg.image_size
    tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()])
    how = datasets.imagenet_how(root)
    train = datasets.image_folder(root / "train", tf, how_to_get=how)
    val = datasets.image_folder(root / "val", tf, classes=train.classes, how_to_get=how)
    names = imagenet_class_names()
    if len(train.classes) != len(names):
        raise ConfigError(f"ImageNet at '{root / 'train'}' has {len(train.classes)} class folders; the grid needs all "
                          f"{len(names)} (class names come from torchvision's wnid-sorted list).")
    test_set = folder_split(val)
    splits = {"train": folder_split(train), "val": test_set, "test": test_set}
    key = {"data": "imagenet", "root": str(root), "size": size,
           "sizes": {"train": len(train), "val": len(val)}}
    return StudyData("ImageNet", splits, names, key)


def load_data(cfg, name: str) -> StudyData:
    """One data set of the grid: 'synthworld' (tiny/small) or 'cifar10', 'cifar100', 'imagenet' (paper)."""
    if name == "synthworld":
        return synthworld_data(cfg)
    if name in ("cifar10", "cifar100"):
        return cifar_data(cfg, name)
    if name == "imagenet":
        return imagenet_data(cfg)
    raise ConfigError(f"unknown data set '{name}' in s1_datasets; choose synthworld, cifar10, cifar100 or imagenet.")


def clip_path(cfg, image_encoder: str) -> tuple[Path, str]:
    repo = cfg.s1_clip_b16 if image_encoder == "vit_b_16" else cfg.s1_clip_b32
    return under(cfg.weights_root, repo), repo


def paper_requirements(cfg) -> dict:
    """Everything the `paper` grid reads, as {what: (path, how to get it)} for `session.require_files`."""
    unknown = [name for name in cfg.s1_datasets if name not in ("cifar10", "cifar100", "imagenet")]
    if unknown:
        raise ConfigError(f"s1_datasets at paper holds {unknown}; choose cifar10, cifar100 or imagenet.")
    req = paper_data(cfg, *cfg.s1_datasets)
    clip_encoders = {e for e in cfg.s1_image_encoders if e in ("vit_b_32", "vit_b_16")}
    if "clip" in cfg.s1_text_encoders and "resnet50" in cfg.s1_image_encoders:
        clip_encoders.add("vit_b_32")  # ResNet-50 reads prompts with ViT-B/32's text tower
    for enc in sorted(clip_encoders):
        path, repo = clip_path(cfg, enc)
        req[f"CLIP {repo}"] = (path, ktext.hf_download_hint(repo, path))
    for enc in cfg.s1_image_encoders:
        if enc not in ("vit_b_32", "vit_b_16", "resnet50"):
            raise ConfigError(f"s1_image_encoders at paper holds '{enc}'; choose vit_b_32, vit_b_16 or resnet50.")
    if "resnet50" in cfg.s1_image_encoders and not cfg.dry_run:
        req[f"torchvision resnet50 {cfg.s1_resnet50_weights} weights"] = weights_requirement(
            "resnet50", cfg.s1_resnet50_weights)
    if "roberta" in cfg.s1_text_encoders:
        path = under(cfg.weights_root, cfg.s1_roberta)
        req[f"RoBERTa {cfg.s1_roberta}"] = (path, ktext.hf_download_hint(cfg.s1_roberta, path))
    if cfg.s1_captions:
        path = under(cfg.weights_root, cfg.s1_captioner)
        req[f"captioning model {cfg.s1_captioner}"] = (
            path, ktext.hf_download_hint(cfg.s1_captioner, path) + " Or set s1_captions=False.")
    return req


_MIRROR = {"left": "right", "right": "left"}


def mirror_text(text: str) -> str:
    """The caption of the horizontally flipped image: 'left' and 'right' swapped."""
    return re.sub(r"\b(left|right)\b", lambda m: _MIRROR[m.group(1)], text)


@dataclass(frozen=True, kw_only=True)
class Captioner(RunSettings):
    """The `paper` captioning model: the BLIP checkpoint `name` in the folder `path`, run over a split in batches
    of `batch_size`. SynthWorld's splits carry their true captions and need none of it."""

    name: str
    path: Path
    batch_size: int

    @classmethod
    def of(cls, cfg) -> Captioner:
        return cls(name=cfg.s1_captioner, path=under(cfg.weights_root, cfg.s1_captioner), batch_size=cfg.batch_size,
                   **RunSettings.of_profile(cfg))


def image_captions(data: StudyData, split: str, device, *, captioner: Captioner) -> list[str]:
    """One caption per image of `split`: SynthWorld's true captions, else `captioner`'s (cached).

    The `paper` hook reads a BLIP checkpoint (a folder written by
    `save_pretrained`) through transformers; a missing checkpoint raises
    MissingDataError naming the folder and the download command.
    """
    if data.splits[split].captions is not None:
        return data.splits[split].captions
    from transformers import AutoProcessor, BlipForConditionalGeneration

    path = captioner.path
    hint = ktext.hf_download_hint(captioner.name, path) + " Or set s1_captions=False."
    with ktext.quiet_transformers():
        try:
            processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
            model = BlipForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise MissingDataError(f"captioning model {captioner.name}", path,
                                   f"{hint} [{type(err).__name__}]") from None
    model.eval().to(device)
    dataset = data.splits[split]
    key = {"what": "s1-captions", "model": model_fingerprint(model), "data": data.key, "split": split,
           "n": len(dataset), "dry_run": captioner.dry_run}

    @torch.no_grad()
    def compute():
        out = []
        loader = torch.utils.data.DataLoader(dataset, batch_size=captioner.batch_size,
                                             num_workers=captioner.num_workers)
        for images, _, _ in tqdm(loader, desc=f"caption {data.name} {split}", leave=False,
                                 disable=not captioner.progress):
            inputs = processor(images=list(images), return_tensors="pt").to(device)
            ids = model.generate(**inputs, max_new_tokens=30)
            out += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
        return out

    return cached("s1-captions", key, compute)
