"""Loss values checked against explicit NumPy formulas and hand-computed numbers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdutils import losses as L
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
    got = L.hinton_kd(t(ZS), t(ZT), torch.tensor(Y), T=T, alpha=alpha)
    assert got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_hinton_kd_one_sample_literal():
    # Two classes, T=1: student [0, 0] -> (1/2, 1/2); teacher [0, ln 3] -> (1/4, 3/4).
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2); CE(y=0) = ln 2.
    zs, zt = t([[0.0, 0.0]]), t([[0.0, math.log(3.0)]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    parts = L.hinton_kd(zs, zt, torch.tensor([0]), T=1.0, alpha=0.5, return_parts=True)
    assert float(parts["kd"]) == pytest.approx(kl, rel=1e-12)
    assert float(parts["ce"]) == pytest.approx(math.log(2.0), rel=1e-12)
    assert float(parts["total"]) == pytest.approx(0.5 * kl + 0.5 * math.log(2.0), rel=1e-12)


def test_hinton_kd_alpha_edges():
    zs, zt, y = t(ZS), t(ZT), torch.tensor(Y)
    assert float(L.hinton_kd(zs, zt, y, T=10, alpha=0)) == pytest.approx(float(F.cross_entropy(zs, y)), rel=1e-12)
    assert float(L.hinton_kd(zs, zt, y, T=10, alpha=1)) == pytest.approx(100 * np_kl(ZS, ZT, 10), rel=1e-10)
    # alpha = 1 needs no labels
    assert float(L.hinton_kd(zs, zt, None, T=3, alpha=1)) == pytest.approx(9 * np_kl(ZS, ZT, 3), rel=1e-10)
    with pytest.raises(ValueError, match="alpha=1"):
        L.hinton_kd(zs, zt, None, T=3, alpha=0.5)


def test_hinton_parts_sum_to_total():
    p = L.hinton_kd(t(ZS), t(ZT), torch.tensor(Y), T=4, alpha=0.3, return_parts=True)
    assert set(p) == {"kd", "ce", "total"}
    assert float(p["total"]) == pytest.approx(0.3 * float(p["kd"]) + 0.7 * float(p["ce"]))


def test_identical_logits_give_zero_kd():
    z = t(ZS)
    assert float(L.tempered_kl(z, z.clone(), T=5)) == pytest.approx(0.0, abs=1e-12)
    p = L.hinton_kd(z, z.clone(), torch.tensor(Y), T=5, alpha=0.5, return_parts=True)
    assert float(p["kd"]) == pytest.approx(0.0, abs=1e-12)


def test_gradient_flows_to_student_only():
    zs = torch.tensor(ZS, dtype=torch.float32, requires_grad=True)
    zt_frozen = torch.tensor(ZT, dtype=torch.float32)  # requires_grad False
    L.hinton_kd(zs, zt_frozen, torch.tensor(Y), T=10, alpha=0.1).backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0
    # Even a teacher tensor that requires grad is detached inside.
    zs.grad = None
    zt = torch.tensor(ZT, dtype=torch.float32, requires_grad=True)
    L.hinton_kd(zs, zt, torch.tensor(Y), T=10, alpha=0.1).backward()
    assert zt.grad is None and zs.grad is not None


def test_extreme_teacher_logits_stay_finite():
    # A teacher probability underflowing to 0 must not produce 0 * log 0 = nan.
    zs = torch.zeros(1, 3)
    zt = torch.tensor([[1000.0, 0.0, -1000.0]])
    assert torch.isfinite(L.hinton_kd(zs, zt, torch.tensor([0]), T=1, alpha=0.5))


def test_hinton_validation_errors():
    zs, zt, y = t(ZS), t(ZT), torch.tensor(Y)
    with pytest.raises(ValueError, match="same shape"):
        L.hinton_kd(zs, zt[:, :2], y, T=2, alpha=0.5)
    with pytest.raises(ValueError, match="targets"):
        L.hinton_kd(zs, zt, torch.tensor([0, 1, 2]), T=2, alpha=0.5)
    with pytest.raises(ValueError, match="integer"):
        L.hinton_kd(zs, zt, y.double(), T=2, alpha=0.5)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        L.hinton_kd(zs, zt, torch.tensor([0, 3]), T=2, alpha=0.5)
    with pytest.raises(ConfigError, match="T"):
        L.hinton_kd(zs, zt, y, T=0, alpha=0.5)
    with pytest.raises(ConfigError, match="alpha"):
        L.hinton_kd(zs, zt, y, T=2, alpha=1.5)
    with pytest.raises(ValueError, match="batch, num_classes"):
        L.hinton_kd(zs[0], zt[0], y, T=2, alpha=0.5)


# ---------------------------------------------------------------------------
# soft cross-entropy (study 1)


def test_soft_cross_entropy_matches_numpy():
    p = np_softmax(ZT)
    expected = float(np.mean(-np.sum(p * np.log(np_softmax(ZS)), axis=1)))
    assert float(L.soft_cross_entropy(t(ZS), t(p))) == pytest.approx(expected, rel=1e-12)


def test_soft_cross_entropy_one_hot_equals_ce():
    onehot = F.one_hot(torch.tensor(Y), 3).double()
    assert float(L.soft_cross_entropy(t(ZS), onehot)) == pytest.approx(np_ce(ZS, Y), rel=1e-12)


def test_soft_cross_entropy_from_logits():
    T = 2.0
    pt = np_softmax(ZT / T)
    expected = float(np.mean(-np.sum(pt * np.log(np_softmax(ZS / T)), axis=1)))
    assert float(L.soft_cross_entropy_from_logits(t(ZS), t(ZT), T=T)) == pytest.approx(expected, rel=1e-12)
    # Differs from the tempered KL by the teacher's entropy only.
    h = float(np.mean(-np.sum(pt * np.log(pt), axis=1)))
    assert expected == pytest.approx(np_kl(ZS, ZT, T) + h, rel=1e-12)


def test_soft_cross_entropy_rejects_logits_as_probs():
    with pytest.raises(ValueError, match="soft_cross_entropy_from_logits"):
        L.soft_cross_entropy(t(ZS), t(ZT))
    with pytest.raises(ValueError, match="same shape"):
        L.soft_cross_entropy(t(ZS), t(np_softmax(ZT))[:, :2])


# ---------------------------------------------------------------------------
# binary KD (study 2)

ZS_B = np.array([1.5, -0.5, 0.2, -2.0])
ZT_B = np.array([3.0, -1.0, -0.7, 0.4])
Y_B = np.array([1.0, 0.0, 0.0, 1.0])


def test_two_class_logits_equivalence():
    z = t(ZS_B)
    two = L.binary_two_class_logits(z)
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
    got = L.binary_softmax_kd(t(ZS_B), t(ZT_B), t(Y_B), T=T, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_binary_accepts_column_shapes_and_int_targets():
    a = L.binary_softmax_kd(t(ZS_B), t(ZT_B), t(Y_B), T=2, alpha=0.5)
    b = L.binary_softmax_kd(t(ZS_B)[:, None], t(ZT_B)[:, None], torch.tensor(Y_B).long()[:, None], T=2, alpha=0.5)
    assert float(a) == pytest.approx(float(b), rel=1e-12)


@pytest.mark.parametrize("T,alpha", [(3.0, 0.5), (1.0, 0.2)])
def test_sigmoid_kd_by_hand(T, alpha):
    ps, pt = np_sigmoid(ZS_B / T), np_sigmoid(ZT_B / T)
    distill = np_bce(ps, pt)
    hard = np_bce(np_sigmoid(ZS_B), Y_B)
    got = L.sigmoid_kd(t(ZS_B), t(ZT_B), t(Y_B), T=T, alpha=alpha, return_parts=True)
    assert float(got["kd"]) == pytest.approx(distill, rel=1e-10)
    assert float(got["ce"]) == pytest.approx(hard, rel=1e-10)
    assert float(got["total"]) == pytest.approx(alpha * distill + (1 - alpha) * hard, rel=1e-10)
    scaled = L.sigmoid_kd(t(ZS_B), t(ZT_B), t(Y_B), T=T, alpha=alpha, scale_by_T2=True)
    assert float(scaled) == pytest.approx(alpha * T**2 * distill + (1 - alpha) * hard, rel=1e-10)


def test_binary_losses_alpha0_T1_are_plain_bce():
    bce = np_bce(np_sigmoid(ZS_B), Y_B)
    for fn in (L.sigmoid_kd, L.binary_softmax_kd):
        assert float(fn(t(ZS_B), t(ZT_B), t(Y_B), T=1.0, alpha=0.0)) == pytest.approx(bce, rel=1e-12)


def test_binary_gradient_student_only_and_errors():
    zs = torch.tensor(ZS_B, requires_grad=True)
    zt = torch.tensor(ZT_B, requires_grad=True)
    L.sigmoid_kd(zs, zt, t(Y_B), T=3, alpha=0.5).backward()
    assert zs.grad is not None and zt.grad is None
    with pytest.raises(ValueError, match="same number of samples"):
        L.sigmoid_kd(t(ZS_B), t(ZT_B[:3]), t(Y_B), T=3, alpha=0.5)
    with pytest.raises(ValueError, match="one logit per sample"):
        L.binary_softmax_kd(t(ZS)[:, :2], t(ZT)[:, :2], t([0.0, 1.0]), T=3, alpha=0.5)
    with pytest.raises(ValueError, match="targets"):
        L.sigmoid_kd(t(ZS_B), t(ZT_B), t(Y_B[:3]), T=3, alpha=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        L.sigmoid_kd(t(ZS_B), t(ZT_B), t([0.0, 2.0, 1.0, 0.0]), T=3, alpha=0.5)


# ---------------------------------------------------------------------------
# feature losses (study 3)


def test_negative_cosine_extremes():
    a = t([[1.0, 2.0, 3.0]])
    assert float(L.negative_cosine(a, a)) == pytest.approx(-1.0)
    assert float(L.negative_cosine(a, 5 * a)) == pytest.approx(-1.0)
    assert float(L.negative_cosine(a, -a)) == pytest.approx(1.0)
    assert float(L.negative_cosine(t([[1.0, 0.0]]), t([[0.0, 2.0]]))) == pytest.approx(0.0, abs=1e-12)
    # mean over the batch: (-1 + 0) / 2
    assert float(L.negative_cosine(t([[1.0, 0.0], [1.0, 0.0]]), t([[3.0, 0.0], [0.0, 1.0]]))) == pytest.approx(-0.5)


def test_symmetric_negative_cosine_by_hand():
    s1, t2 = t([[1.0, 0.0]]), t([[1.0, 1.0]])  # cos = 1/sqrt2
    s2, t1 = t([[0.0, 1.0]]), t([[0.0, -3.0]])  # cos = -1
    expected = 0.5 * (-1 / math.sqrt(2) + 1.0)
    assert float(L.symmetric_negative_cosine(s1, t2, s2, t1)) == pytest.approx(expected, rel=1e-12)
    x = t([[1.0, 2.0]])
    assert float(L.symmetric_negative_cosine(x, x, x, x)) == pytest.approx(-1.0)  # mean form: range [-1, 1]
    with pytest.raises(ValueError, match="same shape"):
        L.negative_cosine(t([[1.0, 2.0]]), t([[1.0, 2.0, 3.0]]))


def test_byol_loss():
    a = t([[1.0, 2.0, -1.0], [0.5, 0.0, 2.0]])
    assert float(L.byol_loss(a, a)) == pytest.approx(0.0, abs=1e-12)
    assert float(L.byol_loss(a, -a)) == pytest.approx(4.0)
    b = t([[0.3, -1.0, 2.0], [1.0, 1.0, 1.0]])
    assert float(L.byol_loss(7 * a, 0.1 * b)) == pytest.approx(float(L.byol_loss(a, b)), rel=1e-12)
    # equals the squared distance of unit vectors
    d = ((F.normalize(a, dim=1) - F.normalize(b, dim=1)) ** 2).sum(1).mean()
    assert float(L.byol_loss(a, b)) == pytest.approx(float(d), rel=1e-12)
    p = a.clone().requires_grad_(True)
    z = b.clone().requires_grad_(True)
    L.byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None  # stop-gradient on the target


# ---------------------------------------------------------------------------
# contrastive losses


def test_info_nce_in_batch_hand_2x2():
    # q = k = I, tau = 1: logits = I, each row -log(e / (e + 1)) = log(1 + 1/e)
    eye = torch.eye(2, dtype=torch.float64)
    assert float(L.info_nce(eye, eye, temperature=1.0)) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-12)
    # keys both along x: row 1 logits [1, 1], row 2 logits [0, 0]: both log 2
    k = t([[2.0, 0.0], [1.0, 0.0]])
    assert float(L.info_nce(eye, k, temperature=1.0)) == pytest.approx(math.log(2), rel=1e-12)
    # inputs are normalised: scaling changes nothing
    q = t([[3.0, 1.0], [-1.0, 2.0]])
    assert float(L.info_nce(5 * q, k, temperature=0.5)) == pytest.approx(float(L.info_nce(q, 0.1 * k, temperature=0.5)))


def test_info_nce_queue_hand():
    q, kp = t([[2.0, 0.0]]), t([[1.0, 0.0]])
    queue = t([[0.0, 4.0], [-1.0, 0.0]])
    # logits [1, 0, -1] / 0.5 = [2, 0, -2], positive at index 0
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert float(L.info_nce(q, kp, queue, temperature=0.5)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="queue"):
        L.info_nce(q, kp, t([[1.0, 0.0, 0.0]]), temperature=0.5)


def test_info_nce_perfect_alignment_low_temperature():
    x = torch.eye(4)
    assert float(L.info_nce(x, x.clone(), temperature=0.01)) < 1e-6
    assert float(L.info_nce(x, x.clone(), -x, temperature=0.01)) < 1e-6  # queue of opposite keys
    with pytest.raises(ValueError, match="same shape"):
        L.info_nce(x, x[:3])


def test_clip_loss_hand_and_symmetric():
    eye = torch.eye(2, dtype=torch.float64)
    s = 3.0
    assert float(L.clip_contrastive_loss(eye, eye, s)) == pytest.approx(math.log(1 + math.exp(-s)), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    a = L.clip_contrastive_loss(img, txt, 10.0)
    b = L.clip_contrastive_loss(txt, img, 10.0)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    logits = 10.0 * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    lab = torch.arange(5)
    ref = 0.5 * (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab))
    assert float(a) == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(ConfigError):
        L.clip_contrastive_loss(img, txt, 0.0)


def test_clip_loss_module_learns_scale():
    m = L.ClipLoss()
    assert float(m.scale.detach()) == pytest.approx(1 / 0.07, rel=1e-6)
    img = torch.randn(4, 6, requires_grad=True)
    m(img, img.detach() + 0.1).backward()
    assert m.log_scale.grad is not None and img.grad is not None
    with torch.no_grad():
        m.log_scale.fill_(10.0)
    assert float(m.scale.detach()) == pytest.approx(100.0, rel=1e-6)  # clamped like CLIP


def test_moco_queue_fifo():
    torch.manual_seed(0)
    qu = L.MoCoQueue(dim=2, size=3)
    assert qu().shape == (3, 2)
    assert torch.allclose(qu().norm(dim=1), torch.ones(3))
    qu.enqueue(t([[2.0, 0.0], [0.0, 3.0]]).float())
    qu.enqueue(t([[-1.0, 0.0], [0.0, -5.0]]).float())  # wraps: slots 2, 0
    expected = torch.tensor([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])
    assert torch.allclose(qu(), expected) and int(qu.ptr) == 1
    with pytest.raises(ValueError):
        qu.enqueue(torch.zeros(2, 3))
