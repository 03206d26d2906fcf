"""TokenSeg network: shapes, token selection, gradients, TorchScript, bad input."""

import itertools

import pytest
import torch

from tokenseg.data.synthetic import single_lesion_volume
from tokenseg.losses import TokenSegLoss
from tokenseg.networks import TokenSeg

from conftest import tiny_tokenseg

SIZES = [(64, 64, 32), (96, 96, 96), (128, 128, 64)]


@pytest.mark.parametrize("size,in_channels,out_channels,batch", itertools.product(SIZES, (1, 3), (2, 4), (1, 2)))
def test_output_shape(size, in_channels, out_channels, batch):
    net = tiny_tokenseg(in_channels=in_channels, out_channels=out_channels, img_size=size).eval()
    with torch.no_grad():
        y = net(torch.randn(batch, in_channels, *size))
    assert y.shape == (batch, out_channels, *size)
    assert net.aux.kept_indices.shape == (batch, net.num_kept_tokens)
    assert net.aux.kept_cells.shape == (batch, net.num_kept_tokens, 4)


def test_default_network_paper_sizes():
    net = TokenSeg(in_channels=1, out_channels=2, img_size=(96, 96, 96))
    assert net.num_tokens == 400 and net.num_kept_tokens == 100
    assert all(g == (4, 5, 5) or sorted(g) == [4, 5, 5] for g in net.grids)
    assert net.tokenizer.quantizer.quantizer.num_embeddings == 4096
    y = net(torch.randn(1, 1, 96, 96, 96))
    assert y.shape == (1, 2, 96, 96, 96)


def test_training_step_on_non_cubic_patch():
    net = tiny_tokenseg(in_channels=3, out_channels=4, img_size=(64, 64, 32))
    image = torch.randn(2, 3, 64, 64, 32)
    label = torch.randint(0, 4, (2, 1, 64, 64, 32)).float()
    loss = TokenSegLoss(net)(net(image), label)
    loss.backward()
    assert torch.isfinite(loss)


def test_small_patch_caps_cells_per_level():
    # at 32^3 the deepest level has 2x2x2 positions: it gets 8 cells, not 100
    net = tiny_tokenseg(img_size=(32, 32, 32))
    assert net.grids[-1] == (2, 2, 2)
    for level, grid in enumerate(net.grids, start=1):
        assert all(g <= 32 // 2**level for g in grid)
    assert net.num_tokens == sum(g[0] * g[1] * g[2] for g in net.grids) < 400


def _kept_sets(net):
    return [set(row.tolist()) for row in net.aux.kept_indices]


@pytest.mark.parametrize("selection", ["soft_topk", "topk", "random"])
def test_exactly_k_tokens_kept_per_sample(selection):
    net = tiny_tokenseg(selection=selection, num_kept_tokens=50)
    x = torch.randn(2, 1, 32, 32, 32)
    for training in (True, False):
        net.train(training)
        net(x)
        assert all(len(kept) == 50 for kept in _kept_sets(net))
        assert (net.aux.keep_mask.detach().sum(dim=1) == 50).all()


def test_dense_ablation_keeps_every_token():
    net = tiny_tokenseg(selection="all")
    assert net.num_kept_tokens == net.num_tokens
    net(torch.randn(1, 1, 32, 32, 32))
    assert _kept_sets(net)[0] == set(range(net.num_tokens))
    assert (net.aux.keep_mask == 1).all()


@pytest.mark.parametrize("selection", ["soft_topk", "topk", "random"])
def test_inference_is_deterministic(selection):
    net = tiny_tokenseg(selection=selection).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        first, kept_first = net(x), net.aux.kept_indices.clone()
        second, kept_second = net(x), net.aux.kept_indices.clone()
    assert torch.equal(first, second)
    assert torch.equal(kept_first, kept_second)


def test_training_selection_is_stochastic_with_a_hard_mask():
    net = tiny_tokenseg(selection="soft_topk").train()
    x = torch.randn(1, 1, 32, 32, 32)
    kept = []
    for _ in range(3):
        net(x)
        mask = net.aux.keep_mask
        assert mask.requires_grad  # the soft top-K gradient is attached ...
        assert set(mask.detach().unique().tolist()) == {0.0, 1.0}  # ... but the forward value is exactly 0/1
        kept.append(_kept_sets(net)[0])
    assert kept[0] != kept[1] or kept[1] != kept[2]


def test_gradients_reach_every_trainable_part():
    net = tiny_tokenseg()
    image, label = single_lesion_volume((32, 32, 32))
    codebook_before = net.tokenizer.quantizer.quantizer.embedding.weight.clone()
    TokenSegLoss(net)(net(image), label).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []
    for part in ("encoder", "tokenizer.scorer", "tokenizer.projections", "mixer", "decoder", "head"):
        assert any(n.startswith(part) for n, p in net.named_parameters() if p.grad is not None)
    # the codebook learns by EMA, not by gradient
    assert not torch.equal(codebook_before, net.tokenizer.quantizer.quantizer.embedding.weight)


def test_scores_get_gradient_through_the_straight_through_mask():
    net = tiny_tokenseg(selection="soft_topk")
    out = net(torch.randn(1, 1, 32, 32, 32))
    scores = net.aux.scores
    grad = torch.autograd.grad(out.square().mean(), scores, retain_graph=True)[0]
    assert grad.abs().sum() > 0


def test_trace_matches_eager():
    net = tiny_tokenseg(in_channels=3, out_channels=3, img_size=(64, 64, 32)).eval()
    x = torch.randn(1, 3, 64, 64, 32)
    with torch.no_grad():
        eager = net(x)
        traced = torch.jit.trace(net, x)
        assert torch.allclose(traced(x), eager, atol=1e-5)
        other = torch.randn(1, 3, 64, 64, 32)
        assert torch.allclose(traced(other), net(other), atol=1e-5)


def test_spatial_size_not_divisible_raises():
    net = tiny_tokenseg()
    with pytest.raises(ValueError, match=r"multiple of 16.*\(30, 32, 32\)"):
        net(torch.randn(1, 1, 30, 32, 32))
    with pytest.raises(ValueError, match=r"img_size.*multiple of 16"):
        tiny_tokenseg(img_size=(40, 32, 32))


def test_wrong_channel_count_raises():
    net = tiny_tokenseg(in_channels=3)
    with pytest.raises(ValueError, match=r"\(B, 3, D, H, W\), got \(1, 1, 32, 32, 32\)"):
        net(torch.randn(1, 1, 32, 32, 32))


def test_k_larger_than_n_raises():
    with pytest.raises(ValueError, match=r"N = 272.*K = 500"):
        tiny_tokenseg(num_kept_tokens=500)


def test_input_too_small_for_the_grid_raises():
    net = tiny_tokenseg(img_size=(64, 64, 64))
    with pytest.raises(ValueError, match="too small for the cell grid"):
        net(torch.randn(1, 1, 32, 32, 32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_type="dense"), "block_type"),
        (dict(selection="best"), "selection"),
        (dict(token_dim=60, mixer_heads=8), "divisible"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_tokenseg(**kwargs)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_decomposed_blocks_and_dropout(dropout):
    net = tiny_tokenseg(block_type="decomposed", dropout=dropout, selection="topk", img_size=(64, 64, 32))
    assert any(type(m).__name__ == "DecomposedConvBlock" for m in net.modules())
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in net.modules()) == (dropout > 0)
    x = torch.randn(1, 1, 64, 64, 32)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    # training mode with the codebook frozen and deterministic top-K: only dropout can make two passes differ
    net.train()
    net.tokenizer.eval()
    with torch.no_grad():
        differ = not torch.equal(net(x), net(x))
    assert differ == (dropout > 0)  # what MONAI Label's epistemic scoring relies on
