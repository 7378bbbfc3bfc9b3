"""Loss values checked against explicit NumPy formulas and hand-computed numbers."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdutils import losses as L
from kdutils.errors import ConfigError

def t(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


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
    assert float(L.info_nce(x, x.clone(), -x, temperature=0.01)) < 1e-6  # queue of opposite keys
    with pytest.raises(ValueError, match="same shape"):
        L.info_nce(x, x[:3], -x)


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
    assert qu.keys.shape == (3, 2)
    assert torch.allclose(qu.keys.norm(dim=1), torch.ones(3))
    qu.enqueue(t([[2.0, 0.0], [0.0, 3.0]]).float())
    qu.enqueue(t([[-1.0, 0.0], [0.0, -5.0]]).float())  # wraps: slots 2, 0
    expected = torch.tensor([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])
    assert torch.allclose(qu.keys, expected) and int(qu.ptr) == 1
    with pytest.raises(ValueError):
        qu.enqueue(torch.zeros(2, 3))
