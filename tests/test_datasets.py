"""The `paper` loaders on files written in the real on-disk formats, and on real CIFAR-10 JPEGs."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from fixtures import (
    CIFAR10_CLASSES,
    CIFAR10_JPG,
    CIFAR100_FINE,
    cifar10_jpg_archive,
    extract_cifar10_jpg,
    shared_data_dir,
    write_cifar,
    write_coco_captions,
    write_image_folder,
)
from kdutils import datasets as D
from kdutils.errors import ConfigError, MissingDataError


# ------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_fixture_round_trip(tmp_path, name):
    w = write_cifar(tmp_path, name, n_train=23, n_test=7, seed=1)  # 23: uneven split over 5 batches
    for train, split in ((True, "train"), (False, "test")):
        ds = D.cifar(tmp_path, name, train=train, verify=False)
        images, labels = w[split]
        assert isinstance(ds, {"cifar10": CIFAR10, "cifar100": CIFAR100}[name])
        assert len(ds) == len(labels)
        np.testing.assert_array_equal(ds.data, images)
        assert ds.targets == labels
        assert ds.classes == (CIFAR10_CLASSES if name == "cifar10" else CIFAR100_FINE)
        img, y = ds[3]
        assert isinstance(img, Image.Image) and img.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(img), images[3])
        assert y == labels[3]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_verify_rejects_fixture(tmp_path, name):
    w = write_cifar(tmp_path, name, n_train=5, n_test=2)
    with pytest.raises(MissingDataError) as e:
        D.cifar(tmp_path, name)
    msg = str(e.value)
    assert str(w["folder"]) in msg and "MD5 mismatch" in msg and "verify=False" in msg
    assert ("data_batch_1" if name == "cifar10" else "train") in msg


@pytest.mark.parametrize("name,folder,url", [
    ("cifar10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    ("cifar100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
])
def test_cifar_missing(tmp_path, name, folder, url):
    with pytest.raises(MissingDataError) as e:
        D.cifar(tmp_path, name, verify=False)
    msg = str(e.value)
    assert str(tmp_path / folder) in msg and url in msg and "extract it into" in msg
    assert e.value.path == str(tmp_path / folder)


def test_cifar_partial_names_missing_file(tmp_path):
    w = write_cifar(tmp_path, "cifar10", n_train=5, n_test=2)
    (w["folder"] / "data_batch_4").unlink()
    with pytest.raises(MissingDataError, match="missing data_batch_4"):
        D.cifar(tmp_path, verify=False)


def test_cifar_bad_name(tmp_path):
    with pytest.raises(ConfigError, match="cifar10"):
        D.cifar(tmp_path, "cifar11")


# ------------------------------------------------------------- ImageFolder

def test_image_folder_all_classes_exact_pixels(tmp_path):
    w = write_image_folder(tmp_path, ["dog", "cat", "bird"], n_per_class=2, size=(6, 9), seed=3)
    ds = D.image_folder(tmp_path)
    assert ds.classes == ["bird", "cat", "dog"]  # torchvision default: alphabetical
    assert len(ds) == 6
    assert [y for _, y in ds.samples] == [0, 0, 1, 1, 2, 2]
    img, y = ds[3]  # second cat
    assert y == 1 and img.size == (9, 6)
    np.testing.assert_array_equal(np.asarray(img), w["cat"][1])


def test_image_folder_class_list_order_and_exclusion(tmp_path):
    w = write_image_folder(tmp_path, ["a", "b", "c", "extra"], n_per_class=2, seed=4)
    ds = D.image_folder(tmp_path, classes=["c", "a"])
    assert ds.classes == ["c", "a"] and ds.class_to_idx == {"c": 0, "a": 1}
    assert len(ds) == 4
    by_label = {}
    for (path, y), i in zip(ds.samples, range(len(ds))):
        assert "extra" not in path and "/b/" not in path
        by_label.setdefault(y, []).append(np.asarray(ds[i][0]))
    np.testing.assert_array_equal(by_label[0][0], w["c"][0])
    np.testing.assert_array_equal(by_label[1][1], w["a"][1])


def test_image_folder_errors(tmp_path):
    with pytest.raises(MissingDataError) as e:
        D.image_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    write_image_folder(tmp_path, ["a"], n_per_class=1)
    with pytest.raises(MissingDataError, match=r"1 of 2 class folders \(first missing: z\)"):
        D.image_folder(tmp_path, classes=["a", "z"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="empty"):
        D.image_folder(tmp_path, classes=["a", "empty"])
    with pytest.raises(ConfigError, match="duplicates"):
        D.image_folder(tmp_path, classes=["a", "a"])
    with pytest.raises(ConfigError):
        D.image_folder(tmp_path, classes="a")


# ------------------------------------------------------------ ImageNet-100

def test_imagenet100_classes_shipped_list():
    wnids = D.imagenet100_classes()
    assert len(wnids) == 100 and len(set(wnids)) == 100
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert wnids[:2] == ["n02869837", "n01749939"] and wnids[-1] == "n02090622"
    shared = shared_data_dir() / "imagenet100-classes.txt"
    if shared.is_file():
        assert wnids == shared.read_text().split()


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    wnids = D.imagenet100_classes()
    extra = ["n01440764", "n01443537", "n99999999"]  # real ImageNet wnids not in the subset, and a fake one
    assert not set(extra) & set(wnids)
    for split, n in (("train", 2), ("val", 1)):
        write_image_folder(root / split, wnids + extra, n_per_class=n, size=4, seed=5, ext="JPEG")
    return root


def test_imagenet100_restriction_and_order(imagenet_root):
    wnids = D.imagenet100_classes()
    ds = D.imagenet100(imagenet_root, "train")
    assert ds.classes == wnids
    assert len(ds) == 200
    labels = [y for _, y in ds.samples]
    assert sorted(labels) == sorted(list(range(100)) * 2)
    for path, y in ds.samples:
        assert path.split("/")[-2] == wnids[y]
    img, _ = ds[0]
    assert img.mode == "RGB" and img.size == (4, 4)
    val = D.imagenet100(imagenet_root, "val")
    assert len(val) == 100 and val.classes == wnids


def test_imagenet100_custom_class_list(imagenet_root, tmp_path):
    f = tmp_path / "list.txt"
    f.write_text("n01443537\nn01440764\n")
    for cl in (f, ["n01443537", "n01440764"]):
        ds = D.imagenet100(imagenet_root, "val", class_list=cl)
        assert ds.classes == ["n01443537", "n01440764"] and len(ds) == 2


def test_imagenet100_missing(tmp_path):
    wnids = D.imagenet100_classes()
    write_image_folder(tmp_path / "train", wnids[3:], n_per_class=1, size=2, ext="JPEG")
    with pytest.raises(MissingDataError) as e:
        D.imagenet100(tmp_path, "train")
    msg = str(e.value)
    assert f"3 of 100 class folders (first missing: {', '.join(wnids[:3])})" in msg
    assert str(tmp_path / "train") in msg and "image-net.org" in msg and "imagenet100-classes.txt" in msg
    with pytest.raises(MissingDataError, match=re.escape(str(tmp_path / "val"))):
        D.imagenet100(tmp_path, "val")
    with pytest.raises(ConfigError):
        D.imagenet100(tmp_path, "test")


# ------------------------------------------------------------ COCO captions

def test_coco_captions_records(tmp_path):
    w = write_coco_captions(tmp_path, n_images=6, captions_per_image=5, seed=7)
    recs = D.coco_captions(w["annotations_file"], w["image_dir"])
    assert len(recs) == 6
    assert [r.image_id for r in recs] == sorted(w["captions"])
    for r in recs:
        assert r.captions == w["captions"][r.image_id] and len(r.captions) == 5
        assert r.path == w["image_dir"] / f"{r.image_id:012d}.jpg" and r.path.is_file()
    # the file really is shuffled, so grouping and sorting were needed
    anns = json.loads(w["annotations_file"].read_text())["annotations"]
    assert [a["id"] for a in anns] != sorted(a["id"] for a in anns)



def test_coco_captions_missing(tmp_path):
    w = write_coco_captions(tmp_path, n_images=4, captions_per_image=2, seed=8)
    ann, img_dir = w["annotations_file"], w["image_dir"]
    for args, path in (((tmp_path / "captions_train2017.json", img_dir), tmp_path / "captions_train2017.json"),
                       ((ann, tmp_path / "val2017"), tmp_path / "val2017")):
        with pytest.raises(MissingDataError) as e:
            D.coco_captions(*args)
        assert str(path) in str(e.value)
        assert "captions_train2017.json" in str(e.value) and "https://cocodataset.org" in str(e.value)
    gone = sorted(img_dir.iterdir())[1:3]
    for p in gone:
        p.unlink()
    with pytest.raises(MissingDataError) as e:
        D.coco_captions(ann, img_dir)
    assert f"2 of 4 images referenced by {ann.name} (first missing: {gone[0].name}, {gone[1].name})" in str(e.value)
    assert str(img_dir) in str(e.value)


def test_coco_captions_wrong_file(tmp_path):
    w = write_coco_captions(tmp_path, n_images=2, captions_per_image=1)
    bad = tmp_path / "instances_train2017.json"
    bad.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(ConfigError, match="captions_"):
        D.coco_captions(bad, w["image_dir"])
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="not a COCO"):
        D.coco_captions(bad, w["image_dir"])


def test_coco_matches_torchvision_when_pycocotools_present(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools is not a dependency; equivalence check skipped")
    from torchvision.datasets import CocoCaptions as TVCoco

    w = write_coco_captions(tmp_path, n_images=5, captions_per_image=3, seed=9)
    recs = D.coco_captions(w["annotations_file"], w["image_dir"])
    tv = TVCoco(str(w["image_dir"]), str(w["annotations_file"]))
    assert len(tv) == len(recs)
    for i, r in enumerate(recs):
        img, caps = tv[i]
        assert sorted(caps) == sorted(r.captions) and img.size == Image.open(r.path).size


# ------------------------------------------------- real CIFAR-10 as JPEGs

PER_CLASS = 20


@pytest.fixture(scope="session")
def cifar10_jpg_test(tmp_path_factory):
    archive = shared_data_dir() / CIFAR10_JPG
    if not archive.is_file():
        pytest.skip(f"real CIFAR-10 JPEG archive absent at {archive} (set KD_SHARED_DATA)")
    return extract_cifar10_jpg(None, tmp_path_factory.mktemp("cifar10jpg"), "test", per_class=PER_CLASS)


def test_real_cifar10_jpg(cifar10_jpg_test):
    ds = D.image_folder(cifar10_jpg_test)
    assert ds.classes == CIFAR10_CLASSES
    assert len(ds) == 10 * PER_CLASS
    assert np.bincount([y for _, y in ds.samples]).tolist() == [PER_CLASS] * 10
    for i in range(0, len(ds), 37):
        img, _ = ds[i]
        assert img.mode == "RGB" and img.size == (32, 32)
        assert np.asarray(img).std() > 5  # a photograph, not a blank
    # restricted to two classes, in the given order
    sub = D.image_folder(cifar10_jpg_test, classes=["truck", "airplane"])
    assert len(sub) == 2 * PER_CLASS and sub[0][1] in (0, 1)
    assert {p.split("/")[-2] for p, y in sub.samples if y == 0} == {"truck"}


def test_extract_cifar10_jpg_reuses_and_validates(cifar10_jpg_test, tmp_path):
    again = extract_cifar10_jpg(None, cifar10_jpg_test.parents[1], "test", per_class=PER_CLASS)
    assert again == cifar10_jpg_test  # marker hit: no second pass over the archive
    with pytest.raises(ConfigError):
        extract_cifar10_jpg(None, tmp_path, "val")
    with pytest.raises(ConfigError):
        extract_cifar10_jpg(None, tmp_path, "test", per_class=0)


def test_archive_location_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    with pytest.raises(MissingDataError) as e:
        cifar10_jpg_archive()
    assert str(tmp_path / "cifar10-jpg.tar.gz") in str(e.value) and "KD_SHARED_DATA" in str(e.value)
    with pytest.raises(MissingDataError):
        extract_cifar10_jpg(None, tmp_path, "test")
