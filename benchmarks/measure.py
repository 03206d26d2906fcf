"""Measure one model in this process: parameters, FLOPs, latency, peak memory.

Run by the benchmark driver as a subprocess per (model, size, mode) so that
peak memories never mix:

    python -m benchmarks.measure --model unet --size 96 96 96 --mode infer

Modes: ``infer`` (one forward pass of a ``size`` patch, no gradients),
``train`` (forward, loss, backward, optimiser step on a ``size`` patch) and
``sliding`` (sliding-window inference of a whole ``--volume`` with ``size``
windows, overlap 0.25; one window as warm-up, one timed pass).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import time
from collections.abc import Callable, Sequence

import psutil
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.models import build_model
from tokenseg.losses import TokenSegLoss
from tokenseg.networks import TokenSeg

__all__ = ["TOKENSEG_PARTS", "forward_gflops", "module_gflops", "measure"]

# TokenSeg's submodules -> the part of the cost table they belong to; a part excludes the parts nested in it
TOKENSEG_PARTS = {
    "encoder.0": "stem (level 1)",
    "encoder": "encoder levels 2-L",
    "tokenizer.codebook": "codebook look-up",
    "tokenizer": "tokenizer (pooling, projections, scorer)",
    "mixer": "token mixer",
    "token_assembly": "token assembly (MTA)",
    "skip_attention": "skip attention (DCA)",
    "decoder.kept_cell_step": "kept-cell refinement",
    "decoder": "decoder (token painting, dense up-steps)",
    "head": "head",
}


def forward_gflops(network: torch.nn.Module, x: torch.Tensor) -> float:
    """GFLOPs of one forward pass of ``network`` in evaluation mode on ``x`` (PyTorch's FLOP counter)."""
    return module_gflops(network, x)["total"]


def module_gflops(network: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """GFLOPs of one forward pass in evaluation mode on ``x`` by part of a ``TokenSeg`` (``TOKENSEG_PARTS``;
    what no part holds is ``"other"``), and ``"total"``; for any other network only the total."""
    network.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(x)
    total = counter.get_total_flops() / 1e9
    if not isinstance(network, TokenSeg):
        return {"total": total}
    # the counter reports every module with its submodules' FLOPs included (a ModuleList, never called, not at all)
    counts = {name.partition(".")[2]: sum(flops.values()) / 1e9 for name, flops in counter.get_flop_counts().items()}

    def subtree(prefix: str) -> float:
        keys = [k for k in counts if k == prefix or k.startswith(prefix + ".")]
        return sum(counts[k] for k in keys if not any(k.startswith(other + ".") for other in keys))

    parts: dict[str, float] = {}
    for prefix, part in TOKENSEG_PARTS.items():
        if any(k == prefix or k.startswith(prefix + ".") for k in counts):
            parts[part] = subtree(prefix) - sum(subtree(p) for p in TOKENSEG_PARTS if p.startswith(prefix + "."))
    parts["other"] = total - sum(parts.values())
    parts["total"] = total
    return parts


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM), so that the
    peak of the measured steps is not hidden by an earlier one (imports, building the model).
    Freed heap memory is first handed back to the system, or the steps would reuse it unseen."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the lifetime peak below is an upper bound


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def measure(
    model_name: str,
    size: Sequence[int],
    mode: str,
    in_channels: int = 1,
    out_channels: int = 2,
    warmup: int = 1,
    repeats: int = 3,
    device: str | None = None,
    volume: Sequence[int] | None = None,
    amp: bool = False,
) -> dict:
    """Figures of one model at one input size, for ``mode`` ``"infer"``, ``"train"`` or ``"sliding"`` (batch 1);
    with ``amp``, under autocast (float16 and a gradient scaler on CUDA, bfloat16 on the CPU), as the bundle trains."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16, enabled=amp)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and dev.type == "cuda")
    torch.manual_seed(0)
    model = build_model(model_name, in_channels, out_channels, size).to(dev)
    x = torch.randn(1, in_channels, *size, device=dev)
    label = (torch.rand(1, 1, *size, device=dev) > 0.9).float()
    result = {
        "model": model_name,
        "size": list(size),
        "mode": mode,
        "device": str(dev),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "amp": amp,
    }
    if mode == "infer":
        result["gflops_forward"] = forward_gflops(model, x)

        def step() -> None:
            with torch.inference_mode(), autocast:
                model(x)

    elif mode == "train":
        model.train()
        loss_function = (
            TokenSegLoss(model.grids) if isinstance(model, TokenSeg) else DiceCELoss(to_onehot_y=True, softmax=True)
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_function(model(x), label)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    elif mode == "sliding":
        if volume is None:
            raise ValueError("mode 'sliding' needs the volume size.")
        model.eval()
        whole = torch.randn(1, in_channels, *volume, device=dev)
        result["volume"] = list(volume)

        def step() -> None:
            with torch.inference_mode(), autocast:
                sliding_window_inference(whole, size, 1, model, overlap=0.25)

        # A whole volume is many windows (a minute or more for the big models):
        # warm up on one window and time a single pass.
        with torch.inference_mode():
            model(x)
        warmup, repeats = 0, 1

    else:
        raise ValueError(f"mode must be 'infer', 'train' or 'sliding', got {mode!r}.")

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev) / 2**20
    else:
        _reset_peak_rss()
        baseline = psutil.Process().memory_info().rss / 2**20
    times = _timed(step, dev, warmup, repeats)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _peak_rss_mib()
    result.update(
        seconds_median=statistics.median(times),
        seconds_all=times,
        peak_memory_mib=peak - baseline,
        memory_kind="cuda max_memory_allocated" if dev.type == "cuda" else "peak RSS above the built model",
    )
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, nargs=3, required=True)
    parser.add_argument("--mode", choices=("infer", "train", "sliding"), required=True)
    parser.add_argument("--volume", type=int, nargs=3, default=None, help="whole volume for --mode sliding")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--out-channels", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    figures = measure(
        args.model, args.size, args.mode, args.in_channels, args.out_channels, args.warmup, args.repeats, args.device,
        args.volume,
    )
    print("RESULT " + json.dumps(figures))


if __name__ == "__main__":
    main()
