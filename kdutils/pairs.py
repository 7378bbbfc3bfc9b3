"""Binary image-caption matching data (study 2): which caption goes with which image.

The course paper's recipe, from any list of captioned images: keep one
caption per image, shuffle, split in half; one half keeps its true caption
(label 1), the other half gets the caption of a different image chosen at
random (label 0). Labels are balanced and every image appears once.

Random negatives are easy: the wrong caption usually differs in everything.
The paper names the missing hard negatives as a limitation, so every test
split also has a *hard* twin with the same images, the same halves and the
same positives, where each negative caption is a near miss instead:

* SynthWorld: the image's own caption with exactly one attribute changed
  (shape, colour, position or background; `SynthBatch.hard_negatives`),
  attributes in equal shares, so errors can be read per attribute.
* COCO: the caption of the *most similar other image*, by Jaccard overlap of
  the content words (lower-cased words minus English stop words; ties go to
  the lower index; identical captions are never chosen).

The study's data is one `splits.StudyData` whose `pairs` index the split of
their role ("test_hard" shares the test split). `PairDataset` serves
pairs to PyTorch with the captions tokenized once per model that reads them (a
teacher and a student usually have different tokenizers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .augment import as_float_images
from .errors import ConfigError
from .paths import under
from .splits import Split, StudyData, from_synth, image_files
from .text import tokenize

__all__ = ["PairSet", "choose_captions", "split_halves", "random_negative_pairs", "hard_negative_pairs",
           "attribute_negatives", "jaccard_neighbours", "split_images", "PairDataset", "PAIR_SEED",
           "synthworld_data", "coco_data", "coco_paths", "load_data"]


@dataclass
class PairSet:
    """Image-caption pairs of one `Split`: `image_index` rows into its images, 1 = the caption fits."""

    name: str
    image_index: np.ndarray            # int64 (P,)
    captions: list[str]
    labels: np.ndarray                 # int64 (P,), 1 = match, 0 = mismatch
    kind: list[str] = field(default_factory=list)  # "match", "random", or the hard-negative rule per pair

    def __post_init__(self):
        n = len(self.image_index)
        if not (len(self.captions) == len(self.labels) == len(self.kind) == n):
            raise ValueError(f"PairSet '{self.name}': image_index, captions, labels and kind must have one entry "
                             f"per pair, got {n}, {len(self.captions)}, {len(self.labels)}, {len(self.kind)}.")

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> dict:
        kinds, counts = np.unique(self.kind, return_counts=True)
        return {"pairs": len(self), "positives": int(self.labels.sum()),
                "images": int(len(np.unique(self.image_index))),
                "kinds": {str(k): int(c) for k, c in zip(kinds, counts)}}


def choose_captions(caption_lists: Sequence[Sequence[str]], seed: int) -> list[str]:
    """One caption per image, drawn uniformly (COCO has about five); an image without captions is an error."""
    empty = [i for i, caps in enumerate(caption_lists) if not caps]
    if empty:
        raise ValueError(f"{len(empty)} images have no caption (first: index {empty[0]}); drop them first.")
    rng = np.random.default_rng(seed)
    return [caps[int(rng.integers(len(caps)))] for caps in caption_lists]


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle `n` images and split them in two equal halves: (keep their caption, get another one).

    With an odd `n` the last shuffled image is left out, so labels stay balanced.
    """
    if n < 2:
        raise ValueError(f"need at least 2 images to build matching pairs, got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:2 * half])


def _pairs(name: str, captions: Sequence[str], keep: np.ndarray, swap: np.ndarray, negative_captions: list[str],
           negative_kinds: list[str]) -> PairSet:
    index = np.concatenate([keep, swap]).astype(np.int64)
    labels = np.concatenate([np.ones(len(keep)), np.zeros(len(swap))]).astype(np.int64)
    caps = [captions[i] for i in keep] + list(negative_captions)
    kinds = ["match"] * len(keep) + list(negative_kinds)
    return PairSet(name, index, caps, labels, kinds)


def _text_ids(captions: Sequence[str]) -> np.ndarray:
    """One id per distinct caption text, so that identical captions are never paired as a negative."""
    codes = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    if len(codes) < 2:
        raise ValueError("every caption is the same: there is no other caption to pair with.")
    return np.array([codes[c] for c in captions])


def random_negative_pairs(captions: Sequence[str], seed: int, name: str = "random") -> PairSet:
    """The paper's pairs: half keep their caption, half get the caption of a different image, uniformly.

    The other image is drawn from all images of the split (so the captions of
    both classes come from the same distribution); a caption whose text equals
    the image's own caption is never drawn, so no label-0 pair is secretly true.
    """
    n = len(captions)
    keep, swap = split_halves(n, seed)
    rng = np.random.default_rng([seed, 1])
    text_id = _text_ids(captions)
    other = np.empty(len(swap), dtype=np.int64)
    todo = np.arange(len(swap))
    while len(todo):
        draw = rng.integers(n - 1, size=len(todo))
        draw += draw >= swap[todo]  # uniform over the other n - 1 images
        other[todo] = draw
        todo = todo[text_id[draw] == text_id[swap[todo]]]
    return _pairs(name, captions, keep, swap, [captions[j] for j in other], ["random"] * len(swap))


def hard_negative_pairs(captions: Sequence[str], near_misses: Sequence[str], kinds: Sequence[str], seed: int,
                        name: str = "hard") -> PairSet:
    """Pairs with the same halves as `random_negative_pairs(captions, seed)`, negatives replaced by near misses.

    `near_misses[i]` is the wrong-but-close caption for image i and `kinds[i]`
    the rule that made it (an attribute name, "jaccard"...). Positives are the
    very pairs of the random set, so the two test sets differ only in their
    negatives.
    """
    if len(near_misses) != len(captions) or len(kinds) != len(captions):
        raise ValueError("near_misses and kinds need one entry per image.")
    keep, swap = split_halves(len(captions), seed)
    same = [int(i) for i in swap if near_misses[i] == captions[i]]
    if same:
        raise ValueError(f"the near miss of image {same[0]} is its own caption: it would be a true pair labelled 0.")
    return _pairs(name, captions, keep, swap, [near_misses[i] for i in swap], [kinds[i] for i in swap])


def attribute_negatives(hard_negatives: Sequence[dict], seed: int,
                        balance_over: np.ndarray) -> tuple[list[str], list[str]]:
    """For SynthWorld: one one-attribute-changed caption per image, attributes in equal shares (shuffled).

    `hard_negatives` is `SynthBatch.hard_negatives` (attribute -> caption per
    image). The shares are equal over the images `balance_over`,
    e.g. the half of a split that will get negatives.
    Returns (near-miss captions, the attribute changed in each).
    """
    attributes = sorted(hard_negatives[0])
    n = len(hard_negatives)
    targets = np.asarray(balance_over)
    rng = np.random.default_rng([seed, 2])
    codes = np.zeros(n, dtype=np.int64)
    codes[targets] = rng.permutation(np.resize(np.arange(len(attributes)), len(targets)))
    chosen = [attributes[k] for k in codes]
    return [h[a] for h, a in zip(hard_negatives, chosen)], chosen


def jaccard_neighbours(captions: Sequence[str], chunk: int = 2048) -> np.ndarray:
    """For each caption, the index of the most similar *other* caption by Jaccard overlap of content words.

    Words are lower-cased alphanumeric tokens minus scikit-learn's English stop
    words; captions with identical text never count as neighbours; ties go to
    the lower index. Chunked sparse products keep memory at `chunk` x N.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    n = len(captions)
    if n < 2:
        raise ValueError("need at least 2 captions to find neighbours.")
    vec = CountVectorizer(binary=True, lowercase=True, stop_words="english", token_pattern=r"(?u)\b\w+\b")
    try:
        x = vec.fit_transform(captions).astype(np.float32).tocsr()
    except ValueError:  # every word is a stop word
        words = CountVectorizer(binary=True, token_pattern=r"(?u)\b\w+\b")
        x = words.fit_transform(captions).astype(np.float32).tocsr()
    sizes = np.asarray(x.sum(1)).ravel()
    text_id = _text_ids(captions)
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        inter = (x[rows] @ x.T).toarray()
        union = sizes[rows, None] + sizes[None, :] - inter
        sim = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
        sim[text_id[rows, None] == text_id[None, :]] = -1.0  # itself and identical texts
        out[rows] = sim.argmax(1)
    return out


def split_images(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Shuffle `n` images into disjoint splits with the given fractions (e.g. 0.8, 0.1, 0.1); sorted indices."""
    fractions = np.asarray(fractions, dtype=float)
    if (fractions <= 0).any() or fractions.sum() > 1 + 1e-9:
        raise ConfigError(f"split fractions must be positive and sum to at most 1, got {fractions.tolist()}.")
    order = np.random.default_rng(seed).permutation(n)
    ends = np.floor(np.cumsum(fractions) * n).astype(int)
    starts = np.concatenate([[0], ends[:-1]])
    parts = [np.sort(order[s:e]) for s, e in zip(starts, ends)]
    small = [i for i, p in enumerate(parts) if len(p) < 2]
    if small:
        raise ConfigError(f"split {small[0]} of {n} images with fractions {fractions.tolist()} has fewer than "
                          "2 images; use more images.")
    return parts


class PairDataset(torch.utils.data.Dataset):
    """Items `{"image", "label", "index", "<reader>_ids", "<reader>_mask"...}` for one PairSet.

    `split` holds the images the pairs index (SynthWorld: in memory; COCO:
    decoded from disk); an item's image is float (3, H, W) in [0, 1]. `readers`
    maps a name ("teacher", "student") to a tokenizer: each caption is
    tokenized once per reader here, not per step.
    """

    def __init__(self, pairs: PairSet, split: Split, readers: dict):
        if int(pairs.image_index.max()) >= len(split):
            raise ValueError(f"PairSet '{pairs.name}' indexes image {int(pairs.image_index.max())} of {len(split)}.")
        self.pairs, self.split = pairs, split
        self.tokens = {name: tokenize(tok, pairs.captions) for name, tok in readers.items()}  # once per reader
        self.labels = torch.from_numpy(pairs.labels).float()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        image = as_float_images(self.split[int(self.pairs.image_index[i])][0])
        item = {"image": image, "label": self.labels[i], "index": i}
        for name, tok in self.tokens.items():
            item[f"{name}_ids"], item[f"{name}_mask"] = tok["input_ids"][i], tok["attention_mask"][i]
        return item


# ----------------------------------------------------------------------------- the two sources of pairs

#: Fixed seed of the pair construction: every training seed sees the same pairs, as in the paper.
PAIR_SEED = 2024


def synthworld_data(cfg, seed: int = PAIR_SEED) -> StudyData:
    """SynthWorld target splits and their matching pairs by role: "train", "val", "test", "test_hard".

    "test_hard" shares the test split and positives, with one-attribute-changed
    captions as negatives.
    """
    from .pretrain import SynthData

    data, seeds = SynthData.of(cfg), {"train": seed, "val": seed + 1, "test": seed + 2}
    batches = {role: data.split(f"target_{role}") for role in seeds}
    splits = {role: from_synth(b) for role, b in batches.items()}
    pair_sets = {role: random_negative_pairs(b.captions, seeds[role], name=role) for role, b in batches.items()}
    test, s = batches["test"], seeds["test"]
    near, kinds = attribute_negatives(test.hard_negatives, s, balance_over=split_halves(len(test), s)[1])
    splits["test_hard"] = splits["test"]
    pair_sets["test_hard"] = hard_negative_pairs(test.captions, near, kinds, s, name="test_hard")
    return StudyData("SynthWorld target task", splits, splits["train"].class_names, pairs=pair_sets)


def coco_data(records, image_size: int, fractions=(0.8, 0.1, 0.1), max_images: int = 0,
              seed: int = PAIR_SEED) -> StudyData:
    """COCO captions records (`datasets.coco_captions`) as unlabelled splits by image and their matching pairs.

    Images without captions are dropped; `max_images` > 0 keeps a seeded
    random subset. One caption per image is drawn, then the paper's pairs are
    built inside each split; "test_hard" pairs each negative test image with
    the caption of its Jaccard-nearest other test image.
    """
    records = [r for r in records if r.captions]
    if max_images and len(records) > max_images:
        keep = np.sort(np.random.default_rng([seed, 3]).choice(len(records), max_images, replace=False))
        records = [records[i] for i in keep]
    captions = choose_captions([r.captions for r in records], seed)
    indices = dict(zip(("train", "val", "test"), split_images(len(records), fractions, seed)))
    caps = {role: [captions[i] for i in idx] for role, idx in indices.items()}
    splits = {role: image_files([records[i].path for i in idx], image_size, captions=caps[role])
              for role, idx in indices.items()}
    pair_sets = {role: random_negative_pairs(caps[role], seed + k, name=role) for k, role in enumerate(indices)}
    test = caps["test"]
    splits["test_hard"] = splits["test"]
    pair_sets["test_hard"] = hard_negative_pairs(test, [test[j] for j in jaccard_neighbours(test)],
                                                 ["jaccard"] * len(test), seed + 2, name="test_hard")
    return StudyData("MS-COCO captions", splits, [], pairs=pair_sets)


def coco_paths(cfg) -> tuple[Path, Path]:
    """(annotations file, image folder) of the `paper` profile."""
    root = under(cfg.data_root)
    return root / cfg.s2_coco_annotations, root / cfg.s2_coco_images


def load_data(cfg) -> StudyData:
    """The study's splits and pairs at this profile: SynthWorld (tiny/small) or MS-COCO captions (paper)."""
    if cfg.profile != "paper":
        return synthworld_data(cfg)
    from .datasets import coco_captions

    annotations, images = coco_paths(cfg)
    return coco_data(coco_captions(annotations, images), image_size=cfg.image_size,
                     max_images=cfg.s2_coco_max_images)
