"""TokenSeg network: shapes, token selection, gradients, side-effect-free forward passes, TorchScript, bad input."""

import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.kept_flops import (
    gflops_with_kept_first_level,
    module_gflops_with_kept_first_level,
    most_kept_first_level,
)
from benchmarks.measure import forward_gflops
from benchmarks.models import build_model
from tokenseg.data.synthetic import single_lesion_volume
from tokenseg.losses import TokenSegLoss
from tokenseg.networks import TokenSeg, TokenSegOutput
from tokenseg.networks.cells import expand_cells
from tokenseg.networks.refinement import gather_cells, kept_cells, paste_cells
from tokenseg.networks.selection import select_tokens
from tokenseg.uncertainty import dropout_sampling

from conftest import tiny_tokenseg

SIZES = [(64, 64, 32), (96, 96, 96), (128, 128, 64)]


@pytest.mark.parametrize("size,in_channels,out_channels,batch", itertools.product(SIZES, (1, 3), (2, 4), (1, 2)))
def test_output_shape(size, in_channels, out_channels, batch):
    net = tiny_tokenseg(in_channels=in_channels, out_channels=out_channels, img_size=size).eval()
    with torch.no_grad():
        out = net.forward_tokens(torch.randn(batch, in_channels, *size))
    assert out.logits.shape == (batch, out_channels, *size)
    assert out.kept_indices.shape == (batch, net.num_kept_tokens)
    assert out.scores.shape == out.keep_mask.shape == out.code_indices.shape == (batch, net.num_tokens)
    assert out.vq_loss.shape == (batch,)
    cells = net.token_cells[out.kept_indices]  # (B, K, 4): level 1..L, then the cell on that level's grid
    assert cells.shape == (batch, net.num_kept_tokens, 4)
    assert 1 <= cells[..., 0].min() and cells[..., 0].max() <= len(net.grids)


@pytest.mark.parametrize("size", [(96, 96, 96), (64, 64, 32), (64, 64, 16)])
def test_default_grids_are_hierarchical(size):
    # 400 candidates on four distinct grids, fine cells on fine levels, K = 100, at 96^3 and at the patches
    net = TokenSeg(in_channels=1, out_channels=2, img_size=size)
    assert net.num_tokens == 400 and net.num_kept_tokens == 100
    assert [g[0] * g[1] * g[2] for g in net.grids] == [256, 96, 32, 16]
    assert len({tuple(g) for g in net.grids}) == 4
    cell_voxels = [2**level * 2**level * 2**level * math.prod(s // 2**level for s in size) / math.prod(g)
                   for level, g in enumerate(net.grids, start=1)]
    assert cell_voxels == sorted(cell_voxels) and cell_voxels[-1] >= 8 * cell_voxels[0]


def test_default_network_paper_sizes():
    net = TokenSeg(in_channels=1, out_channels=2, img_size=(96, 96, 96))
    assert net.tokenizer.codebook.num_embeddings == 512
    with torch.no_grad():
        y = net.eval()(torch.randn(1, 1, 96, 96, 96))
    assert y.shape == (1, 2, 96, 96, 96)


def test_training_step_on_non_cubic_patch():
    net = tiny_tokenseg(in_channels=3, out_channels=4, img_size=(64, 64, 32))
    image = torch.randn(2, 3, 64, 64, 32)
    label = torch.randint(0, 4, (2, 1, 64, 64, 32)).float()
    loss = TokenSegLoss(net.grids)(net(image), label)
    loss.backward()
    assert torch.isfinite(loss)


def test_small_patch_caps_cells_per_level():
    # at 32^3 the deepest level has 2x2x2 positions: it gets 8 cells, not 16
    net = tiny_tokenseg(img_size=(32, 32, 32))
    assert net.grids[-1] == [2, 2, 2]
    for level, grid in enumerate(net.grids, start=1):
        assert all(g <= 32 // 2**level for g in grid)
    assert net.num_tokens == sum(g[0] * g[1] * g[2] for g in net.grids) < 400


def _kept_sets(out):
    return [set(row.tolist()) for row in out.kept_indices]


@pytest.mark.parametrize("selection", ["soft_topk", "topk", "random"])
def test_exactly_k_tokens_kept_per_sample(selection):
    net = tiny_tokenseg(selection=selection, num_kept_tokens=50)
    x = torch.randn(2, 1, 32, 32, 32)
    for training in (True, False):
        net.train(training)
        out = net.forward_tokens(x)
        assert all(len(kept) == 50 for kept in _kept_sets(out))
        assert (out.keep_mask.detach().sum(dim=1) == 50).all()


@pytest.mark.parametrize("selection", ["soft_topk", "topk", "random"])
def test_k_per_level_keeps_each_levels_count(selection):
    # the tiny network at 32^3 has 256, 96, 32 and 8 candidates; the first level keeps exactly 6 of its 256
    net = tiny_tokenseg(selection=selection, num_kept_tokens=(6, 10, 4, 0))
    assert net.num_kept_tokens == 20
    x = torch.randn(2, 1, 32, 32, 32)
    for training in (True, False):
        net.train(training)
        out = net.forward_tokens(x)
        levels = net.token_cells[out.kept_indices][..., 0]  # (B, K)
        assert [(levels == level).sum(dim=1).tolist() for level in (1, 2, 3, 4)] == [[6, 6], [10, 10], [4, 4], [0, 0]]
        assert (out.keep_mask.detach().sum(dim=1) == 20).all()
        assert (out.kept_indices.diff(dim=1) > 0).all()  # ascending, as the decoder expects
    # each level keeps its best-scored cells: the first level's 6 are its 6 highest scores in evaluation
    out = net.eval().forward_tokens(x)
    if selection != "random":
        best = out.scores[:, :256].topk(6, dim=1).indices.sort(dim=1).values
        assert torch.equal(out.kept_indices[:, :6], best)
    # the soft top-K gradient reaches every level's scores in training
    out = tiny_tokenseg(num_kept_tokens=(6, 10, 4, 0)).train()(x)
    grad = torch.autograd.grad(out["logits"].square().mean(), out["scores"])[0]
    assert all(g.abs().sum() > 0 for g in grad.split([256, 96, 32, 8], dim=1)[:3])  # level 4 keeps none


def test_k_per_level_scripts():
    net = tiny_tokenseg(in_channels=3, img_size=(64, 64, 32), num_kept_tokens=(20, 44, 20, 16)).eval()
    x = torch.randn(1, 3, 64, 64, 32)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)


@pytest.mark.parametrize("kept, match", [((6, 10, 4), "4 counts"), ((300, 10, 4, 0), r"\[256, 96, 32, 8\]"),
                                         ((0, 0, 0, 0), "K = ")])
def test_bad_k_per_level_raises(kept, match):
    with pytest.raises(ValueError, match=match):
        tiny_tokenseg(num_kept_tokens=kept)


def test_dense_ablation_keeps_every_token():
    net = tiny_tokenseg(selection="all")
    assert net.num_kept_tokens == net.num_tokens
    out = net.forward_tokens(torch.randn(1, 1, 32, 32, 32))
    assert _kept_sets(out)[0] == set(range(net.num_tokens))
    assert (out.keep_mask == 1).all()


@pytest.mark.parametrize("selection", ["soft_topk", "topk", "random"])
def test_inference_is_deterministic(selection):
    net = tiny_tokenseg(selection=selection).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        first, second = net.forward_tokens(x), net.forward_tokens(x)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.kept_indices, second.kept_indices)


def test_training_selection_is_stochastic_with_a_hard_mask():
    net = tiny_tokenseg(selection="soft_topk").train()
    x = torch.randn(1, 1, 32, 32, 32)
    kept = []
    for _ in range(3):
        out = net.forward_tokens(x)
        mask = out.keep_mask
        assert mask.requires_grad  # the soft top-K gradient is attached ...
        assert set(mask.detach().unique().tolist()) == {0.0, 1.0}  # ... but the forward value is exactly 0/1
        kept.append(_kept_sets(out)[0])
    assert kept[0] != kept[1] or kept[1] != kept[2]


def test_gradients_reach_every_trainable_part():
    net = tiny_tokenseg()
    image, label = single_lesion_volume((32, 32, 32))
    codebook_before = net.tokenizer.codebook.embedding.weight.clone()
    TokenSegLoss(net.grids)(net(image), label).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []
    for part in ("encoder", "tokenizer.scorer", "tokenizer.projections", "mixer", "decoder", "head"):
        assert any(n.startswith(part) for n, p in net.named_parameters() if p.grad is not None)
    # the codebook learns by EMA in the training step, not by gradient
    assert not torch.equal(codebook_before, net.tokenizer.codebook.embedding.weight)


@pytest.mark.parametrize("size,grid", [((16, 16, 8), [4, 4, 2]), ((12, 10, 9), [3, 4, 2])])
def test_kept_cells_get_the_dense_convolution(size, grid):
    # a 3x3x3 convolution on the kept cells' crops with a halo of 1 equals the dense one there, zero elsewhere,
    # also where cells are uneven (10 positions in 4 cells)
    conv = torch.nn.Conv3d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, *size)
    keep = (torch.rand(2, math.prod(grid)) > 0.6).float()
    batch_index, cells = kept_cells(keep, grid)
    with torch.no_grad():
        crops = conv(gather_cells(x, batch_index, cells, grid, halo=1))[:, :, 1:-1, 1:-1, 1:-1]
        refined = paste_cells(torch.zeros(2, 5, *size), crops, batch_index, cells, grid)
        expected = conv(x) * expand_cells(keep.view(2, 1, *grid), list(size))
    assert torch.allclose(refined, expected, atol=1e-6)


def test_compute_follows_the_kept_tokens():
    # the default convolves the first level only in the kept cells: less work than its dense ablation at 96^3
    # (PyTorch's FLOP counter; a structural check), growing with the number of kept first-level cells
    torch.manual_seed(0)
    x = torch.zeros(1, 1, 96, 96, 96)
    default = TokenSeg(1, 2, img_size=(96, 96, 96))
    dense = forward_gflops(TokenSeg(1, 2, img_size=(96, 96, 96), selection="all", refinement="dense"), x)
    assert forward_gflops(default, x) < dense
    by_kept = [gflops_with_kept_first_level(default, x, kept) for kept in (0, 25, 100)]
    assert by_kept == sorted(by_kept) and by_kept[0] < by_kept[-1] < dense
    # the refinement's convolutions grow with the kept cells, 25 costing a quarter of 100 (no halo); its
    # upsampling, what 0 kept cells cost, runs everywhere
    refinement = [module_gflops_with_kept_first_level(default, x, kept)["kept-cell refinement"] for kept in (0, 25, 100)]
    assert refinement[1] - refinement[0] == pytest.approx(0.25 * (refinement[2] - refinement[0]), rel=0.05)


@pytest.mark.parametrize("size, in_channels", [((96, 96, 96), 1), ((64, 64, 32), 3), ((64, 64, 16), 1)])
def test_default_does_at_most_unets_work(size, in_channels):
    # the efficiency claim, structurally (PyTorch's FLOP counter, not a timing): even with all K = 100 kept
    # tokens on the first level (the trained default keeps fewer there), a forward pass of the default costs
    # no more than MONAI's UNet of the benchmarks at 96^3 and at both generated sets' patches
    x = torch.zeros(1, in_channels, *size)
    default = TokenSeg(in_channels, 2, img_size=size)
    unet = forward_gflops(build_model("unet", in_channels, 2, size), x)
    assert gflops_with_kept_first_level(default, x, default.num_kept_tokens) <= unet


def test_k_per_level_costs_its_first_levels_share():
    # FLOPs follow K_1, not K: (20, 44, 20, 16) refines 20 first-level cells, under UNet at the demo patch
    size, x = (64, 64, 32), torch.zeros(1, 3, 64, 64, 32)
    per_level = TokenSeg(3, 2, img_size=size, num_kept_tokens=(20, 44, 20, 16))
    assert most_kept_first_level(per_level) == 20
    assert most_kept_first_level(TokenSeg(3, 2, img_size=size)) == 100
    assert gflops_with_kept_first_level(per_level, x, 20) <= forward_gflops(build_model("unet", 3, 2, size), x)
    with pytest.raises(ValueError, match="keeps 20 first-level cells, not 100"):
        gflops_with_kept_first_level(per_level, x, 100)


def test_scores_get_gradient_through_the_straight_through_mask():
    net = tiny_tokenseg(selection="soft_topk")
    out = net(torch.randn(1, 1, 32, 32, 32))
    grad = torch.autograd.grad(out["logits"].square().mean(), out["scores"], retain_graph=True)[0]
    assert grad.abs().sum() > 0


def test_train_mode_forward_without_gradients_returns_logits():
    # MONAI Label's epistemic scoring samples dropout with network.train() under no_grad
    net = tiny_tokenseg(dropout=0.2).train()
    with torch.no_grad():
        logits = net(torch.randn(2, 1, 32, 32, 32))
    assert logits.shape == (2, 2, 32, 32, 32)  # logits, not the training output


def test_dropout_sampling_samples_and_changes_nothing():
    net = tiny_tokenseg(dropout=0.2)
    TokenSegLoss(net.grids)(net(torch.randn(1, 1, 32, 32, 32)), torch.zeros(1, 1, 32, 32, 32))  # codebook initialised
    before = {name: t.clone() for name, t in net.state_dict().items()}
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        first, second = dropout_sampling(net)(x), net(x)
        net.forward_tokens(x)
    assert not torch.equal(first, second)  # dropout samples ...
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
    # ... while batch norm keeps its trained statistics: nothing of the network changes
    changed = [name for name, t in net.state_dict().items() if not torch.equal(t, before[name])]
    assert changed == []


def test_training_step_output_is_batch_first():
    # DataParallel gathers along dim 0 and sliding windows stitch logits: nothing is kept on the module
    net = tiny_tokenseg().train()
    out = net(torch.randn(2, 1, 32, 32, 32))
    assert set(out) == set(TokenSegOutput._fields)
    assert all(value.shape[0] == 2 for value in out.values())
    assert not any(isinstance(value, torch.Tensor) for value in vars(net).values())
    with pytest.raises(TypeError, match="training output"):
        TokenSegLoss(net.grids)(out["logits"], torch.zeros(2, 1, 32, 32, 32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_selection_in_low_precision_keeps_exactly_k(dtype):
    # near-equal scores and many Gumbel draws: fp16 rounding used to make -inf (log 0) and ties
    scores = (torch.randn(64, 400) * 1e-3).to(dtype).requires_grad_()
    for _ in range(50):
        indices, mask = select_tokens(scores, 100, "soft_topk", training=True)
        assert mask.dtype == torch.float32 and torch.isfinite(mask).all()
        assert (mask.detach().sum(dim=1) == 100).all()
        assert (indices.diff(dim=1) > 0).all()
    mask.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_training_step_under_cpu_autocast():
    net = tiny_tokenseg(img_size=(32, 32, 32)).train()
    image, label = single_lesion_volume((32, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(image)
        loss = TokenSegLoss(net.grids)(out, label)
    loss.backward()
    assert torch.isfinite(loss)
    assert (out["keep_mask"].detach().sum(dim=1) == net.num_kept_tokens).all()


@pytest.mark.parametrize("selection", ["soft_topk", "random", "all"])
def test_script_matches_eager(selection):
    # the model zoo exports with torch.jit.script
    net = tiny_tokenseg(in_channels=3, out_channels=3, img_size=(64, 64, 32), selection=selection).eval()
    x = torch.randn(1, 3, 64, 64, 32)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


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
    with pytest.raises(ValueError, match=r"N = 392.*K = 500"):
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
        (dict(refinement="sparse"), "refinement"),
        (dict(token_dim=60, mixer_heads=8), "divisible"),
        (dict(block_type="residual", refinement_norm=False), "need a norm"),
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
    # only dropout can make two passes differ
    with torch.no_grad():
        differ = not torch.equal(dropout_sampling(net)(x), net(x))
    assert differ == (dropout > 0)  # what MONAI Label's epistemic scoring relies on


def test_kept_cells_without_norm_leave_the_rest_normalised():
    net = tiny_tokenseg(block_type="decomposed", refinement_norm=False, img_size=(64, 64, 32))
    norms = lambda module: sum(isinstance(m, torch.nn.BatchNorm3d) for m in module.modules())  # noqa: E731
    assert norms(net.decoder.kept_cell_step) == 0
    assert norms(net.encoder) > 0 and norms(net.decoder.up_blocks) > 0
    assert norms(tiny_tokenseg(block_type="decomposed", img_size=(64, 64, 32)).decoder.kept_cell_step) > 0
    output = net.train()(torch.randn(2, 1, 64, 64, 32))["logits"]
    assert output.shape == (2, 2, 64, 64, 32)
    output.float().mean().backward()
    assert all(p.grad is not None for p in net.decoder.kept_cell_step.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs its CUDA checks instead")
def test_cuda_check_script_says_it_skipped_on_the_cpu():
    script = Path(__file__).resolve().parents[1] / "tools" / "check_cuda.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("skipped: no CUDA device"), proc.stderr


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_depthwise_conv_is_a_depthwise_3d_convolution(axis):
    # the reshaped 2-D computation gives what a depthwise 3-D convolution with a 1-D kernel along the axis gives
    from tokenseg.networks.blocks import AxisDepthwiseConv

    torch.manual_seed(0)
    conv = AxisDepthwiseConv(4, 7, axis)
    x = torch.randn(2, 4, 5, 6, 3)
    kernel = [1, 1, 1]
    kernel[axis] = 7
    padding = [0, 0, 0]
    padding[axis] = 3
    weight = conv.conv.weight.view(4, 1, *kernel)
    expected = torch.nn.functional.conv3d(x, weight, conv.conv.bias, padding=padding, groups=4)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)
