"""Check TokenSeg's CUDA path on a machine with a GPU: a few AMP training steps, inference, TorchScript export.

    python tools/check_cuda.py [--steps 20] [--size 96 96 96]

On a machine without CUDA it says so and exits 0 (the CPU path is what the
tests check; mixed precision there with CPU autocast). With CUDA it:

1. trains TokenSeg on a generated volume for ``--steps`` steps under
   ``torch.autocast("cuda", float16)`` with a ``GradScaler``: every loss finite,
   exactly K tokens kept at every step, the loss falling;
2. infers a whole volume larger than the patch with MONAI's sliding-window
   inferer under autocast: finite logits, deterministic across two passes;
3. scripts the trained network for TorchScript and checks it gives the eager output;
4. times a training step and an inference pass of the default TokenSeg and
   of MONAI's UNet (the benchmarks' settings) under AMP, at ``--size`` and at
   the demo patch, with peak GPU memory, and writes them with the ratios to
   ``--out`` (JSON; default ``cuda_timing.json``).

Exit status 1 and the failed check's message on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's benchmarks, run from anywhere
from benchmarks.measure import measure  # noqa: E402
from tokenseg.data.synthetic import single_lesion_volume
from tokenseg.losses import TokenSegLoss
from tokenseg.networks import TokenSeg


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"FAIL: {message}")
    print(f"ok: {message}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 96))
    parser.add_argument("--out", type=Path, default=Path("cuda_timing.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("skipped: no CUDA device here (torch.cuda.is_available() is False); run this on a machine with a GPU")
        return
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    size = tuple(args.size)
    network = TokenSeg(in_channels=1, out_channels=2, img_size=size).to(device)
    image, label = (t.to(device) for t in single_lesion_volume(size))
    loss_function = TokenSegLoss(network.grids)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    losses = []
    start = time.perf_counter()
    network.train()
    for _ in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            output = network(image)
            loss = loss_function(output, label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        kept = output["keep_mask"].detach().sum(dim=1)
        check(torch.isfinite(loss).item(), f"AMP training loss finite ({loss.item():.4f})")
        check(bool((kept == network.num_kept_tokens).all()), f"exactly K = {network.num_kept_tokens} tokens kept")
    torch.cuda.synchronize()
    print(f"{args.steps} AMP steps at {size}: {time.perf_counter() - start:.1f} s, "
          f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB", flush=True)
    check(losses[-1] < losses[0], f"loss falls under AMP ({losses[0]:.4f} -> {losses[-1]:.4f})")

    network.eval()
    volume = torch.randn(1, 1, *(s + s // 2 for s in size), device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        first = sliding_window_inference(volume, size, 2, network, overlap=0.25)
        second = sliding_window_inference(volume, size, 2, network, overlap=0.25)
    check(bool(torch.isfinite(first).all()), f"sliding-window inference under AMP finite, shape {tuple(first.shape)}")
    check(torch.equal(first, second), "inference deterministic")

    scripted = torch.jit.script(network)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), network(image), atol=1e-4, rtol=1e-4)
    check(True, "TorchScript (scripted) gives the eager output on CUDA")
    time_against_unet(size, args.out)


def time_against_unet(size: tuple[int, ...], out: Path) -> None:
    """AMP training step and inference of the default TokenSeg and MONAI's UNet at ``size`` and at the demo
    patch (3 channels): median seconds of 10 after 3 warm-up, peak memory, ratios; written to ``out``."""
    rows = []
    for shape, channels in ((size, 1), ((64, 64, 32), 3)):
        for mode in ("train", "infer"):
            figures = {m: measure(m, shape, mode, in_channels=channels, warmup=3, repeats=10, device="cuda", amp=True)
                       for m in ("tokenseg", "unet")}
            row = {"size": list(shape), "in_channels": channels, "mode": mode, **figures,
                   "seconds_ratio": figures["tokenseg"]["seconds_median"] / figures["unet"]["seconds_median"],
                   "memory_ratio": figures["tokenseg"]["peak_memory_mib"] / figures["unet"]["peak_memory_mib"]}
            rows.append(row)
            print(f"{mode} {shape} x{channels}, AMP: TokenSeg {figures['tokenseg']['seconds_median'] * 1e3:.1f} ms "
                  f"{figures['tokenseg']['peak_memory_mib']:.0f} MiB, UNet {figures['unet']['seconds_median'] * 1e3:.1f}"
                  f" ms {figures['unet']['peak_memory_mib']:.0f} MiB: time {row['seconds_ratio']:.2f}x, memory "
                  f"{row['memory_ratio']:.2f}x", flush=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
                              indent=1))
    print(f"timings written to {out}")


if __name__ == "__main__":
    main()
