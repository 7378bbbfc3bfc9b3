"""Loaders for the real data sets of the `paper` profile.

Each loader reads the official on-disk format (CIFAR python batches, an
ImageFolder tree, the COCO captions JSON) with torchvision where torchvision
has a reader, and checks that the files are there *before* building anything,
so a machine without the downloads fails in one sentence that names the path
and how to get the data (see `kdutils.errors`). A file that is there but
unreadable (malformed JSON, a truncated batch, a corrupt image found
mid-epoch) is a `CorruptFileError` naming it. The how-tos (`cifar_files`,
`imagenet_how`, `imagenet100_how`, `COCO_HOW`) are also what
`splits.PAPER_DATA` tells a `paper` run to download.
Tests feed the same loaders small files written in the same formats
(`tests/fixtures.py`).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from importlib import resources
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image
from torchvision import datasets as tvd

from .errors import ConfigError, CorruptFileError, MissingDataError

__all__ = [
    "read_image",
    "cifar_files",
    "cifar",
    "image_folder",
    "imagenet_how",
    "imagenet100_how",
    "imagenet100",
    "imagenet100_classes",
    "CaptionRecord",
    "COCO_HOW",
    "coco_captions",
]


def read_image(path) -> Image.Image:
    """An RGB PIL image; a corrupt or unreadable file raises naming it."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for truncated and unknown files
        raise CorruptFileError(f"image {path} cannot be read ({type(err).__name__}: {err}); "
                               "replace it with a good copy or delete it.") from None
    return image


def _first(items, n: int = 5) -> str:
    items = list(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


# --------------------------------------------------------------------- CIFAR

_CIFAR = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}
_CIFAR_TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _unverified(cls):
    """`cls` with every MD5 set to None.

    torchvision's own `check_integrity(path, md5=None)` then checks only that
    each file exists, so the whole torchvision reading path runs unchanged on
    batches that are not the official release (test fixtures, rebuilt files).
    """
    return type(
        f"Unverified{cls.__name__}",
        (cls,),
        {
            "__doc__": f"{cls.__name__} that checks file presence but not the official MD5s.",
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


_CIFAR_UNVERIFIED = {name: _unverified(cls) for name, cls in _CIFAR.items()}


def cifar_files(root, name: str) -> tuple[str, Path, str]:
    """(what, folder, how to get it) of CIFAR-10/100's python batches under `root`."""
    cls = _CIFAR[name]
    return (f"{_CIFAR_TITLE[name]} python batches", Path(root) / cls.base_folder,
            f"Download {cls.url} and extract it into '{root}' (or set the profile's data_root).")


def cifar(root, name: str = "cifar10", train: bool = True, verify: bool = True):
    """CIFAR-10/100 from the official python batches, as torchvision's `CIFAR10`/`CIFAR100`.

    `root` holds `cifar-10-batches-py/` (or `cifar-100-python/`). With
    `verify=True` (the default) the files must match the official MD5s, as in
    torchvision; `verify=False` only checks that they exist, which is how tests
    load small batches written in the same format.
    """
    if name not in _CIFAR:
        raise ConfigError(f"cifar name must be one of {sorted(_CIFAR)}, got {name!r}")
    cls = _CIFAR[name] if verify else _CIFAR_UNVERIFIED[name]
    what, folder, how = cifar_files(root, name)
    files = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    bad_batch = functools.partial(_bad_cifar_batch, folder, files, f"{_CIFAR_TITLE[name]} ({cls.url}, into '{root}')")
    absent = [n for n in files if not (folder / n).is_file()]
    if absent:
        raise MissingDataError(what + (f" (missing {_first(absent)})" if folder.is_dir() else ""), folder, how)
    try:
        dataset = cls(str(root), train=train)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as err:  # torchvision cannot parse a batch
        raise bad_batch(err) from None
    except RuntimeError:
        # torchvision says only "not found or corrupted": name the files that fail.
        from torchvision.datasets.utils import check_integrity

        bad = [n for n, md5 in cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
               if not check_integrity(str(folder / n), md5)]
        if not bad:
            raise
        raise MissingDataError(
            f"{what} with the official checksums (MD5 mismatch: {_first(bad)})", folder,
            f"These files are not the official release (corrupted download or locally written batches). "
            f"Delete the folder, then {how[0].lower()}{how[1:]} verify=False is only for batches written "
            "locally (the dry runs' fixtures).") from None
    if len(dataset.data) != len(dataset.targets):
        raise bad_batch(ValueError(f"{len(dataset.data)} images but {len(dataset.targets)} labels"))
    return dataset


def _bad_cifar_batch(folder: Path, files: list[str], source: str, err: Exception) -> Exception:
    """The first batch file that does not hold (N, 3072) uint8 rows and N labels, as an error naming it."""
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
        except Exception as e:
            problem = f"cannot be unpickled ({type(e).__name__}: {e}): it is truncated or corrupt"
        else:
            if "data" not in entry:  # the meta file
                continue
            rows = np.asarray(entry["data"])
            labels = entry.get("labels", entry.get("fine_labels", []))
            if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
                problem = f"holds images of shape {rows.shape[1:]}, not 3072 values (32x32 RGB)"
            elif len(labels) != len(rows):
                problem = f"holds {len(rows)} images but {len(labels)} labels"
            else:
                continue
        return CorruptFileError(f"CIFAR batch {path} {problem}. Download and extract {source} again.")
    return err


# --------------------------------------------------------------- ImageFolder

class _ClassListImageFolder(tvd.ImageFolder):
    """ImageFolder that uses only the given classes, labelled in the given order."""

    def __init__(self, root, class_list: Sequence[str], **kwargs):
        self._class_list = list(class_list)
        super().__init__(root, **kwargs)

    def find_classes(self, directory):
        return list(self._class_list), {c: i for i, c in enumerate(self._class_list)}


def _check_class_list(classes) -> list[str]:
    if isinstance(classes, (str, bytes)) or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError(f"classes must be a sequence of non-empty folder names, got {classes!r}")
    classes = list(classes)
    if not classes:
        raise ConfigError("classes must not be empty")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise ConfigError(f"classes contains duplicates: {_first(dup)}")
    return classes


def image_folder(root, transform: Callable | None = None, classes: Sequence[str] | None = None,
                 *, how_to_get: str = "Point root at a folder with one sub-folder of images per class."):
    """torchvision `ImageFolder` on `root/<class>/<image>`, optionally restricted to `classes`.

    With `classes`, other folders are ignored and label i is `classes[i]` (the
    list's order, not the alphabetical one), so a fixed class list gives the
    same labels on every machine. `how_to_get` is the hint put in the errors.
    Images are read with `read_image`: a corrupt one stops the epoch naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError("image folder", root, how_to_get)
    if classes is not None:
        classes = _check_class_list(classes)
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise MissingDataError(
                f"{len(missing)} of {len(classes)} class folders (first missing: {_first(missing)})",
                root, how_to_get)
    try:
        if classes is None:
            return tvd.ImageFolder(str(root), transform=transform, loader=read_image)
        return _ClassListImageFolder(str(root), classes, transform=transform, loader=read_image)
    except FileNotFoundError as e:  # no class folder, or a class folder without images
        raise MissingDataError(f"images ({e})", root, how_to_get) from None


# -------------------------------------------------------------- ImageNet-100

_ILSVRC = ("Download ILSVRC2012 (train and val) from https://image-net.org and arrange each as one folder per "
           "wnid (val with the usual valprep.sh)")


def imagenet_how(root) -> str:
    """How to get ImageNet's train/ and val/ folders under `root`."""
    return f"{_ILSVRC}, as '{Path(root) / 'train'}' and '{Path(root) / 'val'}'."


def imagenet100_how(root) -> str:
    """How to get ImageNet-100's train/ and val/ folders under `root` (a full ImageNet folder works too)."""
    return (f"{_ILSVRC}, then copy or symlink the 100 wnid folders listed in kdutils/data/imagenet100-classes.txt "
            f"into '{Path(root) / 'train'}' and '{Path(root) / 'val'}' (or point there at the full ImageNet folder).")


def imagenet100_classes() -> list[str]:
    """The 100 WordNet ids of the standard ImageNet-100 subset (CMC, Tian et al. 2019), shipped with kdutils."""
    text = resources.files("kdutils").joinpath("data/imagenet100-classes.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_class_list(class_list) -> list[str]:
    if class_list is None:
        return imagenet100_classes()
    if isinstance(class_list, (str, os.PathLike)):
        path = Path(class_list)
        if not path.is_file():
            raise MissingDataError("class list file", path, "Give a text file with one WordNet id a line.")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return list(class_list)


def imagenet100(root, split: str = "train", transform: Callable | None = None, class_list=None):
    """ImageNet-100: `root/<split>/<wnid>/` restricted to the 100 listed wnids, labels in list order.

    `root` may be a full ImageNet folder: classes not in the list are ignored.
    `class_list` (a sequence of wnids or a text file, one a line) replaces the
    shipped list.
    """
    if split not in ("train", "val"):
        raise ConfigError(f"imagenet100 split must be 'train' or 'val', got {split!r}")
    how = imagenet100_how(root)
    if not (Path(root) / split).is_dir():
        raise MissingDataError(f"ImageNet-100 {split} folder", Path(root) / split, how)
    return image_folder(Path(root) / split, transform=transform,
                        classes=_read_class_list(class_list), how_to_get=how)


# ------------------------------------------------------------- COCO captions

class CaptionRecord(NamedTuple):
    """One COCO image: its id, its file, and its captions ordered by annotation id."""

    image_id: int
    path: Path
    captions: list[str]


COCO_HOW = ("Download the 2017 captions annotations (annotations_trainval2017.zip, which holds "
             "captions_train2017.json and captions_val2017.json) and the images (train2017.zip, "
             "val2017.zip) from https://cocodataset.org/#download.")


def coco_captions(annotations_file, image_dir) -> list[CaptionRecord]:
    """Read an official COCO captions JSON (e.g. captions_train2017.json) into records, ordered by image id.

    Every image of the file is kept (its caption list may be empty). All
    referenced files must exist in `image_dir`, so a partial download fails
    here rather than mid-epoch.
    """
    annotations_file, image_dir = Path(annotations_file), Path(image_dir)
    if not annotations_file.is_file():
        raise MissingDataError("COCO captions annotation file", annotations_file, COCO_HOW)
    if not image_dir.is_dir():
        raise MissingDataError("COCO image folder", image_dir, COCO_HOW)
    try:
        with open(annotations_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"'{annotations_file}' is not valid JSON ({err}); it is truncated or corrupt. "
                               f"{COCO_HOW}") from None
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise ConfigError(f"'{annotations_file}' is not a COCO annotation file (needs 'images' and 'annotations')")
    anns = data["annotations"]
    if anns and "caption" not in anns[0]:
        raise ConfigError(f"'{annotations_file}' has no 'caption' fields: use a captions_*.json file, "
                          "not instances_*.json or person_keypoints_*.json")
    try:
        files = {img["id"]: img["file_name"] for img in data["images"]}
        caps: dict[int, list[tuple[int, str]]] = {i: [] for i in files}
        orphans = []
        for a in anns:
            if a["image_id"] in caps:
                caps[a["image_id"]].append((a["id"], a["caption"]))
            else:
                orphans.append(a["id"])
    except (KeyError, TypeError) as err:
        raise CorruptFileError(f"'{annotations_file}' has a record without the field {err} (or not an object): "
                               f"not the COCO captions format. {COCO_HOW}") from None
    if orphans:
        raise ConfigError(f"'{annotations_file}': {len(orphans)} captions refer to images not in 'images' "
                          f"(annotation ids {_first(orphans)})")
    present = set(os.listdir(image_dir))
    missing = [fn for fn in files.values() if fn not in present and not (image_dir / fn).is_file()]
    if missing:
        raise MissingDataError(
            f"{len(missing)} of {len(files)} images referenced by {annotations_file.name} "
            f"(first missing: {_first(missing)})", image_dir, COCO_HOW)
    return [CaptionRecord(i, image_dir / files[i], [c for _, c in sorted(caps[i])]) for i in sorted(files)]
