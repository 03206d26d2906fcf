"""The kept-cell mask and what active learning reads: boundary-token entropy, uncertain volume, image embedding."""

import math

import torch

from tokenseg.boundary import token_boundary_targets
from tokenseg.uncertainty import boundary_token_entropy, image_embedding, kept_cell_mask, uncertain_volume

from conftest import tiny_tokenseg


def test_dense_selection_covers_every_voxel():
    net = tiny_tokenseg(selection="all").eval()
    out = net.forward_tokens(torch.randn(1, 1, 32, 32, 32))
    assert torch.equal(kept_cell_mask(net, out.keep_mask, (32, 32, 32)), torch.ones(1, 1, 32, 32, 32))


def test_mask_covers_exactly_the_kept_cells():
    net = tiny_tokenseg(num_kept_tokens=5, tokens_per_level=(100, 100, 100, 8)).eval()
    out = net.forward_tokens(torch.randn(2, 1, 32, 32, 32))
    mask = kept_cell_mask(net, out.keep_mask, (32, 32, 32))
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # every kept token's cell lies inside the mask ...
    targets = token_boundary_targets(mask, net.grids)
    assert (targets.gather(1, out.kept_indices) == 1).all()
    # ... and a mask of one kept token's cell is exactly that cell's voxels
    keep = torch.zeros_like(out.keep_mask)
    keep[0, 0] = 1  # level 1 (stride 2), cell (0, 0, 0) of a 4 x 5 x 5 grid on 16^3 positions
    single = kept_cell_mask(net, keep, (32, 32, 32))[0, 0]
    d, h, w = (math.ceil(16 / g) * 2 for g in net.grids[0])
    assert single.sum() == d * h * w and single[:d, :h, :w].all()


def test_entropy_is_bounded_and_deterministic():
    net = tiny_tokenseg()
    image = torch.randn(1, 1, 40, 48, 36)  # not a multiple of the window: sliding windows pad
    first = boundary_token_entropy(net, image, (32, 32, 32))
    assert 0 <= first <= math.log(2) + 1e-6
    assert boundary_token_entropy(net, image, (32, 32, 32)) == first


def test_entropy_leaves_the_network_in_its_mode():
    image = torch.randn(1, 1, 32, 32, 32)
    for training in (True, False):
        net = tiny_tokenseg().train(training)
        boundary_token_entropy(net, image, (32, 32, 32))
        assert net.training is training
        assert all(module.training is training for module in net.modules())


def test_uncertain_volume_counts_the_voxels_torn_between_background_and_label():
    net = tiny_tokenseg()
    image = torch.randn(1, 1, 40, 48, 36)
    head = net.head.conv  # the last layer: its bias alone sets the foreground probability of every voxel
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, math.log(0.5 / 0.5)]))  # foreground 0.5 everywhere: all torn
        assert uncertain_volume(net, image, (32, 32, 32)) == 1.0
        head.bias.copy_(torch.tensor([0.0, math.log(0.05 / 0.95)]))  # foreground 0.05: sure it is background
        assert uncertain_volume(net, image, (32, 32, 32)) == 0.0
        head.bias.copy_(torch.tensor([0.0, math.log(0.95 / 0.05)]))  # foreground 0.95: sure it is lesion
        assert uncertain_volume(net, image, (32, 32, 32)) == 0.0
    trained = tiny_tokenseg().train()
    share = uncertain_volume(trained, image, (32, 32, 32))
    assert 0.0 <= share <= 1.0 and trained.training  # a share, and the caller's mode kept


def test_embedding_is_the_deepest_level_averaged_over_the_image():
    net = tiny_tokenseg().eval()
    image = torch.randn(1, 1, 32, 32, 32)  # one window: the embedding is that window's pooled features
    embedding = image_embedding(net, image, (32, 32, 32))
    x = image
    with torch.no_grad():
        for stage in net.encoder:
            x = stage(x)
    assert torch.allclose(torch.tensor(embedding), x.mean(dim=(2, 3, 4))[0], atol=1e-5)
    other = image_embedding(net, torch.randn(1, 1, 40, 48, 36), (32, 32, 32))  # several windows
    assert len(other) == len(embedding) and other != embedding
    trained = tiny_tokenseg().train()
    image_embedding(trained, image, (32, 32, 32))
    assert trained.training
