"""The text-queried head: the two variants' algebra, the attention maps, the shape checks."""

import pytest
import torch

from kdutils.errors import ConfigError
from kdutils.text_queried_head import TextQueriedHead


def _head(seed=0, image_dim=6, text_dim=5, classes=4, dim=8, heads=2):
    torch.manual_seed(seed)
    return TextQueriedHead(image_dim, text_dim, classes, dim=dim, heads=heads).eval()


def test_class_scores_are_the_diagonal_of_own_prompt_logits():
    """Score of class c = logit c of the thesis head queried with prompt c (one head, two uses)."""
    head = _head()
    tokens, prompts = torch.randn(3, 7, 6), torch.randn(4, 5)
    scores = head.class_scores(tokens, prompts)
    by_hand = torch.stack([head.own_prompt_logits(tokens, prompts[c].expand(3, -1))[:, c] for c in range(4)], 1)
    assert scores.shape == (3, 4)
    torch.testing.assert_close(scores, by_hand, rtol=1e-5, atol=1e-6)


def test_attention_weights_are_a_distribution_over_image_tokens():
    head = _head()
    tokens, prompts = torch.randn(2, 9, 6), torch.randn(4, 5)
    _, w = head.class_scores(tokens, prompts, return_attention=True)
    assert w.shape == (2, 4, 9)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))
    _, w1 = head.own_prompt_logits(tokens, torch.randn(2, 5), return_attention=True)
    assert w1.shape == (2, 9)


def test_the_prompt_steers_attention_but_cannot_reach_the_classifier():
    """No residual from the query: if all tokens are equal, every prompt gives the same logits."""
    head = _head()
    tokens = torch.randn(1, 1, 6).expand(2, 5, 6)
    a = head.own_prompt_logits(tokens, torch.randn(2, 5))
    b = head.own_prompt_logits(tokens, 10 * torch.randn(2, 5))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # ...while distinct tokens make the logits depend on the prompt
    tokens = torch.randn(2, 5, 6)
    assert not torch.allclose(head.own_prompt_logits(tokens, torch.randn(2, 5)),
                              head.own_prompt_logits(tokens, torch.randn(2, 5)))


def test_permuting_image_tokens_permutes_attention_and_keeps_scores():
    head = _head()
    tokens, prompts = torch.randn(2, 6, 6), torch.randn(4, 5)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    s, w = head.class_scores(tokens, prompts, return_attention=True)
    sp, wp = head.class_scores(tokens[:, perm], prompts, return_attention=True)
    torch.testing.assert_close(s, sp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w[:, :, perm], wp)


def test_single_token_attention_is_one_and_matches_a_hand_computation():
    """With one image token the head reduces to LayerNorm-projected value -> out_proj -> LayerNorm -> fc."""
    head = _head(heads=1)
    tokens = torch.randn(3, 1, 6)
    logits, w = head.own_prompt_logits(tokens, torch.randn(3, 5), return_attention=True)
    torch.testing.assert_close(w, torch.ones(3, 1))
    kv = head.image_in(tokens)[:, 0]
    dim = kv.shape[-1]
    v = kv @ head.attn.in_proj_weight[2 * dim:].T + head.attn.in_proj_bias[2 * dim:]
    out = head.attn.out_proj(v)
    expected = head.fc(head.norm(out))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_gradients_reach_both_projections():
    head = _head().train()
    tokens, prompts = torch.randn(4, 5, 6), torch.randn(4, 5)
    loss = torch.nn.functional.cross_entropy(head.class_scores(tokens, prompts), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert head.text_in[1].weight.grad.abs().sum() > 0
    assert head.image_in[1].weight.grad.abs().sum() > 0


def test_head_learns_a_task_only_the_query_can_solve():
    """Class c is told by token c being 'on': the label-free head must look where prompt c says."""
    torch.manual_seed(0)
    n, classes, dim = 256, 4, 8
    y = torch.randint(0, classes, (n,))
    tokens = torch.randn(n, classes, dim) * 0.1
    tokens[torch.arange(n), y, 0] += 3.0           # the class's token lights up
    tokens[:, :, 1:5] += torch.eye(classes)          # and says which token it is
    prompts = torch.eye(classes)
    head = TextQueriedHead(dim, classes, classes, dim=16, heads=2)
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(head.class_scores(tokens, prompts), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (head.class_scores(tokens, prompts).argmax(1) == y).float().mean().item()
    assert acc > 0.95


def test_bad_shapes_and_sizes_raise_clear_errors():
    head = _head()
    with pytest.raises(ValueError, match=r"image tokens must be \(N, T, 6\)"):
        head.class_scores(torch.randn(2, 6), torch.randn(4, 5))
    with pytest.raises(ValueError, match="one query per class"):
        head.class_scores(torch.randn(2, 3, 6), torch.randn(3, 5))
    with pytest.raises(ValueError, match="one query per image"):
        head.own_prompt_logits(torch.randn(2, 3, 6), torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match="2 query sets for 3 images"):
        head.attend(torch.randn(3, 3, 6), torch.randn(2, 1, 5))
    with pytest.raises(ConfigError, match="divisible"):
        TextQueriedHead(6, 5, 4, dim=10, heads=3)
