"""Matching pairs: the paper's recipe, hard negatives, splits and the dataset, checked on known inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdutils import pairs
from kdutils.datasets import coco_captions
from kdutils.errors import ConfigError
from kdutils.profiles import load_profile
from kdutils.splits import Split
from kdutils.text import build_tokenizer
from tests.fixtures import write_coco_captions

CAPTIONS = [f"caption number {i}" for i in range(11)]


def test_split_halves_balanced_disjoint_and_seeded():
    keep, swap = pairs.split_halves(11, seed=3)
    assert len(keep) == len(swap) == 5 and not set(keep) & set(swap)
    again = pairs.split_halves(11, seed=3)
    assert np.array_equal(keep, again[0]) and np.array_equal(swap, again[1])
    assert not np.array_equal(keep, pairs.split_halves(11, seed=4)[0])
    with pytest.raises(ValueError, match="at least 2"):
        pairs.split_halves(1, 0)


def test_random_negative_pairs_follow_the_paper():
    p = pairs.random_negative_pairs(CAPTIONS, seed=0)
    assert len(p) == 10 and p.labels.sum() == 5 and len(np.unique(p.image_index)) == 10
    for i, cap, y in zip(p.image_index, p.captions, p.labels):
        if y == 1:
            assert cap == CAPTIONS[i]
        else:
            assert cap != CAPTIONS[i] and cap in CAPTIONS  # another image's caption, never its own
    assert p.kind.count("random") == 5 and p.kind.count("match") == 5
    q = pairs.random_negative_pairs(CAPTIONS, seed=0)
    assert q.captions == p.captions and np.array_equal(q.image_index, p.image_index)


def test_random_negatives_skip_identical_texts_and_are_uniform():
    caps = ["same"] * 3 + ["other"]
    for seed in range(20):
        p = pairs.random_negative_pairs(caps, seed)
        for i, cap, y in zip(p.image_index, p.captions, p.labels):
            assert (cap == caps[i]) == bool(y)
    # over many seeds, a swapped image's partner is uniform over the other images
    counts = np.zeros((4, 4))
    for seed in range(2000):
        p = pairs.random_negative_pairs([f"c{i}" for i in range(4)], seed)
        for i, cap, y in zip(p.image_index, p.captions, p.labels):
            if y == 0:
                counts[i, int(cap[1:])] += 1
    assert np.all(np.diag(counts) == 0)
    share = counts / counts.sum(1, keepdims=True)
    assert np.allclose(share[~np.eye(4, dtype=bool)], 1 / 3, atol=0.06)
    with pytest.raises(ValueError, match="same"):
        pairs.random_negative_pairs(["x", "x"], 0)


def test_hard_pairs_share_images_and_positives_with_random_pairs():
    near = [f"near miss {i}" for i in range(11)]
    rnd = pairs.random_negative_pairs(CAPTIONS, seed=5)
    hard = pairs.hard_negative_pairs(CAPTIONS, near, ["shape"] * 11, seed=5)
    assert np.array_equal(rnd.image_index, hard.image_index) and np.array_equal(rnd.labels, hard.labels)
    for i, cap, y in zip(hard.image_index, hard.captions, hard.labels):
        assert cap == (CAPTIONS[i] if y else near[i])
    assert hard.summary()["kinds"] == {"match": 5, "shape": 5}
    with pytest.raises(ValueError, match="own caption"):
        pairs.hard_negative_pairs(CAPTIONS, CAPTIONS, ["x"] * 11, seed=5)


def test_attribute_negatives_balanced_over_the_negative_half():
    hard = [{"color": f"c{i}", "shape": f"s{i}", "position": f"p{i}", "background": f"b{i}"} for i in range(20)]
    target = np.arange(0, 20, 2)
    near, kinds = pairs.attribute_negatives(hard, seed=1, balance_over=target)
    chosen = [kinds[i] for i in target]
    assert sorted(chosen.count(a) for a in ("background", "color", "position", "shape")) == [2, 2, 3, 3]
    assert all(near[i] == hard[i][kinds[i]] for i in range(20))


def test_jaccard_neighbours_hand_computed():
    caps = ["A dog on a red sofa.", "a dog on a blue sofa", "two cats on a red sofa", "a plane in the sky",
            "A dog on a red sofa."]
    # content words: {dog, red, sofa}, {dog, blue, sofa}, {cats, red, sofa}, {plane, sky}, identical to 0
    # 0 -> 1 (2/4) and 2 (2/4): tie, lower index 1; 4 has the same text as 0, never chosen for 0
    # 3 shares nothing: every Jaccard is 0, the first other caption wins
    assert pairs.jaccard_neighbours(caps).tolist() == [1, 0, 0, 0, 1]


def test_split_images_fractions_and_errors():
    parts = pairs.split_images(100, (0.8, 0.1, 0.1), seed=0)
    assert [len(p) for p in parts] == [80, 10, 10]
    assert len(set(np.concatenate(parts))) == 100
    with pytest.raises(ConfigError, match="sum"):
        pairs.split_images(10, (0.8, 0.5), 0)
    with pytest.raises(ConfigError, match="fewer than 2"):
        pairs.split_images(10, (0.8, 0.1, 0.1), 0)


def test_choose_captions():
    assert pairs.choose_captions([["a"], ["b", "c"]], seed=0)[0] == "a"
    picked = {pairs.choose_captions([["b", "c"]], seed=s)[0] for s in range(20)}
    assert picked == {"b", "c"}
    with pytest.raises(ValueError, match="no caption"):
        pairs.choose_captions([["a"], []], 0)


def test_pair_dataset_items():
    tok = build_tokenizer(["caption", "number"] + [str(i) for i in range(11)], max_length=16)
    images = torch.arange(11 * 3 * 2 * 2, dtype=torch.int64).remainder(256).to(torch.uint8).view(11, 3, 2, 2)
    p = pairs.random_negative_pairs(CAPTIONS, seed=0)
    ds = pairs.PairDataset(p, Split(images, torch.zeros(11, dtype=torch.long), key="ramp"), {"student": tok})
    item = ds[3]
    j = p.image_index[3]
    assert torch.equal(item["image"], images[j].float() / 255)
    assert item["label"] == float(p.labels[3]) and item["index"] == 3
    ids = item["student_ids"][item["student_mask"].bool()].tolist()
    assert tok.decode(ids, skip_special_tokens=True) == p.captions[3]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 2, 2) and batch["student_ids"].shape[0] == 4
    with pytest.raises(ValueError, match="indexes image 10 of 10"):
        pairs.PairDataset(p, Split(images[:10], torch.zeros(10, dtype=torch.long), key="short"), {})


def test_synthworld_data_tiny():
    cfg = load_profile("tiny", n_target_train=40, n_target_val=20, n_target_test=40)
    study = pairs.synthworld_data(cfg)
    assert set(study.splits) == set(study.pairs) == {"train", "val", "test", "test_hard"}
    images, hard, rnd = study.splits["test_hard"], study.pairs["test_hard"], study.pairs["test"]
    assert images is study.splits["test"] and study.name == "SynthWorld target task" and study.num_classes > 1
    assert images.images.shape == (40, 3, 32, 32) and images.images.dtype == torch.uint8
    assert np.array_equal(hard.labels, rnd.labels) and np.array_equal(hard.image_index, rnd.image_index)
    assert hard.summary()["kinds"] == {"match": 20, "background": 5, "color": 5, "position": 5, "shape": 5}
    from kdutils.pretrain import SynthData

    batch = SynthData.of(cfg).split("target_test")
    for i, cap, kind in zip(hard.image_index, hard.captions, hard.kind):
        assert cap == (batch.captions[i] if kind == "match" else batch.hard_negatives[i][kind])


def test_coco_data_from_fixture(tmp_path):
    fx = write_coco_captions(tmp_path, n_images=20, captions_per_image=3, seed=1)
    records = coco_captions(fx["annotations_file"], fx["image_dir"])
    study = pairs.coco_data(records, image_size=16, fractions=(0.6, 0.2, 0.2))
    files, train = study.splits["train"], study.pairs["train"]
    assert len(files) == 12 and len(train) == 12 and train.labels.sum() == 6
    image, label, _ = files[0]
    assert files.lazy and image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == -1
    assert files.captions[0] in records[[r.path for r in records].index(Path(files.source.paths[0]))].captions
    hard_files, hard = study.splits["test_hard"], study.pairs["test_hard"]
    assert hard_files is study.splits["test"] and study.name == "MS-COCO captions" and study.class_names == []
    assert hard.summary()["kinds"] == {"match": 2, "jaccard": 2}
    # the fixture's captions end in "#<image id>.": a positive names its image, a near miss another test image
    test_ids = {int(Path(f).stem) for f in hard_files.source.paths}
    for i, cap, y in zip(hard.image_index, hard.captions, hard.labels):
        named = int(cap.rsplit("#", 1)[1].rstrip("."))
        assert (named == int(Path(hard_files.source.paths[i]).stem)) == bool(y) and named in test_ids
    small = pairs.coco_data(records, image_size=16, fractions=(0.6, 0.2, 0.2), max_images=10)
    assert sum(len(p) for role, p in small.pairs.items() if role != "test_hard") == 10
