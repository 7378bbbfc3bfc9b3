"""The live distillation panel of study 4: the callback's values, its memory per seed, the debounce."""

import time
from dataclasses import replace

import pytest
import torch

from kdutils import live, tlkd
from kdutils.tlkd_features import HeadInputs


def cached_split(n, seed, views, separation):
    """Features of 4 classes, class means `separation` apart: a teacher sees them clearer than a student."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(99)) * separation  # shared by the splits
    features = centres[labels] + torch.randn(views, n, 16, generator=g)
    return features, labels


@pytest.fixture(scope="module")
def study():
    student, teacher, labels = {}, {}, {}
    for k, (split, n, views) in enumerate((("train", 96, 2), ("val", 40, 1), ("test", 60, 1))):
        s_feat, labels[split] = cached_split(n, seed=k, views=views, separation=0.6)
        t_feat, _ = cached_split(n, seed=k, views=views, separation=2.0)
        student[split], teacher[split] = HeadInputs.cached(s_feat), HeadInputs.cached(t_feat)
    hp = tlkd.HeadParams(replace(tlkd.THESIS_RECIPE, epochs=6, patience=3), batch_size=32)
    return student, teacher, labels, hp


def test_live_accuracy_is_the_h1_tl_kd_head(study):
    student, teacher, labels, hp = study
    lab = live.LiveDistillation(student, teacher, labels, hp, num_classes=4)
    got = lab.accuracy(temperature=4, alpha=0.7, seed=3)
    ref = tlkd.tl_vs_kd(student, teacher, labels, replace(hp, temperature=4.0), alpha=0.7, seeds=[3],
                        num_classes=4)[3]
    assert got["TL+KD"] == ref["kd"]["accuracy"]
    assert got["TL"] == ref["tl"]["accuracy"]
    assert got["teacher"] == ref["teacher"]["accuracy"]
    assert got["teacher"] > got["TL"]  # the teacher's features are the clearer ones


def test_references_train_once_per_seed(study, monkeypatch):
    student, teacher, labels, hp = study
    lab = live.LiveDistillation(student, teacher, labels, hp, num_classes=4)
    trained = []
    original = tlkd.train_head
    monkeypatch.setattr(tlkd, "train_head", lambda *a, **k: trained.append(k["seed"]) or original(*a, **k))
    first = lab.accuracy(10, 0.1, seed=0)
    again = lab.accuracy(10, 0.1, seed=0)
    assert trained == [0, 0, 0, 0]  # teacher, TL, TL+KD; then TL+KD alone
    assert first["TL+KD"] == again["TL+KD"]  # seeded: the same head twice
    lab.accuracy(10, 0.1, seed=1)
    assert trained[4:] == [1, 1, 1]
    alphas = {a: lab.accuracy(10, a, seed=0)["TL+KD"] for a in (0.0, 1.0)}
    assert alphas[0.0] == first["TL"]  # alpha = 0 is TL
    with pytest.raises(ValueError, match="alpha"):
        lab.accuracy(10, 1.5, seed=0)


def test_panel_debounces_slider_moves_into_one_retrain(study):
    student, teacher, labels, hp = study
    lab = live.LiveDistillation(student, teacher, labels, hp, num_classes=4)
    calls = []
    original = lab.accuracy
    lab.accuracy = lambda *args: calls.append(args) or original(*args)
    box, state = live.panel(lab, temperature=10, alpha=0.1, seed=0, wait_s=0.2)
    assert state.startswith("T = 10, alpha = 0.10, seed 0: TL+KD ") and "teacher" in state
    alpha = box.children[0].children[1]
    for value in (0.3, 0.5, 0.9):  # a burst of moves
        alpha.value = value
    deadline = time.time() + 10
    label = box.children[1]
    while "alpha = 0.90" not in label.value and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert calls == [(10, 0.1, 0), (10, 0.9, 0)]
    expected = live.describe(10, 0.9, 0, original(10, 0.9, 0))
    assert label.value.split("  (")[0] == expected.split("  (")[0]
    assert "TL+KD" in box.children[2].value and "%" in box.children[2].value
