"""One data split for every study: uint8 NCHW images, int64 labels, optional masks and captions, a stable key.

A study's data set is a `StudyData`: its splits by role ("train", "val", "test", "probe_train"...).

A `Split` is also a torch Dataset whose items are (uint8 image, label, index), so frozen outputs and
per-image targets are looked up by index. Big real sets (ImageNet) keep their images on disk
(`source`, an ImageFolder whose transform gives uint8 tensors) and are read lazily. `PAPER_DATA` is the
one table of what the `paper` profile downloads; every study's required-files check reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch

from .cache import content_digest, key_digest
from .paths import under

__all__ = ["nchw", "to_float", "Split", "StudyData", "TensorRows", "as_batch", "loader", "tensor_loader",
           "from_synth", "synthworld_split", "cifar_splits", "folder_split", "image_files", "PAPER_DATA", "paper_data"]


def nchw(images_nhwc) -> torch.Tensor:
    """uint8 (N, H, W, 3) arrays, as every reader gives them, as a contiguous uint8 (N, 3, H, W) tensor."""
    return torch.as_tensor(np.asarray(images_nhwc)).permute(0, 3, 1, 2).contiguous()


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) images as float in [0, 1], channels-last in memory.

    Channels-last is the layout an NHWC array's float conversion always had
    here; convolutions round differently on another layout (1e-8).
    """
    return images.contiguous(memory_format=torch.channels_last).float().div_(255)


@dataclass(eq=False)
class Split(torch.utils.data.Dataset):
    """Images (uint8 (N, 3, H, W), or None with a lazily read `source`), labels and what else is known.

    `key` identifies the images and labels (a content hash, or the files read) for the caches.
    `masks` is (N, H, W) bool and `has_mask` (N,) says which are real; `captions` one text per image.
    """

    images: torch.Tensor | None
    labels: torch.Tensor
    key: str
    masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None
    captions: list[str] | None = None
    class_names: list[str] = field(default_factory=list)
    source: torch.utils.data.Dataset | None = None

    def __post_init__(self):
        if self.images is not None and (self.images.dtype != torch.uint8 or self.images.dim() != 4
                                        or self.images.shape[1] != 3):
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}.")
        if (self.images is None) == (self.source is None):
            raise ValueError("a Split needs exactly one of in-memory `images` or a `source` to read them from.")
        n = len(self.images if self.source is None else self.source)
        if n != len(self.labels):
            raise ValueError(f"{n} images but {len(self.labels)} labels.")

    @classmethod
    def from_nhwc(cls, images, labels, masks=None, **extra) -> "Split":
        """A split of uint8 (N, H, W, 3) arrays, as every reader gives them; the key hashes pixels and labels."""
        images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
        has = None if masks is None else np.ones(len(labels), dtype=bool)
        return cls(nchw(images), torch.from_numpy(labels),
                   content_digest(images, labels), masks, has, **extra)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i] if self.source is None else self.source[i][0]
        return image, self.labels[i], i

    @property
    def lazy(self) -> bool:
        """Whether images are read from files item by item (worth worker processes)."""
        return self.source is not None

    @cached_property
    def side(self) -> int:
        """The images' side in pixels; a split read from files reads its first image to know it."""
        height, width = (self.images if self.source is None else self.source[0][0]).shape[-2:]
        if height != width:
            raise ValueError(f"images are {height}x{width}, not square: use their shape, not `side`.")
        return int(width)

    def float_images(self, idx=slice(None)) -> torch.Tensor:
        """Images `idx` as float in [0, 1] (`to_float`; in-memory splits)."""
        return to_float(self.images[idx])

    def part(self, indices) -> "Split":
        """The images `indices` as a split of their own (a held-out part), keyed by their content like a loaded one."""
        sub = self.subset(indices)
        return replace(sub, key=content_digest(sub.images.permute(0, 2, 3, 1), sub.labels))

    def subset(self, indices) -> "Split":
        """The images `indices`, in that order, keyed by this split's key and the indices."""
        if self.lazy:
            raise ValueError("subset of a split read from files: use torch.utils.data.Subset.")
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        pick = (lambda a: None if a is None else a[idx.numpy()])
        return replace(self, images=self.images[idx], labels=self.labels[idx],
                       key=f"{self.key}[{content_digest(idx)}]", masks=pick(self.masks),
                       has_mask=pick(self.has_mask),
                       captions=None if self.captions is None else [self.captions[i] for i in idx.tolist()])


@dataclass(eq=False)
class StudyData:
    """One data set of a study: its splits by role, its class names and what its caches hash.

    `name` says what the images are, as titles and tables print it ("SynthWorld
    target task", "CIFAR-10"). Roles that share images share the `Split` (a real
    set without a validation split uses its test split as "val"). `key` is what
    a study's caches hash for the whole set (its name, sizes, seeds) where they
    do not hash each split's own content `key`: one description of the set
    (study 1), one per split it trains or probes on ({"train", "test"}, study 3),
    or none (studies 2 and 4, whose caches hash each split). `pairs` (study 2)
    holds each role's image-caption pairs (`pairs.PairSet`) over that role's split.
    """

    name: str
    splits: dict[str, Split]
    class_names: list[str]
    key: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class TensorRows(torch.utils.data.TensorDataset):
    """A TensorDataset that gathers a batch with one index per tensor; load it with `collate_fn=as_batch`.

    The default loader indexes and stacks row by row: on cached features that
    costs about as much as a small head's own step. The batches and their
    order are the same (the same samplers draw the same indices), and so is
    the layout: contiguous, as stacking makes it (a convolution rounds
    differently on channels-last).
    """

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        idx = torch.as_tensor(indices)
        return [t[idx].contiguous() for t in self.tensors]


def as_batch(batch):
    """The collate function of a `TensorRows` loader: its batch is already gathered."""
    return batch


def loader(dataset, **loader_args) -> torch.utils.data.DataLoader:
    """`DataLoader(dataset, **loader_args)`; a `TensorRows` dataset keeps its gathered batches (`as_batch`)."""
    if isinstance(dataset, TensorRows):
        loader_args = {"collate_fn": as_batch, **loader_args}
    return torch.utils.data.DataLoader(dataset, **loader_args)


def tensor_loader(*tensors: torch.Tensor, **loader_args) -> torch.utils.data.DataLoader:
    """`DataLoader(TensorDataset(*tensors), **loader_args)`'s batches, gathered a batch at a time (`TensorRows`).

    >>> [b.tolist() for b in next(iter(tensor_loader(torch.arange(4), batch_size=2)))]
    [[0, 1]]
    """
    return loader(TensorRows(*tensors), **loader_args)


# ------------------------------------------------------------------ loaders

def from_synth(batch) -> Split:
    """A `synthworld.SynthBatch` as a split, with its masks and captions."""
    return Split.from_nhwc(batch.images, batch.labels, batch.masks, captions=list(batch.captions),
                           class_names=list(batch.class_names))


def synthworld_split(cfg, split: str) -> Split:
    """A fixed SynthWorld split of this profile ('target_train', 'source_test'...), with masks and captions."""
    from .pretrain import SynthData

    return from_synth(SynthData.of(cfg).split(split))


def cifar_splits(root, name: str = "cifar10", *, verify: bool = True) -> dict[str, Split]:
    """{"train", "test"} splits of CIFAR-10/100 from the official python batches (`datasets.cifar`)."""
    from . import datasets

    out = {}
    for part in ("train", "test"):
        ds = datasets.cifar(root, name, train=part == "train", verify=verify)
        out[part] = Split.from_nhwc(ds.data, ds.targets, class_names=list(ds.classes))
    return out


def folder_split(folder) -> Split:
    """A split read lazily from an ImageFolder (`datasets.image_folder`) whose transform gives uint8 tensors."""
    files = [(str(p), int(y)) for p, y in folder.samples]
    return Split(None, torch.tensor(folder.targets, dtype=torch.long), key_digest(files),
                 class_names=list(folder.classes), source=folder)


class _ImageFiles(torch.utils.data.Dataset):
    """Image files as (uint8 (3, size, size), -1): shorter side resized to `size`, centre crop."""

    def __init__(self, paths: list[str], size: int):
        from torchvision import transforms

        self.paths = paths
        self.transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                             transforms.PILToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from .datasets import read_image

        return self.transform(read_image(self.paths[i])).contiguous(), -1


def image_files(paths, size: int, captions: list[str] | None = None) -> Split:
    """Unlabelled images (label -1) read lazily from `paths` at `size` x `size`; keyed by the files and size."""
    paths = [str(p) for p in paths]
    key = repr({"files": key_digest(paths), "size": size})  # the text study 2's pair fingerprints have hashed
    return Split(None, torch.full((len(paths),), -1, dtype=torch.long), key, captions=captions,
                 source=_ImageFiles(paths, size))


# -------------------------------------------------------- what `paper` needs

def _cifar(name: str):
    def need(cfg) -> dict:
        from .datasets import cifar_files

        what, folder, how = cifar_files(under(cfg.data_root), name)
        return {what: (folder, how)}
    return need


def _imagenet(cfg) -> dict:
    from .datasets import imagenet_how

    root = under(cfg.data_root, cfg.s1_imagenet_dir)
    how = f"{imagenet_how(root)} Or set data_root / s1_imagenet_dir."
    return {"ImageNet train folder": (root / "train", how), "ImageNet val folder": (root / "val", how)}


def _imagenet100(cfg) -> dict:
    from .datasets import imagenet100_how

    root = under(cfg.data_root, cfg.s3_imagenet100)
    how = f"{imagenet100_how(root)} Or set data_root / s3_imagenet100."
    return {"ImageNet-100 train folder": (root / "train", how), "ImageNet-100 val folder": (root / "val", how)}


def _coco(cfg) -> dict:
    from .datasets import COCO_HOW
    from .pairs import coco_paths

    annotations, images = coco_paths(cfg)
    return {"COCO captions annotations": (annotations, COCO_HOW), "COCO images": (images, COCO_HOW)}


#: Every real data set of the `paper` profile: name -> cfg -> {what: (path, how to get it)}.
PAPER_DATA = {
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "imagenet": _imagenet,
    "imagenet100": _imagenet100,
    "coco": _coco,
}


def paper_data(cfg, *names: str) -> dict:
    """{what: (path, how to get it)} of the named data sets, for `session.require_files`."""
    from .errors import ConfigError

    unknown = [n for n in names if n not in PAPER_DATA]
    if unknown:
        raise ConfigError(f"no paper data set {unknown}; choose from {sorted(PAPER_DATA)}.")
    return {what: need for n in names for what, need in PAPER_DATA[n](cfg).items()}
