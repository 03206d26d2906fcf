"""Forward/backward demo: fit a TokenSeg to one synthetic volume and report what it learns.

    python -m tokenseg.demo --steps 200
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from tokenseg.data.synthetic import single_lesion_volume
from tokenseg.losses import TokenSegLoss
from tokenseg.metrics import boundary_hit_rate, codebook_perplexity
from tokenseg.networks import TokenSeg

__all__ = ["fit_volume", "evaluate_volume", "main"]

logger = logging.getLogger("tokenseg.demo")


def fit_volume(
    network: TokenSeg, image: torch.Tensor, label: torch.Tensor, steps: int, lr: float = 3e-3, log_every: int = 25
) -> list[dict[str, float]]:
    """Train ``network`` on one (image, label) pair for ``steps`` Adam steps; returns the loss terms per step."""
    loss_function = TokenSegLoss(network.grids)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr)
    history = []
    network.train()
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        output = network(image)
        terms = loss_function.terms(output, label)
        terms["total"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in terms.items()})
        if step % log_every == 0 or step == steps:
            text = ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items())
            perplexity = codebook_perplexity(output["code_indices"])
            logger.info(f"step {step}/{steps}: {text}, codebook perplexity {perplexity.item():.1f}")
    return history


@torch.no_grad()
def evaluate_volume(network: TokenSeg, image: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """Dice of the foreground classes and the boundary hit rate, in inference mode."""
    network.eval()
    output = network.forward_tokens(image)
    prediction = output.logits.argmax(dim=1, keepdim=True)
    classes = network.out_channels
    dice = compute_dice(one_hot(prediction, classes), one_hot(label, classes), include_background=False)
    hit_rate = boundary_hit_rate(output.kept_indices, label, network.grids)
    return {"dice": dice.nanmean().item(), "boundary_hit_rate": hit_rate.item()}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--size", type=int, nargs=3, default=(48, 48, 32))
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    image, label = (t.to(device) for t in single_lesion_volume(args.size, args.in_channels, seed=args.seed))
    network = TokenSeg(
        args.in_channels, 2, img_size=args.size, widths=(16, 32, 64, 128), token_dim=128, codebook_size=1024
    ).to(device)
    logger.info(
        f"TokenSeg on {device}: {sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters, "
        f"{network.num_tokens} candidate tokens on grids {network.grids}, keeping {network.num_kept_tokens}"
    )
    fit_volume(network, image, label, args.steps)
    result = evaluate_volume(network, image, label)
    logger.info(f"after {args.steps} steps: Dice {result['dice']:.4f}, boundary hit rate {result['boundary_hit_rate']:.2f}")
    return result


if __name__ == "__main__":
    main()
