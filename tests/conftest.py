import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


def tiny_tokenseg(**overrides):
    """A small TokenSeg for fast CPU tests; every default but the widths and sizes kept."""
    from tokenseg.networks import TokenSeg

    kwargs = dict(in_channels=1, out_channels=2, img_size=(32, 32, 32), widths=(8, 16, 32, 64), token_dim=64,
                  codebook_size=256, mixer_heads=4)
    kwargs.update(overrides)
    return TokenSeg(**kwargs)
