"""`frozen.outputs`, the one batched inference loop: eval mode, no gradients, order kept, mode restored;
`frozen.ViewTargets`: a frozen network's output per (image, view), cached or live, the same numbers."""

import pytest
import torch
from torch import nn

from kdutils.errors import ConfigError
from kdutils.frozen import FixedViews, ViewTargets, batches, outputs


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))


def test_outputs_equal_one_eval_forward_and_restore_the_mode():
    net, x = _net(), torch.randn(23, 5)
    net.train()
    got = outputs(net, batches(x, 4))
    assert net.training and not got.requires_grad and got.dtype == torch.float32
    with torch.no_grad():
        expected = net.eval()(x)
    torch.testing.assert_close(got, expected)  # eval mode: no dropout, running BN statistics untouched
    assert [len(b) for b in batches(x, 10)] == [10, 10, 3] and batches(list("abcde"), 2)[-1] == ["e"]


def test_outputs_with_a_forward_of_choice_and_dict_batches():
    net = _net().eval()
    rows = [{"x": torch.randn(4, 5)} for _ in range(3)]
    got = outputs(net, rows, lambda b: net[0](b["x"]), device="cpu")
    torch.testing.assert_close(got, torch.cat([net[0](b["x"]) for b in rows]).detach())


def test_outputs_restore_the_mode_after_an_error():
    net = _net().train()

    def broken(batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        outputs(net, [torch.randn(2, 5)], broken)
    assert net.training


def test_outputs_iterate_a_loader_once():
    """tqdm.auto calls iter() on what it wraps: a DataLoader started twice draws its seed twice."""
    starts = []

    class Counted(list):
        def __iter__(self):
            starts.append(1)
            return super().__iter__()

    net = _net()
    for progress in (False, True):
        starts.clear()
        outputs(net, Counted(batches(torch.randn(6, 5), 4)), progress=progress)
        assert len(starts) == 1


def test_view_targets_cached_rows_equal_the_network_live_on_the_rendered_views():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    images, views = torch.rand(6, 3, 8, 8), FixedViews.corrupted("quarter_black", 6, p=0.5, draws=2, seed=1)
    everything = torch.arange(6)
    table = torch.stack([outputs(net, [views.render(images, everything, torch.full_like(everything, v))])
                         for v in range(views.n_views)])  # (V, N, D)
    idx, view_ids = torch.tensor([5, 0, 3, 3, 1]), torch.tensor([3, 1, 0, 2, 1])
    net.train()  # a live frozen network runs in eval mode whatever its mode was
    live = ViewTargets(network=net)(idx, view_ids, views.render(images[idx], idx, view_ids))
    cached = ViewTargets(table=table)(idx, view_ids)
    assert not live.requires_grad and live.dtype == torch.float32 and live.shape == (5, 4)
    torch.testing.assert_close(cached, live)
    assert not torch.equal(live[2], live[3])  # two views of one image: distinct rows, so the lookup is checked
    by_image = ViewTargets(table=table.transpose(0, 1).contiguous().transpose(0, 1))  # stored (N, V, D)
    assert torch.equal(by_image(idx, view_ids, device="cpu"), cached)
    with pytest.raises(ConfigError, match="exactly one"):
        ViewTargets(network=net, table=table)
    with pytest.raises(ConfigError, match="exactly one"):
        ViewTargets()
