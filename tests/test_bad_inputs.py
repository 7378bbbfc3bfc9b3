"""Bad inputs are named: malformed COCO JSON, corrupt images (mid-epoch too), broken CIFAR batches, NaN scores."""

import pickle

import numpy as np
import pytest
import torch

from fixtures import write_cifar, write_coco_captions, write_image_folder
from kdutils import attribution, attribution_regions, datasets as D, metrics
from kdutils.errors import CorruptFileError
from kdutils.splits import image_files


def test_malformed_coco_json_names_the_file(tmp_path):
    w = write_coco_captions(tmp_path, n_images=2, captions_per_image=1)
    ann = w["annotations_file"]
    ann.write_text(ann.read_text()[:-40])  # an interrupted download
    with pytest.raises(CorruptFileError, match=rf"{ann}' is not valid JSON \(.*line 1"):
        D.coco_captions(ann, w["image_dir"])
    ann.write_text('{"images": [{"id": 1}], "annotations": []}')
    with pytest.raises(CorruptFileError, match=rf"{ann}' has a record without the field 'file_name'"):
        D.coco_captions(ann, w["image_dir"])


def test_corrupt_coco_image_is_named_when_read(tmp_path):
    w = write_coco_captions(tmp_path, n_images=2, captions_per_image=1)
    records = D.coco_captions(w["annotations_file"], w["image_dir"])
    records[1].path.write_bytes(records[1].path.read_bytes()[:60])
    ds = image_files([r.path for r in records], size=8)
    ds[0]
    with pytest.raises(CorruptFileError, match=rf"image {records[1].path} cannot be read"):
        ds[1]


def test_corrupt_image_mid_epoch_in_an_image_folder_names_it_through_a_worker(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], n_per_class=3, size=8, ext="jpg")
    bad = tmp_path / "b" / "b_0001.jpg"
    bad.write_bytes(bad.read_bytes()[:50])  # a truncated JPEG
    ds = D.image_folder(tmp_path, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    batches = iter(loader)
    next(batches)  # the first images load: the error comes mid-epoch
    with pytest.raises(Exception, match=rf"image {bad} cannot be read"):
        list(batches)


def test_truncated_cifar_batch_is_named(tmp_path):
    w = write_cifar(tmp_path, "cifar10", n_train=10, n_test=4)
    batch = w["folder"] / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"CIFAR batch .*data_batch_3 cannot be unpickled.*truncated"):
        D.cifar(tmp_path, train=True, verify=False)
    D.cifar(tmp_path, train=False, verify=False)  # the test split does not read it


@pytest.mark.parametrize("change, message", [
    (lambda e: {**e, "data": e["data"][:, :1024]}, r"test_batch holds images of shape \(1024,\), not 3072"),
    (lambda e: {**e, "labels": e["labels"][:-1]}, r"test_batch holds 4 images but 3 labels"),
])
def test_cifar_batch_of_the_wrong_image_size_or_label_count_is_named(tmp_path, change, message):
    w = write_cifar(tmp_path, "cifar10", n_train=10, n_test=4)
    batch = w["folder"] / "test_batch"
    entry = pickle.loads(batch.read_bytes(), encoding="latin1")
    batch.write_bytes(pickle.dumps(change(entry), protocol=2))
    with pytest.raises(CorruptFileError, match=message):
        D.cifar(tmp_path, train=False, verify=False)


@pytest.mark.parametrize("call", [
    lambda s: metrics.accuracy([0, 1, 1], s),
    lambda s: metrics.topk_accuracy(s, [0, 1, 1], 1),
    lambda s: metrics.classification_report([0, 1, 1], s),
])
def test_metrics_reject_nan_scores(call):
    scores = np.array([[0.9, 0.1], [np.nan, 0.2], [0.1, 0.9]])
    with pytest.raises(ValueError, match="NaN"):
        call(torch.tensor(scores))


def test_attribution_rejects_nan_maps():
    values = np.ones((3, 4, 4))
    values[0, 1, 1] = np.nan
    mask = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="NaN"):
        attribution_regions.region_contributions(values, mask)
    with pytest.raises(ValueError, match="NaN"):
        attribution.rank_agreement(values[None], np.ones((1, 3, 4, 4)))
