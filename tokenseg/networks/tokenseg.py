"""TokenSeg: hierarchical visual token compression for 3D segmentation.

Where the tensor changes shape, for input x (B, C_in, D, H, W) and L levels:

- encoder:   x -> f_1 .. f_L, f_l (B, C_l, D/2^l, H/2^l, W/2^l)
- tokenizer: f_l -> N candidate tokens (B, N, E) and scores (B, N)
- selection: scores -> K kept indices (B, K) and a 0/1 keep mask (B, N), the K
  best of all N or, with K per level, the K_l best of each level's; with
  ``guidance_channels`` (the interactive model) every cell under a click is kept,
  K (or K_l) growing to the number of clicked cells when they are more
- mixer:     kept tokens (B, K, E) -> (B, K, E) (transformer blocks)
- optional, ``token_completion="mta"``: kept and pruned tokens -> completed tokens (B, N, E)
- optional, ``skip_type="dca"``: skip levels f_1 .. f_{L-1} -> same shapes (dual cross-attention)
- decoder:   kept tokens back into their cells, upsampling with skips -> (B, C_1, D/2, H/2, W/2);
             with ``refinement="kept"`` the first level's convolutions (its
             encoder blocks and the decoder's) run only in the kept first-level cells
- head:      transposed conv straight to the classes -> logits (B, C_out, D, H, W)

``forward`` returns the logits, except in a training step (train mode with
gradients enabled), where it returns the dictionary of ``TokenSegOutput``
fields the loss needs, as MONAI's DynUNet returns its deep-supervision heads
in training: every value is batch-first, so ``DataParallel`` gathers it and
DDP sees it, and nothing is kept on the module between calls.
``forward_tokens`` returns the full ``TokenSegOutput`` in any mode.
"""

import logging
import math
from collections.abc import Sequence
from typing import Dict, List, NamedTuple, Optional, Union

import torch
from monai.networks.blocks import Convolution
from monai.utils import ensure_tuple_rep
from torch import nn

from tokenseg.networks.blocks import BLOCK_TYPES, EncoderStage, TokenMixerBlock
from tokenseg.networks.cells import token_grids
from tokenseg.networks.click_cells import clicked_cells
from tokenseg.networks.decoder import SparseToDenseDecoder
from tokenseg.networks.dual_cross_attention import DualCrossAttention
from tokenseg.networks.selection import SELECTION_MODES, select_tokens_per_level
from tokenseg.networks.token_assembly import MultiLayerTokenAssembly
from tokenseg.networks.tokenizer import BoundaryAwareTokenizer

__all__ = ["TokenSeg", "TokenSegOutput", "SKIP_TYPES", "TOKEN_COMPLETIONS"]

SKIP_TYPES = ("plain", "dca")
TOKEN_COMPLETIONS = ("none", "mta")

logger = logging.getLogger(__name__)

_RANDOM_SELECTION_SEED = 0
# added to the scores of clicked cells: above any learned score, so top-K keeps them
_CLICK_SCORE_BONUS = 1.0e4


class TokenSegOutput(NamedTuple):
    """Everything a forward pass computes that the loss and diagnostics read (N candidates, K kept, E wide)."""

    logits: torch.Tensor  # (B, C_out, D, H, W)
    scores: torch.Tensor  # (B, N) importance logits
    kept_indices: torch.Tensor  # (B, K) indices into the N candidate tokens, ascending
    keep_mask: torch.Tensor  # (B, N) float32 0/1 forward, straight-through gradient in soft top-K training
    vq_loss: torch.Tensor  # (B,) commitment loss of each sample
    content: torch.Tensor  # (B, N, E) content tokens before quantization (for the codebook update)
    code_indices: torch.Tensor  # (B, N) codebook entry of each candidate token


class TokenSeg(nn.Module):
    """TokenSeg network (Zeng et al., arXiv 2601.04519), with the design choices of docs/design.md.

    ``token_cells`` (N, 4) gives each candidate token's level (1 .. L, stride
    ``2 ** level``) and cell index (cell_d, cell_h, cell_w) on that level's grid.

    Args:
        in_channels: input channels (e.g. DCE-MRI phases), guidance channels included.
        out_channels: output classes, background included.
        img_size: the patch size (D, H, W) the cell grids are laid out for;
            each a multiple of ``2 ** len(widths)``. Other sizes whose every
            level still has at least one position per cell also work.
        widths: channels of the encoder levels, finest first; its length is
            the number of levels L (strides 2, 4, ..., 2^L). The default,
            32..256 (the original design's), learns a small low-contrast target
            in as many steps as MONAI's UNet; 16..128 (TokenSeg 0.3) costs 0.28
            of its FLOPs at 96^3 but needs more steps and at times fails to fit
            at all (docs/benchmarks.md, "Learning small targets").
        depths: blocks per level after the strided convolution (int or per level).
        block_type: the family of the encoder's blocks, the kept-cell
            refinement's and the decoder's fuses: ``"decomposed"`` (DCFormer:
            three depthwise 1-D convolutions and a pointwise MLP, 6-13x fewer
            multiply-adds than a 3x3x3 convolution at 32-256 channels) or
            ``"residual"`` (MONAI's UnetResBlock, 3x3x3 fuses: TokenSeg 0.8,
            4.3x UNet's FLOPs as trained; ``docs/benchmarks.md``, "Cost").
        tokens_per_level: requested cells (candidate tokens) per level, finest
            first; a level gets at most as many as it has positions. The
            default (256, 96, 32, 16) puts 400 candidates on four distinct
            grids, about halving the number of cells per coarser level: a
            level-1 cell covers 1/16 of the volume of a level-4 cell (8^3
            voxels against 32x16x16 at a 64x64x32 patch), so fine tokens can
            place a boundary where coarse ones only say "somewhere here".
            Each count factors into a grid at 96^3, 160^3, 64x64x32 and
            64x64x16 alike, so N = 400 at all of them.
        num_kept_tokens: K, tokens kept after scoring: an int keeps the K
            best-scored of all N candidates, whatever their level; a sequence
            (K_1, ..., K_L), finest first, keeps the K_l best of each level's
            candidates (K their sum). Per level, the first level's share
            (the kept-cell refinement's work) is a choice, not an accident of
            the scores: ranked together, the trained default keeps 61-68
            first-level cells a demo window where about 20 touch the boundary
            band; (20, 44, 20, 16) puts 0.61 of them on it, at 5% fewer FLOPs
            and 0.3 points less demo Dice (``docs/benchmarks.md``, "K per level").
        token_dim: token width E (128: the mixer's cost falls 4x from 256's).
        codebook_size: VQ codebook entries M (512; 4096 cost 0.84 GFLOPs of
            distances a window and fitted no better); 0 turns quantization off (an ablation).
        commitment_beta: VQ commitment weight.
        ema_decay: VQ codebook EMA decay.
        selection: one of ``SELECTION_MODES``: ``"soft_topk"`` (Gumbel, straight-through),
            ``"topk"``, ``"random"``, ``"all"`` (dense ablation, K = N).
        refinement: where the first level (half resolution, about half of a
            dense pass's work) is convolved: ``"kept"``, only inside the kept
            first-level cells (its encoder blocks run there, in the decoder;
            the coarser levels read the stem's output); ``"dense"``,
            everywhere (TokenSeg 0.4).
        refinement_halo: context positions read around each kept first-level
            cell by ``"kept"`` refinement (``KeptCellUpBlock``); each halo
            position is paid for in every kept cell (a 4^3 cell with a halo of
            1 is a 6^3 crop: 3.4x its work), so the default reads none and each
            kept cell is refined from its own positions, its context coming
            from the dense coarser path added to it.
        refinement_norm: whether the kept first-level cells' blocks normalise
            (``norm_name``); ``False`` leaves those blocks without norm
            (decomposed blocks only). With instance norm this matters: it is
            computed on each cell's crop alone.
        skip_type: ``"plain"`` (the encoder's features are the decoder's
            skips) or ``"dca"``: Dual Cross-Attention over the skip levels
            (``DualCrossAttention``, Ates et al. 2023).
        token_completion: ``"none"`` (dropped tokens stay empty in the
            decoder) or ``"mta"``: Multi-layer Token Assembly fills them from
            the tokenizer's tokens and mixes all N (``MultiLayerTokenAssembly``,
            Zhou et al. 2023); the first level is still refined only in the
            kept cells.
        gumbel_tau: temperature of the soft top-K.
        mixer_depth: transformer blocks over the kept tokens.
        mixer_heads: attention heads in the mixer.
        norm_name: MONAI norm name. Batch norm (MONAI UNet's in the model
            zoo's bundles): instance norm rescales every sliding window (and
            every kept cell's crop) to its own statistics, so in a window
            without the target the strongest noise looks like one; on the
            small-target set it scattered false positives and cost 6 points of
            Dice (UNet with instance norm loses 3; ``docs/benchmarks.md``).
        act_name: MONAI activation name.
        dropout: dropout rate used throughout (MONAI Label's epistemic scoring sets it).
        guidance_channels: the interactive model: the last ``guidance_channels``
            of the ``in_channels`` are DeepEdit's click channels (one per label,
            background included; ``monai.apps.deepedit``), 0 for the automatic model.
        keep_clicked_cells: with guidance channels, keep the token of every
            cell under a click at every level, whatever its score
            (``tokenseg.networks.click_cells``); when the clicked cells outnumber
            ``num_kept_tokens``, that many are kept (K grows for them). False
            leaves selection to the scores.

    Examples::

        >>> net = TokenSeg(in_channels=1, out_channels=2, img_size=(64, 64, 32))
        >>> net.eval()(torch.rand(1, 1, 64, 64, 32)).shape
        torch.Size([1, 2, 64, 64, 32])
        >>> out = net.forward_tokens(torch.rand(2, 1, 64, 64, 32))
        >>> out.scores.shape[1] == net.num_tokens, out.kept_indices.shape[1] == net.num_kept_tokens
        (True, True)
    """

    # TorchScript cannot type an empty list from its value, and reads a class annotation only as a real
    # type (so this module has no `from __future__ import annotations`)
    kept_per_level: List[int]  # K_l of each level; empty: the K best of all levels together

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        img_size: Sequence[int] | int = (96, 96, 96),
        widths: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] | int = 1,
        block_type: str = "decomposed",
        tokens_per_level: Sequence[int] | int = (256, 96, 32, 16),
        num_kept_tokens: Sequence[int] | int = 100,
        token_dim: int = 128,
        codebook_size: int = 512,
        commitment_beta: float = 0.25,
        ema_decay: float = 0.99,
        selection: str = "soft_topk",
        refinement: str = "kept",
        refinement_halo: int = 0,
        refinement_norm: bool = True,
        skip_type: str = "plain",
        token_completion: str = "none",
        gumbel_tau: float = 1.0,
        mixer_depth: int = 2,
        mixer_heads: int = 8,
        norm_name: str | tuple = "batch",
        act_name: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float = 0.0,
        guidance_channels: int = 0,
        keep_clicked_cells: bool = True,
    ) -> None:
        super().__init__()
        num_levels = len(widths)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.divisor = 2**num_levels
        self.img_size = ensure_tuple_rep(img_size, 3)
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}.")
        if selection not in SELECTION_MODES:
            raise ValueError(f"selection must be one of {SELECTION_MODES}, got {selection!r}.")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}.")
        if token_completion not in TOKEN_COMPLETIONS:
            raise ValueError(f"token_completion must be one of {TOKEN_COMPLETIONS}, got {token_completion!r}.")
        if not 0 <= guidance_channels < in_channels:
            raise ValueError(
                f"guidance_channels must be at least 0 and below in_channels ({in_channels}), got {guidance_channels}."
            )
        if token_dim % mixer_heads:
            raise ValueError(f"token_dim ({token_dim}) must be divisible by mixer_heads ({mixer_heads}).")
        self._check_spatial(self.img_size, "img_size")
        depths = ensure_tuple_rep(depths, num_levels)
        tokens_per_level = ensure_tuple_rep(tokens_per_level, num_levels)

        self.grids: List[List[int]] = token_grids(self.img_size, tokens_per_level)
        for level, (grid, requested) in enumerate(zip(self.grids, tokens_per_level), start=1):
            if math.prod(grid) < requested:
                logger.info(
                    f"TokenSeg level {level} ({[s // 2**level for s in self.img_size]}) has room for "
                    f"{math.prod(grid)} of the {requested} requested tokens: grid {grid}."
                )
        cells_per_level = [math.prod(g) for g in self.grids]
        self.num_tokens = sum(cells_per_level)
        self.selection = selection
        self.kept_per_level = []
        if isinstance(num_kept_tokens, int) or selection == "all":
            self.num_kept_tokens = self.num_tokens if selection == "all" else int(num_kept_tokens)
        else:
            self.kept_per_level = [int(k) for k in num_kept_tokens]
            if len(self.kept_per_level) != num_levels or any(
                not 0 <= k <= n for k, n in zip(self.kept_per_level, cells_per_level)
            ):
                raise ValueError(
                    f"num_kept_tokens per level must be {num_levels} counts, each between 0 and its level's "
                    f"candidates {cells_per_level} (grids {self.grids} for img_size {self.img_size}), "
                    f"got {tuple(num_kept_tokens)}."
                )
            self.num_kept_tokens = sum(self.kept_per_level)
        if not 1 <= self.num_kept_tokens <= self.num_tokens:
            raise ValueError(
                f"num_kept_tokens (K) must be between 1 and the number of candidate tokens N = {self.num_tokens} "
                f"(grids {self.grids} for img_size {self.img_size}), got K = {num_kept_tokens}."
            )
        self.gumbel_tau = gumbel_tau
        self.guidance_channels = guidance_channels
        self.keep_clicked_cells = keep_clicked_cells and guidance_channels > 0
        self.click_score_bonus = _CLICK_SCORE_BONUS

        channels = [in_channels, *widths]
        # with "kept" refinement the first level's blocks run in the decoder, in the kept cells only
        encoder_depths = [0 if i == 0 and refinement == "kept" else depths[i] for i in range(num_levels)]
        self.encoder = nn.ModuleList(
            EncoderStage(channels[i], channels[i + 1], encoder_depths[i], block_type, norm_name, act_name, dropout)
            for i in range(num_levels)
        )
        self.tokenizer = BoundaryAwareTokenizer(
            widths, self.grids, token_dim, codebook_size, commitment_beta, ema_decay, dropout=dropout
        )
        self.mixer = nn.Sequential(
            *(TokenMixerBlock(token_dim, 4 * token_dim, mixer_heads, dropout) for _ in range(mixer_depth))
        )
        self.token_assembly: Optional[MultiLayerTokenAssembly] = None
        if token_completion == "mta":
            self.token_assembly = MultiLayerTokenAssembly(self.num_tokens, token_dim, mixer_heads, dropout)
        self.skip_attention: Optional[DualCrossAttention] = None
        if skip_type == "dca":
            self.skip_attention = DualCrossAttention(widths[:-1], norm_name, act_name)
        self.decoder = SparseToDenseDecoder(
            widths, self.grids, token_dim, norm_name, act_name, dropout, refinement, depths[0], block_type,
            refinement_halo, refinement_norm,
        )
        # Like MONAI's UNet, the only full-resolution layer makes the logits: a
        # C-channel full-resolution feature map would cost more time and
        # training memory than the whole token path (measured: 9% of inference).
        self.head = Convolution(3, widths[0], out_channels, strides=2, kernel_size=3, is_transposed=True, conv_only=True)
        addresses = [
            torch.cat([torch.full((math.prod(g), 1), level), torch.cartesian_prod(*map(torch.arange, g)).view(-1, 3)], 1)
            for level, g in enumerate(self.grids, start=1)
        ]
        # (N, 4): level (1 .. L) and cell index of every candidate token, in token order.
        self.register_buffer("token_cells", torch.cat(addresses), persistent=False)
        # The fixed draw of "random" selection in evaluation, so that inference is deterministic.
        generator = torch.Generator().manual_seed(_RANDOM_SELECTION_SEED)
        self.register_buffer("random_eval_noise", torch.rand(self.num_tokens, generator=generator), persistent=False)

    @torch.jit.unused
    def _check_spatial(self, size: Sequence[int], what: str) -> None:
        if len(size) != 3 or any(s <= 0 or s % self.divisor for s in size):
            raise ValueError(
                f"TokenSeg {what} must be three sizes each a positive multiple of {self.divisor} "
                f"(2 ** number of levels), got {tuple(size)}."
            )

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"TokenSeg expects input of shape (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}."
            )
        self._check_spatial(x.shape[2:], "input spatial size")
        for level, grid in enumerate(self.grids, start=1):
            level_size = [s // 2**level for s in x.shape[2:]]
            if any(n < g for n, g in zip(level_size, grid)):
                raise ValueError(
                    f"TokenSeg input spatial size {tuple(x.shape[2:])} is too small for the cell grid {grid} of "
                    f"level {level} (built for img_size {self.img_size}); level {level} has only {level_size} positions."
                )

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: (B, in_channels, D, H, W) -> the encoder levels' features, finest first: (B, widths[l], D / 2^(l+1), ...)."""
        features: List[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        return features

    def forward_tokens(self, x: torch.Tensor) -> TokenSegOutput:
        """x: (B, in_channels, D, H, W) -> ``TokenSegOutput`` (logits and the token path's results)."""
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input(x)
        selection_bonus = torch.zeros(1, device=x.device)
        # the groups ranked apart: each level with K per level, else all N candidates as one
        per_level = len(self.kept_per_level) > 0
        group_sizes = self.decoder.cells_per_level if per_level else [self.num_tokens]
        group_kept = self.kept_per_level if per_level else [self.num_kept_tokens]
        if self.keep_clicked_cells:
            guidance = x[:, x.shape[1] - self.guidance_channels :]
            clicked = clicked_cells(guidance, self.grids)  # (B, N)
            selection_bonus = self.click_score_bonus * clicked
            # more clicked cells than a group's K (a click marks a cell on every level): that K grows so that every
            # one stays kept
            group_clicked = clicked.split(group_sizes, dim=1)
            group_kept = [max(k, int(c.sum(dim=1).max().item())) for k, c in zip(group_kept, group_clicked)]
        features = self.encode(x)
        tokenized = self.tokenizer(features)
        kept_indices, keep_mask = select_tokens_per_level(
            tokenized.scores.float() + selection_bonus,
            group_kept,
            group_sizes,
            self.selection,
            self.training,
            self.gumbel_tau,
            self.random_eval_noise,
        )
        index = kept_indices[..., None].expand(-1, -1, tokenized.tokens.shape[-1])
        mixed = self.mixer(tokenized.tokens.gather(1, index))  # (B, K, E)
        # Kept tokens carry the mixer's output; the decoder zeroes the others with
        # the keep mask, whose soft gradient tells the scorer what keeping them
        # would have changed.
        tokens = tokenized.tokens.scatter(1, index, mixed)
        paint_mask = keep_mask
        if self.token_assembly is not None:  # every position gets a token; refinement still follows keep_mask
            tokens = self.token_assembly(tokens, tokenized.tokens, keep_mask)
            paint_mask = torch.ones_like(keep_mask)
        if self.skip_attention is not None:
            features = self.skip_attention(features[:-1]) + features[-1:]
        logits = self.head(self.decoder(features, tokens, keep_mask, paint_mask))
        return TokenSegOutput(
            logits,
            tokenized.scores,
            kept_indices,
            keep_mask,
            tokenized.vq_loss,
            tokenized.content,
            tokenized.code_indices,
        )

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """x: (B, in_channels, D, H, W) -> logits (B, out_channels, D, H, W).

        In a training step (train mode, gradients enabled) the dictionary of
        ``TokenSegOutput`` fields instead, for ``TokenSegLoss``. Train mode
        under ``torch.no_grad`` (dropout sampling) returns logits.
        """
        output = self.forward_tokens(x)
        if self.training and torch.is_grad_enabled():
            return {
                "logits": output.logits,
                "scores": output.scores,
                "kept_indices": output.kept_indices,
                "keep_mask": output.keep_mask,
                "vq_loss": output.vq_loss,
                "content": output.content,
                "code_indices": output.code_indices,
            }
        return output.logits
