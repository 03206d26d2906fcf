"""TokenSeg's FLOPs against the number of first-level cells it refines.

    python -m benchmarks.kept_flops --sizes 96x96x96 160x160x160 256x256x128 64x64x32 --kept 0 25 50 100

With ``refinement="kept"`` the first level is convolved only in the kept
first-level cells, so one forward pass costs a fixed part plus a part per
kept first-level cell, and how many of the K kept tokens fall on the first
level is the trained scorer's choice. For each size this forces that count
(a forward hook on the scorer puts the top scores on ``kept`` first-level
cells and on ``K - kept`` coarser ones), counts one forward pass with
PyTorch's FLOP counter, and prints it with its ratio to the dense ablation
(``selection="all", refinement="dense"``) at the same size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from benchmarks.measure import forward_gflops, module_gflops
from tokenseg.networks import TokenSeg

__all__ = [
    "most_kept_first_level", "kept_first_level", "gflops_with_kept_first_level", "module_gflops_with_kept_first_level",
    "main",
]


def most_kept_first_level(network: TokenSeg) -> int:
    """The most first-level cells ``network`` refines without clicks: its K_1 with K per level, else min(K, N_1)."""
    if network.kept_per_level:
        return network.kept_per_level[0]
    return min(network.num_kept_tokens, network.decoder.cells_per_level[0])


@contextlib.contextmanager
def kept_first_level(network: TokenSeg, batch: int, kept: int) -> Iterator[None]:
    """While open, ``network`` keeps ``kept`` first-level cells and ``K - kept`` coarser ones (a forward hook
    puts the top scores there), whatever its scorer says. A network with K per level always keeps its K_1."""
    first_level = network.decoder.cells_per_level[0]
    coarser = network.num_kept_tokens - kept
    if network.kept_per_level and kept != network.kept_per_level[0]:
        raise ValueError(f"a network with K per level {network.kept_per_level} keeps {network.kept_per_level[0]} "
                         f"first-level cells, not {kept}.")
    if not 0 <= kept <= min(first_level, network.num_kept_tokens) or coarser > network.num_tokens - first_level:
        raise ValueError(f"cannot keep {kept} first-level cells of {first_level} with K = {network.num_kept_tokens}.")
    scores = torch.full((batch, network.num_tokens, 1), -10.0)
    scores[:, :kept] = 10.0
    scores[:, first_level : first_level + coarser] = 10.0
    hook = network.tokenizer.scorer.register_forward_hook(lambda _module, _inputs, output: scores.to(output))
    try:
        yield
    finally:
        hook.remove()


def gflops_with_kept_first_level(network: TokenSeg, x: torch.Tensor, kept: int) -> float:
    """GFLOPs of one forward pass in which ``kept`` of the K kept tokens are first-level cells."""
    with kept_first_level(network, x.shape[0], kept):
        return forward_gflops(network, x)


def module_gflops_with_kept_first_level(network: TokenSeg, x: torch.Tensor, kept: int) -> dict[str, float]:
    """``benchmarks.measure.module_gflops`` of one forward pass with ``kept`` first-level cells kept."""
    with kept_first_level(network, x.shape[0], kept):
        return module_gflops(network, x)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["96x96x96", "160x160x160", "256x256x128", "64x64x32"])
    parser.add_argument("--kept", type=int, nargs="+", default=[0, 25, 50, 100])
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    print("| size | first-level grid | " + " | ".join(f"{k} kept: GFLOPs (/ dense)" for k in args.kept)
          + " | dense ablation GFLOPs |")
    print("|---" * (len(args.kept) + 3) + "|")
    for size_text in args.sizes:
        size = [int(s) for s in size_text.split("x")]
        x = torch.zeros(1, 1, *size)
        dense = forward_gflops(TokenSeg(1, 2, img_size=size, selection="all", refinement="dense"), x)
        network = TokenSeg(1, 2, img_size=size)
        gflops = [gflops_with_kept_first_level(network, x, kept) for kept in args.kept]
        rows.append({"size": size, "first_level_grid": network.grids[0], "kept_first_level": args.kept,
                     "gflops": gflops, "dense_gflops": dense})
        cells = " | ".join(f"{g:.1f} ({g / dense:.2f})" for g in gflops)
        print(f"| {size_text} | {'x'.join(map(str, network.grids[0]))} | {cells} | {dense:.1f} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
