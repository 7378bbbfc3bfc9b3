"""Every distiller checked against explicit NumPy formulas and hand-computed numbers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdutils import distillers as D
from kdutils.errors import ConfigError

# ---------------------------------------------------------------------------
# NumPy references, written out term by term


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_ce(z, y):
    p = np_softmax(z)
    return float(np.mean(-np.log(p[np.arange(len(y)), y])))


def np_kl(zs, zt, T):
    ps, pt = np_softmax(zs / T), np_softmax(zt / T)
    return float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))


def np_bce(p, y):
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


ZS = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
ZT = np.array([[4.0, 0.0, -3.0], [-1.0, 5.0, 1.0]])
Y = np.array([0, 2])


def t(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


# ---------------------------------------------------------------------------
# Hinton KD


def test_hinton_kd_matches_hand_computation_T10_alpha01():
    T, alpha = 10.0, 0.1
    expected = alpha * T**2 * np_kl(ZS, ZT, T) + (1 - alpha) * np_ce(ZS, Y)
    got = D.HintonKD(T, alpha)(t(ZS), t(ZT), torch.tensor(Y))["loss"]
    assert got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_hinton_kd_one_sample_literal():
    # Two classes, T=1: student [0, 0] -> (1/2, 1/2); teacher [0, ln 3] -> (1/4, 3/4).
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2); CE(y=0) = ln 2.
    zs, zt = t([[0.0, 0.0]]), t([[0.0, math.log(3.0)]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    parts = D.HintonKD(1.0, 0.5)(zs, zt, torch.tensor([0]))
    assert float(parts["kd"]) == pytest.approx(kl, rel=1e-12)
    assert float(parts["ce"]) == pytest.approx(math.log(2.0), rel=1e-12)
    assert float(parts["loss"]) == pytest.approx(0.5 * kl + 0.5 * math.log(2.0), rel=1e-12)


def test_hinton_kd_alpha_edges():
    zs, zt, y = t(ZS), t(ZT), torch.tensor(Y)
    assert float(D.HintonKD(10, 0)(zs, zt, y)["loss"]) == pytest.approx(float(F.cross_entropy(zs, y)), rel=1e-12)
    assert float(D.HintonKD(10, 1)(zs, zt, y)["loss"]) == pytest.approx(100 * np_kl(ZS, ZT, 10), rel=1e-10)


def test_hinton_parts_sum_to_total():
    p = D.HintonKD(4, 0.3)(t(ZS), t(ZT), torch.tensor(Y))
    assert set(p) == {"kd", "ce", "loss"}
    assert float(p["loss"]) == pytest.approx(0.3 * float(p["kd"]) + 0.7 * float(p["ce"]))


def test_identical_logits_give_zero_kd():
    z = t(ZS)
    assert float(D.tempered_kl(z, z.clone(), T=5)) == pytest.approx(0.0, abs=1e-12)
    p = D.HintonKD(5, 0.5)(z, z.clone(), torch.tensor(Y))
    assert float(p["kd"]) == pytest.approx(0.0, abs=1e-12)


def test_gradient_flows_to_student_only():
    zs = torch.tensor(ZS, dtype=torch.float32, requires_grad=True)
    zt_frozen = torch.tensor(ZT, dtype=torch.float32)  # requires_grad False
    D.HintonKD(10, 0.1)(zs, zt_frozen, torch.tensor(Y))["loss"].backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0
    # Even a teacher tensor that requires grad is detached inside.
    zs.grad = None
    zt = torch.tensor(ZT, dtype=torch.float32, requires_grad=True)
    D.HintonKD(10, 0.1)(zs, zt, torch.tensor(Y))["loss"].backward()
    assert zt.grad is None and zs.grad is not None


def test_extreme_teacher_logits_stay_finite():
    # A teacher probability underflowing to 0 must not produce 0 * log 0 = nan.
    zs = torch.zeros(1, 3)
    zt = torch.tensor([[1000.0, 0.0, -1000.0]])
    assert torch.isfinite(D.HintonKD(1, 0.5)(zs, zt, torch.tensor([0]))["loss"])


def test_hinton_validation_errors():
    zs, zt, y = t(ZS), t(ZT), torch.tensor(Y)
    with pytest.raises(ValueError, match="same shape"):
        D.HintonKD(2, 0.5)(zs, zt[:, :2], y)
    with pytest.raises(ValueError, match="targets"):
        D.HintonKD(2, 0.5)(zs, zt, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        D.HintonKD(2, 0.5)(zs, zt, y.double())
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        D.HintonKD(2, 0.5)(zs, zt, torch.tensor([0, 3]))
    with pytest.raises(ConfigError, match="temperature T must be a finite number > 0, got 0"):
        D.HintonKD(0, 0.5)(zs, zt, y)
    with pytest.raises(ConfigError, match="alpha"):
        D.HintonKD(2, 1.5)(zs, zt, y)
    with pytest.raises(ValueError, match="batch, num_classes"):
        D.HintonKD(2, 0.5)(zs[0], zt[0], y)


# ---------------------------------------------------------------------------
# soft-target self-distillation (study 1)


def test_soft_target_kd_matches_numpy_and_differs_from_kl_by_the_teacher_entropy():
    pt = np_softmax(ZT)
    expected = float(np.mean(-np.sum(pt * np.log(np_softmax(ZS)), axis=1)))
    assert float(D.SoftTargetKD()(t(ZS), t(ZT))["loss"]) == pytest.approx(expected, rel=1e-6)
    h = float(np.mean(-np.sum(pt * np.log(pt), axis=1)))
    assert expected == pytest.approx(np_kl(ZS, ZT, 1.0) + h, rel=1e-12)


def test_soft_target_kd_on_one_hot_teachers_is_cross_entropy():
    confident = 1e4 * F.one_hot(torch.tensor(Y), 3).double()
    assert float(D.SoftTargetKD()(t(ZS), confident)["loss"]) == pytest.approx(np_ce(ZS, Y), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        D.SoftTargetKD()(t(ZS), t(ZT)[:, :2])


# ---------------------------------------------------------------------------
# binary KD (study 2)

ZS_B = np.array([1.5, -0.5, 0.2, -2.0])
ZT_B = np.array([3.0, -1.0, -0.7, 0.4])
Y_B = np.array([1.0, 0.0, 0.0, 1.0])


def test_two_class_logits_equivalence():
    z = t(ZS_B)
    two = D._two_class(z)
    assert two.shape == (4, 2) and torch.all(two[:, 0] == 0)
    p = torch.softmax(two, dim=1)
    assert torch.allclose(p[:, 1], torch.sigmoid(z)) and torch.allclose(p[:, 0], 1 - torch.sigmoid(z))
    ce = F.cross_entropy(two, torch.tensor(Y_B).long())
    assert float(ce) == pytest.approx(float(F.binary_cross_entropy_with_logits(z, t(Y_B))), rel=1e-12)


@pytest.mark.parametrize("T,alpha", [(2.0, 0.5), (1.5, 0.4), (3.0, 0.6)])
def test_binary_softmax_kd_matches_sigmoid_formula(T, alpha):
    ps, pt = np_sigmoid(ZS_B / T), np_sigmoid(ZT_B / T)
    kl = np.mean(pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)))
    expected = alpha * T**2 * kl + (1 - alpha) * np_bce(np_sigmoid(ZS_B), Y_B)
    got = D.BinarySoftmaxKD(T, alpha)(t(ZS_B), t(ZT_B), t(Y_B))["loss"]
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_binary_accepts_column_shapes_and_int_targets():
    a = D.BinarySoftmaxKD(2, 0.5)(t(ZS_B), t(ZT_B), t(Y_B))["loss"]
    b = D.BinarySoftmaxKD(2, 0.5)(t(ZS_B)[:, None], t(ZT_B)[:, None], torch.tensor(Y_B).long()[:, None])["loss"]
    assert float(a) == pytest.approx(float(b), rel=1e-12)


@pytest.mark.parametrize("T,alpha", [(3.0, 0.5), (1.0, 0.2)])
def test_sigmoid_kd_by_hand(T, alpha):
    ps, pt = np_sigmoid(ZS_B / T), np_sigmoid(ZT_B / T)
    distill = np_bce(ps, pt)
    hard = np_bce(np_sigmoid(ZS_B), Y_B)
    got = D.SigmoidKD(T, alpha)(t(ZS_B), t(ZT_B), t(Y_B))
    assert float(got["kd"]) == pytest.approx(distill, rel=1e-10)
    assert float(got["ce"]) == pytest.approx(hard, rel=1e-10)
    assert float(got["loss"]) == pytest.approx(alpha * distill + (1 - alpha) * hard, rel=1e-10)


def test_binary_losses_alpha0_T1_are_plain_bce():
    bce = np_bce(np_sigmoid(ZS_B), Y_B)
    for kd in (D.SigmoidKD(1.0, 0.0), D.BinarySoftmaxKD(1.0, 0.0), D.binary("bce")):
        assert float(kd(t(ZS_B), t(ZT_B), t(Y_B))["loss"]) == pytest.approx(bce, rel=1e-12)
    assert D.binary("sigmoid_kd", 3, 0.5).label == "sigmoid_kd T=3 alpha=0.5" and D.binary("bce").label == "BCE"
    with pytest.raises(ConfigError, match="bce, softmax_kd or sigmoid_kd"):
        D.binary("mse")


def test_binary_gradient_student_only_and_errors():
    zs = torch.tensor(ZS_B, requires_grad=True)
    zt = torch.tensor(ZT_B, requires_grad=True)
    D.SigmoidKD(3, 0.5)(zs, zt, t(Y_B))["loss"].backward()
    assert zs.grad is not None and zt.grad is None
    with pytest.raises(ValueError, match="same number of samples"):
        D.SigmoidKD(3, 0.5)(t(ZS_B), t(ZT_B[:3]), t(Y_B))
    with pytest.raises(ValueError, match="one logit per sample"):
        D.BinarySoftmaxKD(3, 0.5)(t(ZS)[:, :2], t(ZT)[:, :2], t([0.0, 1.0]))
    with pytest.raises(ValueError, match="targets"):
        D.SigmoidKD(3, 0.5)(t(ZS_B), t(ZT_B), t(Y_B[:3]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.SigmoidKD(3, 0.5)(t(ZS_B), t(ZT_B), t([0.0, 2.0, 1.0, 0.0]))


# ---------------------------------------------------------------------------
# feature regression (study 3)


@pytest.mark.filterwarnings(r"ignore:std\(\). degrees of freedom")
def test_feature_regression_by_hand():
    s1, t2 = t([[1.0, 0.0]]), t([[1.0, 1.0]])  # cos = 1/sqrt2
    s2, t1 = t([[0.0, 1.0]]), t([[0.0, -3.0]])  # cos = -1
    expected = 0.5 * (-1 / math.sqrt(2) + 1.0)
    assert float(D.FeatureRegression()(s1, t1, s2, t2)["loss"]) == pytest.approx(expected, rel=1e-12)
    x = t([[1.0, 2.0]])
    assert float(D.FeatureRegression()(x, x, x, x)["loss"]) == pytest.approx(-1.0)  # mean form: range [-1, 1]
    assert float(D.FeatureRegression()(s1, t2)["loss"]) == pytest.approx(-1 / math.sqrt(2), rel=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        D.FeatureRegression()(t([[1.0, 2.0]]), t([[1.0, 2.0, 3.0]]))


def test_config_holds_every_hyperparameter():
    """Cache keys are built from `config()`: two different losses must never share one."""
    configs = [D.HintonKD(2, 0.5).config(), D.HintonKD(3, 0.5).config(), D.HintonKD(2, 0.4).config(),
               D.SigmoidKD(2, 0.5).config(),
               D.BinarySoftmaxKD(2, 0.5).config(), D.SoftTargetKD().config(), D.CrossEntropy().config()]
    assert len({repr(sorted(c.items())) for c in configs}) == len(configs)
