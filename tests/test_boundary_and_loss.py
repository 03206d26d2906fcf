"""Boundary band, token boundary targets, the loss terms and the boundary hit rate."""

import math

import pytest
import torch

from tokenseg.boundary import boundary_band, token_boundary_targets
from tokenseg.losses import TokenSegLoss
from tokenseg.metrics import boundary_hit_rate, boundary_hit_rate_per_level
from tokenseg.networks.cells import choose_grid, expand_cells, pool_to_cells

from conftest import tiny_tokenseg


def cube_label(size=32, lo=4, hi=28):
    label = torch.zeros(1, 1, size, size, size)
    label[..., lo:hi, lo:hi, lo:hi] = 1
    return label


def test_band_of_a_cube():
    band = boundary_band(cube_label(), radius=1)[0, 0]
    # one layer outside ([3, 28]) and one inside the cube ([5, 26] excluded): 26^3 - 22^3 voxels
    expected = torch.zeros(32, 32, 32)
    expected[3:29, 3:29, 3:29] = 1
    expected[5:27, 5:27, 5:27] = 0
    assert band.sum() == 26**3 - 22**3
    assert torch.equal(band, expected)


def test_band_radius_two_is_thicker():
    assert boundary_band(cube_label(), radius=2).sum() == 28**3 - 20**3


def test_band_of_a_one_hot_label_matches_class_indices():
    label = cube_label()
    one_hot = torch.cat([1 - label, label], dim=1)
    assert torch.equal(boundary_band(one_hot), boundary_band(label))


def test_token_targets_of_a_cube():
    band = boundary_band(cube_label(), radius=1)
    # level 1 (stride 2): 16 positions per axis, 8 cells of 4 voxels; level 2 (stride 4): 4 cells of 8 voxels
    targets = token_boundary_targets(band, [(8, 8, 8), (4, 4, 4)])
    assert targets.shape == (1, 512 + 64)
    level1 = targets[0, :512].view(8, 8, 8)
    level2 = targets[0, 512:].view(4, 4, 4)
    # a cell stays clear of the band only if it lies inside [5, 26] on every axis
    inside1 = torch.tensor([4 * c >= 5 and 4 * c + 3 <= 26 for c in range(8)])
    inside2 = torch.tensor([8 * c >= 5 and 8 * c + 7 <= 26 for c in range(4)])
    clear1 = inside1[:, None, None] & inside1[None, :, None] & inside1[None, None, :]
    clear2 = inside2[:, None, None] & inside2[None, :, None] & inside2[None, None, :]
    assert torch.equal(level1, (~clear1).float()) and level1.sum() == 512 - 64
    assert torch.equal(level2, (~clear2).float()) and level2.sum() == 64 - 8


def test_cells_pool_and_expand_agree_on_uneven_sizes():
    # 10 positions in 4 cells: cell of position j is floor(j * 4 / 10) -> sizes 3, 2, 3, 2
    x = torch.arange(10.0).view(1, 1, 10, 1, 1)
    pooled = pool_to_cells(x, (4, 1, 1))
    assert torch.allclose(pooled.flatten(), torch.tensor([1.0, 3.5, 6.0, 8.5]))
    painted = expand_cells(pooled, (10, 1, 1)).flatten()
    assert torch.allclose(painted, torch.tensor([1.0, 1, 1, 3.5, 3.5, 6, 6, 6, 8.5, 8.5]))


@pytest.mark.parametrize(
    "size,tokens,expected",
    [((48, 48, 48), 100, (4, 5, 5)), ((2, 2, 2), 100, (2, 2, 2)), ((6, 6, 3), 100, (6, 5, 3)), ((12, 12, 6), 64, (4, 4, 4))],
)
def test_choose_grid(size, tokens, expected):
    grid = choose_grid(size, tokens)
    assert sorted(grid) == sorted(expected) and grid[0] * grid[1] * grid[2] == expected[0] * expected[1] * expected[2]
    assert all(g <= s for g, s in zip(grid, size))


def test_loss_reports_each_term_and_sums_them():
    net = tiny_tokenseg()
    label = cube_label(lo=8, hi=20)
    loss_function = TokenSegLoss(net.grids, vq_weight=0.5, boundary_weight=0.2)
    output = net(torch.randn(1, 1, 32, 32, 32))
    total = loss_function(output, label)
    terms = {name: value.item() for name, value in loss_function.terms(output, label).items()}
    assert set(terms) == {"dice_ce", "vq", "boundary", "total"}
    assert all(v > 0 for v in terms.values())
    assert terms["total"] == pytest.approx(terms["dice_ce"] + 0.5 * terms["vq"] + 0.2 * terms["boundary"], rel=1e-5)
    assert total.item() == pytest.approx(terms["total"])


def test_loss_needs_the_training_output_and_matching_shapes():
    net = tiny_tokenseg()
    with pytest.raises(TypeError, match="training output"):
        TokenSegLoss(net.grids)(torch.randn(1, 2, 32, 32, 32), cube_label())
    output = net(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="do not match"):
        TokenSegLoss(net.grids)(output, torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="pass the grids the network was built with"):
        TokenSegLoss([[2, 2, 2]] * 4)(output, cube_label())
    with pytest.raises(TypeError, match="not the network"):
        TokenSegLoss(net)


def test_boundary_hit_rate_counts_kept_tokens_on_the_band():
    label = cube_label(lo=8, hi=20)
    targets = token_boundary_targets(boundary_band(label), tiny_tokenseg().grids)
    share_on_band = targets.mean().item()
    # random selection hits the band about as often as the band's share of cells
    net = tiny_tokenseg(selection="random").eval()
    with torch.no_grad():
        out = net.forward_tokens(torch.randn(1, 1, 32, 32, 32))
    rate = boundary_hit_rate(out.kept_indices, label, net.grids).item()
    assert abs(rate - share_on_band) < 0.25
    # keeping every token gives exactly the band's share
    dense = tiny_tokenseg(selection="all").eval()
    with torch.no_grad():
        dense_out = dense.forward_tokens(torch.randn(1, 1, 32, 32, 32))
    assert boundary_hit_rate(dense_out.kept_indices, label, dense.grids).item() == pytest.approx(share_on_band)


def test_boundary_hit_rate_per_level():
    label = cube_label(lo=8, hi=20)
    dense = tiny_tokenseg(selection="all").eval()
    with torch.no_grad():
        kept = dense.forward_tokens(torch.randn(1, 1, 32, 32, 32)).kept_indices
    targets = token_boundary_targets(boundary_band(label), dense.grids)
    per_level = boundary_hit_rate_per_level(kept, label, dense.grids)
    expected = [level.mean().item() for level in targets[0].split([math.prod(g) for g in dense.grids])]
    assert per_level.tolist() == pytest.approx(expected)
    # a level none of whose tokens was kept has no rate
    first_level_only = torch.arange(10)[None]
    rates = boundary_hit_rate_per_level(first_level_only, label, dense.grids)
    assert rates[0].item() == pytest.approx(targets[0, :10].mean().item()) and rates[1:].isnan().all()
