"""The networks the benchmark compares, built with comparable settings.

Every builder takes ``(in_channels, out_channels, img_size, spacing)`` and
returns a network mapping (B, in_channels, *img_size) to logits
(B, out_channels, *img_size). The settings are the ones MONAI's model zoo
uses for these networks, and nnU-Net's plan for its ResEnc M (the only one
that reads the spacing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.networks.nets import UNETR, DynUNet, SegResNet, SwinUNETR, UNet
from torch import nn

from benchmarks.nnunet import resenc_m
from tokenseg.networks import TokenSeg

__all__ = ["ABLATIONS", "MODELS", "MODEL_SETTINGS", "build_model"]

def _without_token_injection(network: TokenSeg) -> TokenSeg:
    """The no-token ablation: every level's token gate fixed at 0, so the decoder never sees a token."""
    for injection in network.decoder.injections:
        injection.gate.data.zero_()
        injection.gate.requires_grad_(False)
    return network


Builder = Callable[[int, int, Sequence[int], Sequence[float]], nn.Module]

MODELS: dict[str, Builder] = {
    "tokenseg": lambda i, o, s, sp: TokenSeg(i, o, img_size=s),
    "tokenseg_dense": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, selection="all", refinement="dense"),
    "tokenseg_dense_refinement": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, refinement="dense"),
    "tokenseg_refine_all": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, selection="all"),
    "tokenseg_random": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, selection="random"),
    "tokenseg_no_tokens": lambda i, o, s, sp: _without_token_injection(TokenSeg(i, o, img_size=s)),
    "tokenseg_codebook64": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, codebook_size=64),
    "tokenseg_no_vq": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, codebook_size=0),
    "tokenseg_halo1": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, refinement_halo=1),
    "tokenseg_cell_no_norm": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, refinement_norm=False),
    "tokenseg_large": lambda i, o, s, sp: TokenSeg(
        i, o, img_size=s, block_type="residual", token_dim=256, codebook_size=4096, refinement_halo=1
    ),
    "tokenseg_narrow": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, widths=(16, 32, 64, 128)),
    "tokenseg_dca": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, skip_type="dca"),
    "tokenseg_mta": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, token_completion="mta"),
    "tokenseg_instance_norm": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, norm_name="instance"),
    "tokenseg_level_k": lambda i, o, s, sp: TokenSeg(i, o, img_size=s, num_kept_tokens=(20, 44, 20, 16)),
    "unet": lambda i, o, s, sp: UNet(
        3, i, o, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="batch"
    ),
    "unet_instance_norm": lambda i, o, s, sp: UNet(
        3, i, o, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="instance"
    ),
    "segresnet": lambda i, o, s, sp: SegResNet(3, init_filters=8, in_channels=i, out_channels=o),
    "unetr": lambda i, o, s, sp: UNETR(i, o, img_size=s, feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12),
    "swinunetr": lambda i, o, s, sp: SwinUNETR(i, o, feature_size=48),
    "resenc_m": resenc_m,
    # the model zoo's DeepEdit network (spleen_deepedit_annotation); its in_channels include the click channels
    "deepedit": lambda i, o, s, sp: DynUNet(
        3, i, o, kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, [2, 2, 1]], upsample_kernel_size=[2, 2, 2, 2, [2, 2, 1]],
        norm_name="instance", deep_supervision=False, res_block=True,
    ),
}

MODEL_SETTINGS: dict[str, str] = {
    "tokenseg": "TokenSeg defaults: widths 32/64/128/256, decomposed blocks, 400 candidate tokens of 128 on grids of "
    "256/96/32/16 cells, K=100, codebook 512, first level refined in the kept cells only (no halo), batch norm",
    "tokenseg_dense": "TokenSeg defaults with selection='all' and refinement='dense' (K = N, every cell refined: "
    "the dense ablation)",
    "tokenseg_dense_refinement": "TokenSeg defaults with refinement='dense' (K = 100 tokens, the first level convolved "
    "everywhere: TokenSeg 0.4)",
    "tokenseg_refine_all": "TokenSeg defaults with selection='all': every token kept, every first-level cell "
    "refined through the kept-cell path",
    "tokenseg_random": "TokenSeg defaults with selection='random' (K tokens drawn at random)",
    "tokenseg_no_tokens": "TokenSeg defaults with every token gate fixed at 0 (the token path is computed, unused)",
    "tokenseg_codebook64": "TokenSeg defaults with a codebook of 64 codes instead of 512",
    "tokenseg_no_vq": "TokenSeg defaults without quantization (codebook_size=0)",
    "tokenseg_halo1": "TokenSeg defaults with one position of context read around each kept cell (refinement_halo=1)",
    "tokenseg_cell_no_norm": "TokenSeg defaults without norm in the kept first-level cells' blocks "
    "(refinement_norm=False)",
    "tokenseg_large": "TokenSeg 0.8's default: residual blocks (two 3x3x3 convolutions) and 3x3x3 fuses, "
    "tokens of 256, codebook 4096, one position of context around each kept cell",
    "tokenseg_narrow": "TokenSeg defaults with the widths of TokenSeg 0.3, 16/32/64/128",
    "tokenseg_dca": "TokenSeg defaults with Dual Cross-Attention on the skips (skip_type='dca')",
    "tokenseg_mta": "TokenSeg defaults with Multi-layer Token Assembly (token_completion='mta')",
    "tokenseg_instance_norm": "TokenSeg 0.9's default: the defaults with instance norm (norm_name='instance')",
    "tokenseg_level_k": "TokenSeg defaults keeping K per level, (20, 44, 20, 16) of the (256, 96, 32, 16) "
    "candidates, instead of the 100 best of all 400",
    "unet": "UNet channels 16..256, strides 2, 2 residual units, batch norm (spleen_ct_segmentation)",
    "unet_instance_norm": "UNet as above with instance norm instead of batch norm",
    "segresnet": "SegResNet init_filters 8, blocks_down 1/2/2/4",
    "unetr": "UNETR feature_size 16, hidden 768, 12 heads, patch 16",
    "swinunetr": "SwinUNETR feature_size 48, window 7",
    "resenc_m": "nnU-Net ResEnc M (dynamic-network-architectures ResidualEncoderUNet), planned for the patch and spacing",
    "deepedit": "DeepEdit's DynUNet (spleen_deepedit_annotation): 6 levels, strides 1/2/2/2/2/(2,2,1), residual blocks, "
    "instance norm",
}

# Variants of TokenSeg that differ from it in one component; the dense ablation and 0.3's widths are benchmarked always.
ABLATIONS = (
    "tokenseg_dense_refinement",
    "tokenseg_refine_all",
    "tokenseg_random",
    "tokenseg_no_tokens",
    "tokenseg_codebook64",
    "tokenseg_no_vq",
    "tokenseg_dca",
    "tokenseg_mta",
)


def build_model(
    name: str, in_channels: int, out_channels: int, img_size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}.")
    return MODELS[name](in_channels, out_channels, tuple(img_size), tuple(spacing))
