"""TokenSeg's options from the other seed methods: Dual Cross-Attention skips and Multi-layer Token Assembly."""

import itertools

import pytest
import torch

from tokenseg.data.synthetic import single_lesion_volume
from tokenseg.losses import TokenSegLoss
from tokenseg.networks import TokenSeg

from conftest import tiny_tokenseg

OPTIONS = {
    "dca": dict(skip_type="dca"),
    "mta": dict(token_completion="mta"),
    "dca+mta": dict(skip_type="dca", token_completion="mta"),
}


@pytest.mark.parametrize(
    "option,size,in_channels,batch",
    list(itertools.product(OPTIONS, [(64, 64, 32), (32, 32, 32)], (1, 3), (1, 2))),
)
def test_output_shape(option, size, in_channels, batch):
    net = tiny_tokenseg(in_channels=in_channels, out_channels=3, img_size=size, **OPTIONS[option]).eval()
    with torch.no_grad():
        out = net.forward_tokens(torch.randn(batch, in_channels, *size))
    assert out.logits.shape == (batch, 3, *size)
    assert out.kept_indices.shape == (batch, net.num_kept_tokens)
    assert (out.keep_mask.sum(dim=1) == net.num_kept_tokens).all()


@pytest.mark.parametrize("option", OPTIONS)
def test_gradients_reach_every_parameter_of_the_option(option):
    net = tiny_tokenseg(**OPTIONS[option])
    image, label = single_lesion_volume((32, 32, 32))
    TokenSegLoss(net.grids)(net(image), label).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []
    parts = {"dca": ["skip_attention"], "mta": ["token_assembly"], "dca+mta": ["skip_attention", "token_assembly"]}
    for part in parts[option]:
        assert sum(1 for n, _ in net.named_parameters() if n.startswith(part)) > 0


@pytest.mark.parametrize("option", OPTIONS)
def test_script_and_trace_match_eager(option):
    net = tiny_tokenseg(in_channels=3, out_channels=3, img_size=(64, 64, 32), **OPTIONS[option]).eval()
    x, other = torch.randn(1, 3, 64, 64, 32), torch.randn(1, 3, 64, 64, 32)
    with torch.no_grad():
        eager = net(x)
        assert torch.allclose(torch.jit.script(net)(x), eager, atol=1e-5)
        traced = torch.jit.trace(net, x)
        assert torch.allclose(traced(x), eager, atol=1e-5)
        assert torch.allclose(traced(other), net(other), atol=1e-5)


def _decoder_tokens(net: TokenSeg, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens the decoder paints (B, N, E) and the keep mask (B, N), caught by a hook."""
    caught = {}

    def hook(module, args):
        caught["tokens"], caught["keep"], caught["paint"] = args[1], args[2], args[3]

    handle = net.decoder.register_forward_pre_hook(hook)
    with torch.no_grad():
        net(x)
    handle.remove()
    return caught["tokens"] * caught["paint"][..., None], caught["keep"]


def test_token_assembly_fills_the_dropped_positions():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32, 32)
    painted, keep = _decoder_tokens(tiny_tokenseg().eval(), x)
    dropped = keep == 0
    assert dropped.any() and painted[dropped].abs().sum() == 0  # without MTA: empty where dropped
    torch.manual_seed(0)
    net = tiny_tokenseg(token_completion="mta").eval()
    painted, keep = _decoder_tokens(net, x)
    dropped = keep == 0
    norms = painted.norm(dim=-1)  # (B, N)
    assert (norms[dropped] > 0).all()
    # completed dropped tokens differ from one another (not one shared fill value)
    assert painted[dropped].std(dim=0).mean() > 1e-3


def test_options_are_deterministic_in_inference():
    net = tiny_tokenseg(skip_type="dca", token_completion="mta").eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("kwargs,match", [(dict(skip_type="concat"), "skip_type"),
                                          (dict(token_completion="mim"), "token_completion")])
def test_bad_option_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_tokenseg(**kwargs)


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_bundle_selects_the_options_by_top_level_overrides(config):
    from pathlib import Path

    from monai.bundle import ConfigParser

    path = Path(__file__).resolve().parents[1] / "bundle" / "configs" / config
    parser = ConfigParser()
    parser.read_config(str(path))
    default = parser.get_parsed_content("network_def")
    assert default.skip_attention is None and default.token_assembly is None  # off by default
    parser = ConfigParser()
    parser.read_config(str(path))
    parser.update({"skip_type": "dca", "token_completion": "mta"})  # as `--skip_type dca --token_completion mta`
    net = parser.get_parsed_content("network_def").eval()
    assert net.skip_attention is not None and net.token_assembly is not None
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64, 32)).shape == (1, 2, 64, 64, 32)
