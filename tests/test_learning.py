"""The network can learn: one synthetic lesion through the demo's code, and one small target (the test UNet passes)."""

import pytest

from benchmarks.learning import fit_small_target
from tokenseg.data.synthetic import single_lesion_volume
from tokenseg.demo import evaluate_volume, fit_volume
from tokenseg.uncertainty import boundary_token_entropy

from conftest import tiny_tokenseg

STEPS_TO_FIT = 300


def test_fits_one_lesion_and_keeps_boundary_tokens():
    image, label = single_lesion_volume((32, 32, 32), in_channels=2, seed=1)
    net = tiny_tokenseg(in_channels=2, widths=(16, 32, 64, 128))
    before = evaluate_volume(net, image, label)
    entropy_before = boundary_token_entropy(net, image, (32, 32, 32))
    history = fit_volume(net, image, label, steps=200)
    after = evaluate_volume(net, image, label)
    assert after["dice"] > 0.9, after
    assert after["dice"] > before["dice"]
    assert history[-1]["boundary"] < history[0]["boundary"]
    # the scorer learnt where the boundary is: most kept tokens touch the band (paper: > 60%),
    # where only 88 of the 392 candidate cells do (random selection: about 22%)
    assert after["boundary_hit_rate"] > 0.6, after
    # and it is surer of the boundaries it has learnt
    assert boundary_token_entropy(net, image, (32, 32, 32)) < entropy_before


@pytest.mark.parametrize("model", ["unet", "tokenseg"])
def test_fits_a_small_target(model):
    # one case of the small-target set (a lesion of 0.18% of the voxels, contrast-to-noise near 2) with the
    # bundle's recipe, 300 steps, seed 0: Dice > 0.8 for MONAI's UNet and TokenSeg alike. Here UNet reaches 0.82
    # and TokenSeg 0.89 (over three seeds 0.84 +- 0.02 and 0.89 +- 0.01); TokenSeg 0.4, which convolved the first
    # level everywhere, 0.78, and 0.3 (widths 16..128) 0.72, and 0.04 with seed 1
    curve = fit_small_target(model, steps=STEPS_TO_FIT, seed=0, eval_every=STEPS_TO_FIT)
    assert curve[-1][1] > 0.8, curve
