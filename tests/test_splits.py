"""splits: the one data split (uint8 NCHW, labels, masks, captions, key), its loaders and the paper table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import write_cifar, write_image_folder

from kdutils import splits
from kdutils.cache import content_digest
from kdutils.errors import ConfigError
from kdutils.profiles import load_profile


def _nhwc(n=6, size=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 3


def test_from_nhwc_converts_once_keys_by_content_and_yields_indexed_items():
    x, y = _nhwc()
    masks = np.zeros((6, 4, 4), dtype=bool)
    s = splits.Split.from_nhwc(x, y, masks, captions=[f"c{i}" for i in range(6)])
    assert s.images.dtype == torch.uint8 and s.images.shape == (6, 3, 4, 4) and s.images.is_contiguous()
    assert torch.equal(s.images[2].permute(1, 2, 0), torch.from_numpy(x[2]))
    assert s.key == content_digest(x, y.astype(np.int64)) and s.has_mask.all()
    assert s.key != splits.Split.from_nhwc(x[::-1].copy(), y).key and s.side == 4
    image, label, index = s[4]
    assert torch.equal(image, s.images[4]) and int(label) == 1 and index == 4
    f = s.float_images([0, 5])  # exactly the old NHWC -> float conversion, layout included
    old = torch.from_numpy(x[[0, 5]]).permute(0, 3, 1, 2).float().div_(255)
    assert torch.equal(f, old) and f.stride() == old.stride()


def test_subset_keeps_every_field_in_order_and_changes_the_key():
    x, y = _nhwc()
    s = splits.Split.from_nhwc(x, y, np.arange(6 * 16).reshape(6, 4, 4) % 2 == 0,
                               captions=[f"c{i}" for i in range(6)], class_names=["a", "b", "c"])
    sub = s.subset([5, 1])
    assert torch.equal(sub.images, s.images[[5, 1]]) and sub.labels.tolist() == [2, 1]
    assert sub.captions == ["c5", "c1"] and np.array_equal(sub.masks, s.masks[[5, 1]])
    assert sub.class_names == ["a", "b", "c"] and sub.key.startswith(s.key) and sub.key != s.key
    part = s.part([1, 5])  # a held-out part is keyed like the same images loaded on their own
    assert part.key == splits.Split.from_nhwc(x[[1, 5]], y[[1, 5]]).key and torch.equal(part.images, s.images[[1, 5]])


def test_bad_splits_fail_loudly():
    with pytest.raises(ValueError, match="uint8"):
        splits.Split(torch.zeros(2, 3, 4, 4), torch.zeros(2), key="float")
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        splits.Split(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3), key="short")
    with pytest.raises(ValueError, match="not square"):
        splits.Split(torch.zeros(2, 3, 4, 5, dtype=torch.uint8), torch.zeros(2), key="wide").side


def test_cifar_and_lazy_image_folder_loaders(tmp_path):
    from torchvision.transforms import PILToTensor

    from kdutils import datasets

    written = write_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    parts = splits.cifar_splits(tmp_path, "cifar10", verify=False)
    assert torch.equal(parts["test"].images, splits.nchw(written["test"][0]))
    assert parts["train"].labels.tolist() == written["train"][1] and parts["train"].class_names[0] == "airplane"
    pixels = write_image_folder(tmp_path / "folder", ["cat", "dog"], n_per_class=2, size=5)
    lazy = splits.folder_split(datasets.image_folder(tmp_path / "folder", PILToTensor()))
    assert lazy.lazy and lazy.images is None and len(lazy) == 4 and lazy.class_names == ["cat", "dog"]
    image, label, index = lazy[3]
    assert image.dtype == torch.uint8 and int(label) == 1 and index == 3
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(pixels["dog"][1])) and lazy.side == 5
    with pytest.raises(ValueError, match="Subset"):
        lazy.subset([0])


def test_paper_table_names_every_download(tmp_path):
    cfg = load_profile("paper", data_root=str(tmp_path))
    need = splits.paper_data(cfg, *splits.PAPER_DATA)
    assert need["CIFAR-10 python batches"][0] == tmp_path / "cifar-10-batches-py"
    assert need["CIFAR-100 python batches"][0] == tmp_path / "cifar-100-python"
    assert {"ImageNet val folder", "ImageNet-100 train folder", "COCO images"} <= set(need)
    assert all(how for _, how in need.values())
    with pytest.raises(ConfigError, match="no paper data set"):
        splits.paper_data(cfg, "mnist")


@pytest.mark.parametrize("sampling", ["shuffled", "with replacement", "in order"])
def test_tensor_loader_gives_the_default_loaders_batches_order_and_layout(sampling):
    images = splits.to_float(torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8))  # channels-last, as cached
    tensors = (images, torch.arange(10), torch.randn(10, 2, 5).half())

    def batches(make):
        gen = torch.Generator().manual_seed(3)
        args = {"shuffled": {"shuffle": True, "generator": gen, "drop_last": True},
                "with replacement": {"sampler": torch.utils.data.RandomSampler(range(10), replacement=True,
                                                                              num_samples=12, generator=gen)},
                "in order": {}}[sampling]
        return list(make(batch_size=4, **args))

    default = batches(lambda **a: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), **a))
    gathered = batches(lambda **a: splits.tensor_loader(*tensors, **a))
    assert [[t.tolist() for t in b] for b in gathered] == [[t.tolist() for t in b] for b in batches(
        lambda **a: splits.loader(splits.TensorRows(*tensors), **a))]  # the one place that picks the collation
    assert len(gathered) == len(default) == {"shuffled": 2, "with replacement": 3, "in order": 3}[sampling]
    for ours, theirs in zip(gathered, default):
        assert type(ours) is type(theirs) and len(ours) == 3
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b)
    order = [i for batch in gathered for i in batch[1].tolist()]
    assert (order == list(range(10))) == (sampling == "in order")  # the samplers really drew
