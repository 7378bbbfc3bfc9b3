"""Metrics checked against hand-counted confusion matrices (all rates in %)."""

import numpy as np
import pytest
import torch

from kdutils import metrics as M

# 3-class example, counted by hand:
#            pred 0  pred 1  pred 2
# true 0        2       1       1
# true 1        1       1       0
# true 2        0       0       3
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 0, 2, 2, 2]
CM = np.array([[2, 1, 1], [1, 1, 0], [0, 0, 3]])


def test_confusion_hand_counted():
    cm = M.confusion(Y_TRUE, Y_PRED, 3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, CM)
    # absent classes still get rows/columns
    np.testing.assert_array_equal(M.confusion([0, 1], [1, 1], 4), [[0, 1, 0, 0], [0, 1, 0, 0], [0] * 4, [0] * 4])
    with pytest.raises(ValueError, match="num_classes"):
        M.confusion([0, 3], [0, 1], 3)


def test_accuracy():
    assert M.accuracy(Y_TRUE, Y_PRED) == pytest.approx(100 * 6 / 9)
    scores = np.eye(3)[Y_PRED] * 2.0  # (N, C) scores reduce by argmax
    assert M.accuracy(Y_TRUE, scores) == pytest.approx(100 * 6 / 9)
    with pytest.raises(ValueError, match="same length"):
        M.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="non-integer"):
        M.accuracy([0, 1], [0.2, 0.9])


def test_macro_report_by_hand():
    # precision per class (column): 2/3, 1/2, 3/4; recall (row): 2/4, 1/2, 3/3
    # F1 per class: 4/7, 1/2, 6/7
    r = M.classification_report(Y_TRUE, Y_PRED)
    assert set(r) == {"accuracy", "precision", "recall", "f1"}
    assert r["accuracy"] == pytest.approx(100 * 6 / 9)
    assert r["precision"] == pytest.approx(100 * 23 / 36)
    assert r["recall"] == pytest.approx(100 * 2 / 3)
    assert r["f1"] == pytest.approx(100 * 9 / 14)


def test_report_zero_division_is_zero():
    # only class 0 is predicted: precision 1/3, 0, 0 -> macro 1/9; recall 1, 0, 0 -> 1/3
    r = M.classification_report([0, 1, 2], [0, 0, 0])
    assert r["precision"] == pytest.approx(100 / 9)
    assert r["recall"] == pytest.approx(100 / 3)
    assert r["f1"] == pytest.approx(100 * (0.5 / 3))


def test_topk_accuracy():
    s = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])
    y = [2, 0, 1, 0]
    assert M.topk_accuracy(s, y, 1) == pytest.approx(25.0)
    # top-2 of row 3 is {2, 0}: the tie 0.3/0.3 goes to the lower index
    assert M.topk_accuracy(s, y, 2) == pytest.approx(50.0)
    assert M.topk_accuracy(s, y, 3) == pytest.approx(100.0)
    assert M.topk_accuracy(s, y, 5) == pytest.approx(100.0)  # k clamped to C
    assert M.topk_accuracy(torch.tensor(s), torch.tensor(y), 1) == pytest.approx(25.0)
    with pytest.raises(ValueError, match="k must be"):
        M.topk_accuracy(s, y, 0)
    with pytest.raises(ValueError, match="rows"):
        M.topk_accuracy(s, y[:3], 1)


def test_binary_report_hand():
    y = [1, 1, 1, 0, 0, 0, 1, 0]
    p = np.array([0.9, 0.6, 0.4, 0.2, 0.7, 0.1, 0.5, 0.5])
    # predictions (p >= 0.5): 1 1 0 0 1 0 1 1 -> TP 3, FN 1, FP 2, TN 2
    r = M.binary_report(y, p)
    assert r["accuracy"] == pytest.approx(62.5)
    assert r["precision"] == pytest.approx(60.0)
    assert r["recall"] == pytest.approx(75.0)
    assert r["f1"] == pytest.approx(100 * 2 * 0.6 * 0.75 / 1.35)
    logits = torch.tensor(np.log(p / (1 - p)))
    r2 = M.binary_report(torch.tensor(y), logits[:, None], from_logits=True)
    assert r2 == pytest.approx(r)
    # a stricter threshold: only 0.9 and 0.7 positive -> TP 1, FP 1
    r3 = M.binary_report(y, p, threshold=0.65)
    assert r3["precision"] == pytest.approx(50.0) and r3["recall"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="from_logits"):
        M.binary_report(y, logits)
    with pytest.raises(ValueError, match="binary"):
        M.binary_report([0, 2], [0.1, 0.9])


def test_no_positive_prediction_gives_zero_not_warning():
    r = M.binary_report([1, 0], [0.1, 0.2])
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0
    assert r["accuracy"] == pytest.approx(50.0)


def test_tensor_inputs_accepted():
    yt, yp = torch.tensor(Y_TRUE), torch.tensor(Y_PRED)
    assert M.accuracy(yt, yp) == pytest.approx(100 * 6 / 9)
    np.testing.assert_array_equal(M.confusion(yt, yp, 3), CM)
    assert M.classification_report(yt, yp) == pytest.approx(M.classification_report(Y_TRUE, Y_PRED))
    logits = torch.nn.functional.one_hot(yp, 3).float().requires_grad_(True)
    assert M.accuracy(yt, logits) == pytest.approx(100 * 6 / 9)
    assert isinstance(M.accuracy(yt, yp), float)
