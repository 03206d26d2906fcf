"""The network can learn: fit one synthetic lesion, through the same code the demo runs."""

from tokenseg.data.synthetic import single_lesion_volume
from tokenseg.demo import evaluate_volume, fit_volume
from tokenseg.uncertainty import boundary_token_entropy

from conftest import tiny_tokenseg


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
    # where only 76 of the 272 candidate cells do (random selection: about 28%)
    assert after["boundary_hit_rate"] > 0.6, after
    # and it is surer of the boundaries it has learnt
    assert boundary_token_entropy(net, image, (32, 32, 32)) < entropy_before
