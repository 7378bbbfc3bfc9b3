"""Study 1's machinery: data items, frozen features (cached = computed), teachers, students, ablations."""

import pytest
import torch
from conftest import fail_if_recomputed
from torch import nn

from kdutils import selfdistill as sd
from kdutils import selfdistill_analysis as s1an
from kdutils import selfdistill_features as s1feat
from kdutils import selfdistill_data as s1data
from kdutils import synthworld as sw
from kdutils.splits import Split, StudyData
from kdutils import selfdistill_encoders as s1enc
from benchmarks import selfdistill as bench_selfdistill
from kdutils.errors import ConfigError
from kdutils.frozen import FixedViews, ViewTargets
from kdutils.models import small_resnet
from kdutils.profiles import load_profile


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _cfg(**kw):
    return load_profile("tiny", progress=False, **kw)


def _data(n=48, classes=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    return Split(images, labels, key=f"random-{n}-{seed}")


def _encoder(seed=0):
    torch.manual_seed(seed)
    return s1enc.ImageEncoder("resnet", "small_resnet", small_resnet("resnet_xs"),
                           {"kind": "small_resnet", "arch": "resnet_xs"}, "test encoder")


KEY = {"data": "unit-test"}
CACHE_MB = 64  # every test split fits: its features are cached in memory and on disk


# ----------------------------------------------------------------------------- data and text

def test_prompt_follows_the_thesis_template_with_the_right_article():
    assert sw.prompt("cat") == "This is an image of a cat."
    assert sw.prompt("aquarium_fish") == "This is an image of an aquarium fish."
    assert sw.prompt("Egyptian cat") == "This is an image of an Egyptian cat."


def test_mirror_text_swaps_left_and_right_only_as_words():
    cap = "a small red star in the upper left on a striped blue background"
    assert s1data.mirror_text(cap) == "a small red star in the upper right on a striped blue background"
    assert s1data.mirror_text("center right, lower left") == "center left, lower right"
    assert s1data.mirror_text("leftover brightness") == "leftover brightness"


def test_indexed_items_and_subsets_keep_the_index_into_the_split():
    data = _data(n=10, classes=2)
    image, label, index = data[7]
    assert image.dtype == torch.uint8 and int(label) == 1 and index == 7
    sub = torch.utils.data.Subset(data, [7, 2, 5])
    assert s1data.labels_of(sub).tolist() == [1, 0, 1]
    assert s1data.indices_of(sub).tolist() == [7, 2, 5]
    assert sub[1][2] == 2
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 3, 4, 4), torch.zeros(2), key="float")


def test_few_shot_indices_are_k_per_class_nested_and_fixed():
    labels = torch.tensor([0, 1, 2] * 20)
    one, five = s1an.few_shot_indices(labels, 1), s1an.few_shot_indices(labels, 5)
    assert torch.bincount(labels[five]).tolist() == [5, 5, 5]
    assert torch.bincount(labels[one]).tolist() == [1, 1, 1]
    assert set(one.tolist()) <= set(five.tolist())
    assert torch.equal(five, s1an.few_shot_indices(labels, 5))
    with pytest.raises(ConfigError, match="fewer than k=21"):
        s1an.few_shot_indices(labels, 21)


def test_synthworld_data_matches_the_shared_splits():
    cfg = _cfg()
    data = s1data.load_data(cfg, "synthworld")
    assert data.num_classes == 10 and data.name == "SynthWorld target task"
    assert sw.prompt(data.class_names[3]) == "This is an image of a star."
    assert len(data.splits["train"]) == cfg.n_target_train and len(data.splits["test"].captions) == cfg.n_target_test
    from kdutils.pretrain import SynthData
    batch = SynthData.of(cfg).split("target_val")
    assert torch.equal(data.splits["val"].images[5].permute(1, 2, 0), torch.from_numpy(batch.images[5]))
    assert data.splits["val"].captions[5] == batch.captions[5]


# ----------------------------------------------------------------------------- frozen features

def test_cached_features_equal_the_encoder_computed_per_batch(cache):
    data, enc = _data(), _encoder()
    cached = s1feat.FrozenFeatures(enc, data, KEY, "train", FixedViews.mirrored(len(data)), "cpu", cache_mb=CACHE_MB)
    streamed = s1feat.FrozenFeatures(enc, data, KEY, "train", FixedViews.mirrored(len(data)), "cpu", cache_mb=0)
    assert cached.in_memory and not streamed.in_memory
    images, _, index = next(iter(torch.utils.data.DataLoader(data, batch_size=16)))
    view = torch.tensor([0, 1] * 8)
    t1, p1 = cached(images, index, view)
    t2, p2 = streamed(images, index, view)
    torch.testing.assert_close(t1, t2, rtol=2e-3, atol=2e-3)  # tokens are stored in float16
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-5)
    # the flipped view is the encoder applied to the mirrored image
    x = images[1:2].float() / 255
    torch.testing.assert_close(p1[1:2], enc(x.flip(-1))[1], rtol=1e-5, atol=1e-5)
    # pooled = mean of the ResNet's tokens (its global average pool)
    torch.testing.assert_close(p1, t2.mean(1), rtol=1e-5, atol=1e-5)
    assert t1.shape == (16, cached.num_tokens, cached.token_dim)


def test_features_are_cached_on_disk_by_encoder_and_data(cache, monkeypatch):
    data, enc = _data(), _encoder()
    a = s1feat.FrozenFeatures(enc, data, KEY, "train", FixedViews.plain(len(data)), "cpu", cache_mb=CACHE_MB)
    assert len(list((cache / "s1-features").glob("*.pt"))) == 1
    with monkeypatch.context() as patch:
        patch.setattr(s1feat.FrozenFeatures, "_extract", fail_if_recomputed)  # (one image still sizes the tokens)
        b = s1feat.FrozenFeatures(enc, data, KEY, "train", FixedViews.plain(len(data)), "cpu", cache_mb=CACHE_MB)
    assert torch.equal(a.tokens, b.tokens)
    s1feat.FrozenFeatures(_encoder(seed=1), data, KEY, "train", FixedViews.plain(len(data)), "cpu", cache_mb=CACHE_MB)
    assert len(list((cache / "s1-features").glob("*.pt"))) == 2


# ----------------------------------------------------------------------------- teachers

def _queries(classes=4, dim=6, seed=0):
    return torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed))


def test_teacher_modes_are_the_heads_two_uses(cache):
    data, enc = _data(), _encoder()
    feats = s1feat.FrozenFeatures(enc, data, KEY, "train", FixedViews.plain(len(data)), "cpu", cache_mb=CACHE_MB)
    q = _queries()
    teacher, _ = sd.fit_teacher("prompt", feats, data, sd.HeadRecipe.of(_cfg()), seed=0, num_classes=4, class_queries=q)
    own, labels = sd.head_logits_and_labels(teacher, feats, data, "prompt")
    free, _ = sd.head_logits_and_labels(teacher, feats, data, "label_free")
    tokens = feats.tokens[0].float()
    torch.testing.assert_close(own, teacher.module.own_prompt_logits(tokens, q[labels]))
    torch.testing.assert_close(free, teacher.module.class_scores(tokens, q))
    # label-free score of class c = the logit c of the head queried with prompt c
    torch.testing.assert_close(free[:, 2], teacher.module.own_prompt_logits(tokens, q[2].expand(len(tokens), -1))[:, 2])
    linear, _ = sd.fit_teacher("linear", feats, data, sd.HeadRecipe.of(_cfg()), seed=0, num_classes=4)
    with pytest.raises(ValueError, match="no prompts"):
        sd.head_logits_and_labels(linear, feats, data, "label_free")
    with pytest.raises(ValueError, match="'linear' head is evaluated as trained or 'label_free', not 'prompt'"):
        sd.head_logits_and_labels(linear, feats, data, "prompt")


def test_teacher_training_learns_separable_features(cache):
    """Tokens that spell the class out: the label-free head and the linear teacher both learn them."""
    n, classes = 200, 4
    labels = torch.arange(n) % classes
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    data = Split(images, labels, key="zeros")
    feats = s1feat.FrozenFeatures(_encoder(), data, KEY, "train", FixedViews.plain(len(data)), "cpu", cache_mb=CACHE_MB)
    torch.manual_seed(0)
    tokens = torch.randn(1, n, feats.num_tokens, feats.token_dim) * 0.1
    tokens[0, torch.arange(n), labels % feats.num_tokens, labels] += 3.0
    feats.targets = ViewTargets(table=(tokens.half(), tokens.mean(2)))
    feats.key = {"test": "separable"}
    cfg = _cfg(s1_head_epochs=40, s1_head_lr=1e-2, batch_size=50)
    for mode in ("label_free", "linear"):
        teacher, history = sd.fit_teacher(mode, feats, data, sd.HeadRecipe.of(cfg), seed=0, num_classes=classes,
                                          class_queries=_queries(classes, 6) if mode != "linear" else None)
        logits, y = sd.head_logits_and_labels(teacher, feats, data)
        assert s1an.topk(logits, y)["top1"] > 95, mode
        assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


def test_soft_targets_hold_the_teachers_logits_per_view_and_only_for_the_subset(cache, monkeypatch):
    data, enc = _data(), _encoder()
    feats = s1feat.FrozenFeatures(enc, data, KEY, "train", FixedViews.mirrored(len(data)), "cpu", cache_mb=CACHE_MB)
    q = _queries()
    sub = torch.utils.data.Subset(data, [1, 4, 9, 30])
    teacher, _ = sd.fit_teacher("label_free", feats, sub, sd.HeadRecipe.of(_cfg()), seed=0, num_classes=4,
                                class_queries=q)
    targets = sd.soft_targets(teacher, feats, sub)
    assert targets.shape == (2, len(data), 4) and targets.dtype == torch.float16
    for v in (0, 1):
        expected, _ = sd.head_logits_and_labels(teacher, feats, sub, view=v)
        torch.testing.assert_close(targets[v, [1, 4, 9, 30]].float(), expected, rtol=2e-3, atol=2e-3)
    assert targets[:, 0].abs().sum() == 0  # not in the subset
    assert not torch.equal(targets[0, [1, 4]], targets[1, [1, 4]])  # the flipped view differs
    monkeypatch.setattr(sd, "head_logits_and_labels", fail_if_recomputed)
    assert torch.equal(sd.soft_targets(teacher, feats, sub), targets)  # read from the cache


def test_caption_teacher_reads_each_images_own_query(cache):
    data, enc = _data(n=16), _encoder()
    feats = s1feat.FrozenFeatures(enc, data, KEY, "train", FixedViews.plain(len(data)), "cpu", cache_mb=CACHE_MB)
    q = _queries()
    table = torch.randn(1, 16, 6)
    teacher, _ = sd.fit_teacher("caption", feats, data, sd.HeadRecipe.of(_cfg()), seed=0, num_classes=4,
                                class_queries=q, caption_table=table)
    own, _ = sd.head_logits_and_labels(teacher, feats, data, "caption", table)
    torch.testing.assert_close(own, teacher.module.own_prompt_logits(feats.tokens[0].float(), table[0]))


# ----------------------------------------------------------------------------- students

SPEC = {"kind": "small_resnet", "arch": "resnet_xs"}


def test_soft_cross_entropy_on_one_hot_targets_trains_exactly_like_cross_entropy(cache):
    data = _data()
    recipe = sd.SelfDistillStudentRecipe.of(_cfg(s1_student_epochs=2, batch_size=16))
    one_hot = torch.zeros(2, len(data), 4, dtype=torch.float16)
    one_hot[:, torch.arange(len(data)), data.labels] = 100.0  # softmax is exactly one-hot
    a, ha = sd.fit_student(SPEC, data, recipe, data_key=KEY, seed=3, num_classes=4, device="cpu")
    b, hb = sd.fit_student(SPEC, data, recipe, data_key=KEY, seed=3, num_classes=4, device="cpu",
                           targets=one_hot)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    assert ha.series("train_loss") == pytest.approx(hb.series("train_loss"), rel=1e-5)


def _no_training(*args, **kwargs):
    raise AssertionError("trained again: the finished checkpoint was not reused")


def test_student_training_is_seeded_and_checkpointed(cache, monkeypatch):
    data = _data()
    recipe = sd.SelfDistillStudentRecipe.of(_cfg(s1_student_epochs=1, batch_size=16))
    targets = torch.randn(2, len(data), 4).half()
    a, _ = sd.fit_student(SPEC, data, recipe, data_key=KEY, seed=0, num_classes=4, device="cpu",
                          targets=targets, val_set=data)
    files = list((cache / "s1" / "students").glob("*.pt"))
    assert len(files) == 1
    with monkeypatch.context() as m:
        m.setattr(torch.amp.GradScaler, "step", _no_training)  # every optimisation step of fit goes through it
        b, hist = sd.fit_student(SPEC, data, recipe, data_key=KEY, seed=0, num_classes=4,
                                 device="cpu", targets=targets, val_set=data)
    assert "val_top1" in hist.epochs[0]
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    files[0].unlink()  # retrain from scratch: same seed, same numbers
    c, _ = sd.fit_student(SPEC, data, recipe, data_key=KEY, seed=0, num_classes=4, device="cpu",
                          targets=targets, val_set=data)
    la, _ = sd.student_logits(a, data, "cpu")
    lc, _ = sd.student_logits(c, data, "cpu")
    assert torch.equal(la, lc)


def test_student_targets_are_its_logits_in_both_views():
    data = _data(n=12)
    torch.manual_seed(0)
    student = s1enc.Student(SPEC, 4).eval()
    t = sd.student_targets(student, data, "cpu")
    x = data.images.float() / 255
    with torch.no_grad():
        torch.testing.assert_close(t[0].float(), student(x), rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(t[1].float(), student(x.flip(-1)), rtol=2e-3, atol=2e-3)


def test_students_copy_the_encoders_architecture_fresh():
    from transformers import CLIPVisionConfig

    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=16, patch_size=8).to_dict()
    spec = {"kind": "clip_vision", "config": {k: vc[k] for k in ("hidden_size", "intermediate_size",
                                                                 "num_hidden_layers", "num_attention_heads",
                                                                 "image_size", "patch_size")}}
    x = torch.rand(2, 3, 32, 32)
    vit = s1enc.Student(spec, 7)
    assert vit(x).shape == (2, 7) and vit.features(x).shape == (2, 32)
    res = s1enc.Student({"kind": "torchvision_resnet", "arch": "resnet18", "input_size": 32}, 5)
    assert res(x).shape == (2, 5) and res.features(x).shape == (2, 512)
    small = s1enc.Student(SPEC, 3)
    assert small(x).shape == (2, 3) and small.fc.in_features == 64
    with pytest.raises(ConfigError, match="unknown student kind"):
        s1enc.Student({"kind": "mlp"}, 3)


def test_torchvision_resnet_encoder_tokens_are_the_last_feature_map():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    enc = s1enc.ImageEncoder("r18", "torchvision_resnet", net, {}, "test")
    x = torch.rand(2, 3, 64, 64)
    tokens, pooled = enc(x)
    assert tokens.shape == (2, 4, 512)
    with torch.no_grad():
        net.fc = nn.Identity()
        torch.testing.assert_close(pooled, net(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- ablations

def test_retrieval_projection_recovers_a_linear_image_text_map(cache):
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    train_img, test_img = torch.randn(600, 16), torch.randn(50, 16)
    recalls = s1an.retrieval_recalls(train_img, train_img @ w, test_img, test_img @ w, epochs=60, seed=0, gallery=50,
                                   device="cpu")
    assert set(recalls) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert recalls["i2t_r1"] > 90 and recalls["t2i_r1"] > 90
    noise = s1an.retrieval_recalls(train_img, torch.randn(600, 8), test_img, torch.randn(50, 8), epochs=60, seed=0,
                                 gallery=50, device="cpu")
    assert noise["i2t_r1"] < 20 and noise["i2t_r10"] < 50


def test_attention_maps_are_distributions_over_the_image_tokens(cache):
    data, enc = _data(), _encoder()
    feats = s1feat.FrozenFeatures(enc, data, KEY, "train", FixedViews.plain(len(data)), "cpu", cache_mb=CACHE_MB)
    teacher, _ = sd.fit_teacher("prompt", feats, data, sd.HeadRecipe.of(_cfg()), seed=0, num_classes=4,
                                class_queries=_queries())
    for mode in ("prompt", "label_free"):
        weights, labels, predicted = s1an.attention_maps(teacher, feats, data, [0, 5, 6], mode)
        assert weights.shape == (3, feats.num_tokens)
        torch.testing.assert_close(weights.sum(1), torch.ones(3))
        assert labels.tolist() == [0, 1, 2] and predicted.shape == (3,)


def test_paper_requirements_list_every_download(tmp_path):
    cfg = load_profile("paper", data_root=str(tmp_path / "data"), weights_root=str(tmp_path / "w"))
    req = s1data.paper_requirements(cfg)
    paths = {str(p) for p, _ in req.values()}
    assert str(tmp_path / "data" / "cifar-10-batches-py") in paths
    assert str(tmp_path / "data" / "cifar-100-python") in paths
    assert str(tmp_path / "data" / "imagenet" / "val") in paths
    assert str(tmp_path / "w" / "openai" / "clip-vit-base-patch16") in paths
    assert str(tmp_path / "w" / "roberta-base") in paths
    assert str(tmp_path / "w" / "Salesforce" / "blip-image-captioning-base") in paths
    assert any("resnet50" in what for what in req)
    assert all(how for _, how in req.values())
    dry = s1data.paper_requirements(cfg.replace(dry_run=True, s1_captions=False))
    assert not any("resnet50" in what or "captioning" in what for what in dry)


def test_captioning_hook_fails_clearly_without_the_model(tmp_path):
    from kdutils.errors import MissingDataError

    cfg = load_profile("paper", weights_root=str(tmp_path))
    data = StudyData("CIFAR-10", {"train": _data(n=4, classes=1)}, ["cat"], KEY)
    with pytest.raises(MissingDataError, match="captioning model Salesforce/blip-image-captioning-base"):
        s1data.image_captions(data, "train", "cpu", captioner=s1data.Captioner.of(cfg))


def test_small_roberta_is_pretrained_once_and_reads_prompts(cache, monkeypatch):
    cfg = _cfg()
    pretraining = s1enc.TextPretraining.of(cfg)
    enc, summary = s1enc.pretrain_small_roberta(pretraining)
    assert 0 <= summary["masked_word_top1_source_test"] <= 100
    assert summary["hidden"] == cfg.s1_text_hidden
    v = enc.encode(["This is an image of a star.", "This is an image of a heart."])
    assert v.shape == (2, cfg.s1_text_hidden) and not torch.allclose(v[0], v[1])
    monkeypatch.setattr(torch.amp.GradScaler, "step", _no_training)
    enc2, _ = s1enc.pretrain_small_roberta(pretraining)
    assert torch.equal(enc2.encode(["a star"]), enc.encode(["a star"]))


def test_encoders_are_pretrained_with_their_backbone_seed(monkeypatch):
    seen = []

    def fake_source(arch, pretraining, seed=0, **kw):
        seen.append(("resnet", seed))
        return small_resnet(arch), {"source_top1": 50.0}

    def fake_roberta(pretraining, seed=0, **kw):
        seen.append(("roberta", seed))
        raise RuntimeError("stop")

    monkeypatch.setattr(s1enc, "pretrain_source", fake_source)
    monkeypatch.setattr(s1enc, "pretrain_small_roberta", fake_roberta)
    cfg = _cfg(seeds=[0, 1], backbone_seeds=[3, 4])
    zoo = s1enc.Encoders(s1enc.EncoderSources.of(cfg), "cpu", seed=cfg.backbone_seed(1))
    zoo.image("resnet")
    with pytest.raises(RuntimeError, match="stop"):
        zoo.text("roberta")
    assert seen == [("resnet", 4), ("roberta", 4)]
    with pytest.raises(ConfigError, match="backbone_seeds"):  # paper's encoders are downloaded: one set, no seeds
        load_profile("paper", seeds=[0, 1], backbone_seeds=[0, 1])

def test_benchmark_compares_cached_and_streamed_features_on_the_same_run(capsys):
    out = bench_selfdistill.run(n_train=64, epochs=1, paper_n_train=8)
    assert set(out) == {"small", "paper"}
    for scale in out.values():
        assert scale["cached_s"] > 0 and scale["streamed_s"] > 0 and scale["speedup"] == pytest.approx(
            scale["streamed_s"] / scale["cached_s"])
    assert out["small"]["agreement_pct"] >= 90  # float16 storage changes almost no prediction
    printed = capsys.readouterr().out
    assert "resnet50 at 224 px (paper): 8 images" in printed and printed.count("speed-up") == 2
