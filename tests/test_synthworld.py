"""SynthWorld: determinism, ground truth that matches the pixels, and text that matches both."""

import difflib

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from kdutils import synthworld as sw  # noqa: E402
from kdutils.errors import ConfigError  # noqa: E402

CLEAN = sw.WorldConfig(noise=0.0, distractors=0.0, occlusion=0.0)


@pytest.fixture(scope="module")
def target():
    return sw.generate("target", 600, seed=3)


@pytest.fixture(scope="module")
def source():
    return sw.generate("source", 3000, seed=4)


def test_same_seed_same_batch_and_different_seed_differs():
    a, b = sw.generate("source", 50, 11), sw.generate("source", 50, 11)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.labels, b.labels)
    assert a.captions == b.captions and a.hard_negatives == b.hard_negatives
    c = sw.generate("source", 50, 12)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.labels, c.labels)
    d = sw.generate("target", 50, 11)
    assert not np.array_equal(a.images, d.images)


@pytest.mark.parametrize("task,n_classes", [("target", 10), ("source", 60)])
def test_shapes_and_dtypes(task, n_classes):
    b = sw.generate(task, 20, 0, sw.WorldConfig(size=48))
    assert b.images.shape == (20, 48, 48, 3) and b.images.dtype == np.uint8
    assert b.masks.shape == (20, 48, 48) and b.masks.dtype == bool
    assert b.labels.shape == (20,) and b.labels.dtype == np.int64
    assert len(b.class_names) == n_classes and b.labels.max() < n_classes
    assert len(b.captions) == len(b.hard_negatives) == 20
    assert all(len(v) == 20 for v in b.attributes.values())


def test_every_mask_is_non_empty(target, source):
    assert target.masks.sum((1, 2)).min() > 0
    assert source.masks.sum((1, 2)).min() > 0


def test_mask_pixels_have_the_recorded_colour_and_plain_backgrounds_the_base_colour():
    b = sw.generate("target", 400, 1, CLEAN)
    expected_fg = (b.attributes["color_rgb"] * 255 + 0.5).astype(np.uint8)
    plain = sw.BACKGROUNDS.index("plain")
    n_plain = 0
    for i in range(len(b)):
        assert (b.images[i][b.masks[i]] == expected_fg[i]).all()
        if b.attributes["background"][i] == plain:
            base = (np.array(sw.BG_COLORS[b.describe(i)["bg_color"]]) * 255 + 0.5).astype(np.uint8)
            assert (b.images[i][~b.masks[i]] == base).all()
            n_plain += 1
    assert n_plain > 10


def test_mask_area_grows_with_the_size_attribute():
    b = sw.generate("target", 900, 2, CLEAN)
    area = b.masks.sum((1, 2))
    means = [area[b.attributes["size"] == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]


def test_mask_centroid_agrees_with_the_position_words():
    b = sw.generate("target", 600, 6, CLEAN)
    rows, cols = np.indices(b.masks.shape[1:])
    area = b.masks.sum((1, 2))
    cy = (b.masks * rows).sum((1, 2)) / area - 15.5
    cx = (b.masks * cols).sum((1, 2)) / area - 15.5
    names = [sw.POSITIONS[k] for k in b.attributes["position"]]
    left = np.array(["left" in p for p in names])
    right = np.array(["right" in p for p in names])
    upper = np.array(["upper" in p for p in names])
    lower = np.array(["lower" in p for p in names])
    assert min(left.sum(), right.sum(), upper.sum(), lower.sum()) > 30
    assert cx[left].mean() < -2 < 2 < cx[right].mean()
    assert cy[upper].mean() < -2 < 2 < cy[lower].mean()  # rows grow downwards


def test_occlusion_only_removes_pixels_and_never_more_than_half():
    free = sw.generate("target", 300, 8, sw.WorldConfig(noise=0.0, occlusion=0.0))
    hidden = sw.generate("target", 300, 8, sw.WorldConfig(noise=0.0, occlusion=1.0))
    occ = hidden.attributes["occluded"]
    assert occ.mean() > 0.5
    assert not (hidden.masks & ~free.masks).any()
    lost = (free.masks & ~hidden.masks).sum((1, 2))
    assert (lost[occ] > 0).all() and (lost[~occ] == 0).all()
    assert (hidden.masks.sum((1, 2)) * 2 >= free.masks.sum((1, 2))).all()


def test_labels_and_captions_follow_the_attributes(target, source):
    for b in (target, source):
        for i in range(0, len(b), 7):
            named = b.describe(i)
            assert b.class_names[b.labels[i]] == sw.object_phrase(named["shape"], named.get("modifier"))
            caption = sw.words(b.captions[i])
            for attr in ("shape", "color", "size", "position", "background", "bg_color"):
                assert set(sw.words(named[attr])) <= set(caption), (attr, b.captions[i])
    assert [target.class_names[k] for k in target.labels[:20]] == \
        [sw.SHAPES[k] for k in target.attributes["shape"][:20]]
    assert (source.attributes["modifier"] >= 0).all()  # never the plain shape


def test_source_and_target_label_sets_are_disjoint():
    assert len(sw.SOURCE_CLASSES) >= 50 and len(set(sw.SOURCE_CLASSES)) == len(sw.SOURCE_CLASSES)
    assert not set(sw.TARGET_CLASSES) & set(sw.SOURCE_CLASSES)
    assert sw.class_prompts("target")[3] == "This is an image of a star."
    assert sw.class_prompts("target")[sw.SHAPES.index("arrow")] == "This is an image of an arrow."


def test_context_p_controls_home_backgrounds():
    always = sw.generate("target", 500, 9, sw.WorldConfig(context_p=1.0))
    home = np.array([sw.BACKGROUNDS.index(sw.HOME_BACKGROUND[s]) for s in sw.SHAPES])
    assert np.array_equal(always.attributes["background"], home[always.attributes["shape"]])
    never = sw.generate("target", 2000, 9, sw.WorldConfig(context_p=0.0))
    freq = np.bincount(never.attributes["background"], minlength=10) / 2000
    assert np.abs(freq - 0.1).max() < 0.03
    at_home = never.attributes["background"] == home[never.attributes["shape"]]
    assert abs(at_home.mean() - 0.1) < 0.03
    default = sw.generate("target", 2000, 9)
    at_home = default.attributes["background"] == home[default.attributes["shape"]]
    assert abs(at_home.mean() - (0.5 + 0.5 * 0.1)) < 0.04


def _attribute_words(attr):
    values = sw.ATTRIBUTE_VALUES[attr] if attr not in ("shape", "modifier") else sw.SOURCE_CLASSES
    return {w for v in values for w in sw.words(v)}


def test_hard_negatives_change_exactly_one_attribute(target, source):
    for b, attrs in ((target, sw.NEGATIVE_ATTRIBUTES),
                     (source, sw.NEGATIVE_ATTRIBUTES + ("modifier",))):
        for i in range(0, len(b), 13):
            named, true = b.describe(i), sw.words(b.captions[i])
            prefix = bool(b.attributes["prompt_prefix"][i])
            assert set(b.hard_negatives[i]) == set(attrs)
            for attr, negative in b.hard_negatives[i].items():
                # It is the true caption with this one attribute set to another value...
                rebuilt = [v for v in sw.ATTRIBUTE_VALUES[attr] if v != named[attr]
                           and sw.make_caption(dict(named, **{attr: v}), prefix) == negative]
                assert len(rebuilt) == 1, (attr, b.captions[i], negative)
                # ...and, word by word, only that attribute's words differ.
                neg = sw.words(negative)
                ops = difflib.SequenceMatcher(a=true, b=neg, autojunk=False).get_opcodes()
                changed = [(true[i1:i2], neg[j1:j2]) for tag, i1, i2, j1, j2 in ops if tag != "equal"]
                assert changed, (attr, negative)
                for old_words, new_words in changed:
                    assert set(old_words + new_words) <= _attribute_words(attr), (attr, negative)


def test_source_captions_cover_every_target_word(source, target):
    source_words = {w for c in source.captions for w in sw.words(c)}
    target_words = {w for c in target.captions for w in sw.words(c)}
    target_words |= {w for p in sw.class_prompts("target") for w in sw.words(p)}
    assert target_words <= source_words, target_words - source_words
    any_text = source_words | target_words
    any_text |= {w for negs in source.hard_negatives[:200] for c in negs.values() for w in sw.words(c)}
    assert any_text <= set(sw.vocabulary())
    assert sw.vocabulary() == sorted(set(sw.vocabulary()))
    assert 0.4 < source.attributes["prompt_prefix"].mean() < 0.6


def test_bad_arguments_raise_config_errors():
    with pytest.raises(ConfigError):
        sw.generate("imagenet", 4, 0)
    with pytest.raises(ConfigError):
        sw.WorldConfig(context_p=1.5)
    with pytest.raises(ConfigError):
        sw.WorldConfig(scale_range=(0.3, 0.1))


def test_preview_has_titles_and_mask_outlines():
    import matplotlib.pyplot as plt

    from kdutils.plots import synthworld_preview
    fig = synthworld_preview(sw.generate("source", 6, 0), n=6, ncols=3)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 6 and fig._suptitle is not None
    assert all(ax.collections for ax in titled)  # the contour of each mask
    plt.close(fig)
