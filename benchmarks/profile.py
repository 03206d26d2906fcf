"""Where a model's inference time goes, by module: ``python -m benchmarks.profile --size 96 96 96``.

Every child module of the network (for TokenSeg: the encoder stages, the
tokenizer, the mixer, the decoder and the head) is wrapped in a profiler
range; the table gives each range's share of one forward pass (median of
``--repeats`` passes after a warm-up), then the slowest operators with their
input shapes (this is how 3D convolutions that fall into PyTorch's slow CPU
path show up).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.models import MODELS, build_model

__all__ = ["profile_modules"]


def _module_groups(module: nn.Module, depth: int, prefix: str = "") -> dict[str, nn.Module]:
    """Submodules ``depth`` levels down (``encoder.0``, ``tokenizer``, ...): the parts a reader knows.
    Module lists are never called themselves, so their items stand in for them at the same depth."""
    groups = {}
    for name, child in module.named_children():
        is_list = isinstance(child, (nn.ModuleList, nn.ModuleDict))
        if is_list or (depth > 1 and any(True for _ in child.children())):
            groups.update(_module_groups(child, depth if is_list else depth - 1, f"{prefix}{name}."))
        else:
            groups[f"{prefix}{name}"] = child
    return groups


def profile_modules(model: nn.Module, x: torch.Tensor, repeats: int = 3, depth: int = 1) -> dict:
    """Milliseconds per forward pass of each module group and in all, and the profiler's operator table."""
    groups = _module_groups(model, depth)
    ranges = {}
    handles = []
    for name, module in groups.items():
        def enter(_module, _inputs, name=name):
            ranges[name] = record_function(f"module::{name}")
            ranges[name].__enter__()

        def leave(_module, _inputs, _output, name=name):
            ranges.pop(name).__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up
        per_pass = {name: [] for name in groups}
        totals = []
        for _ in range(repeats):
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                with record_function("module::total"):
                    model(x)
            averages = {e.key: e.cpu_time_total / 1000 for e in prof.key_averages()}
            totals.append(averages["module::total"])
            for name in groups:
                per_pass[name].append(averages.get(f"module::{name}", 0.0))
    for handle in handles:
        handle.remove()
    return {
        "total_ms": statistics.median(totals),
        "modules_ms": {name: statistics.median(times) for name, times in per_pass.items()},
        "operators": prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tokenseg", choices=list(MODELS))
    parser.add_argument("--size", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=1, help="how many levels of submodules to time separately")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(args.model, args.in_channels, 2, args.size)
    figures = profile_modules(model, torch.randn(1, args.in_channels, *args.size), args.repeats, args.depth)
    total = figures["total_ms"]
    print(f"{args.model} inference at {'x'.join(map(str, args.size))}: {total:.1f} ms per forward pass (median)")
    print(f"{'module':<24} {'ms':>8} {'share':>7}")
    for name, ms in figures["modules_ms"].items():
        print(f"{name:<24} {ms:>8.1f} {ms / total:>7.1%}")
    rest = total - sum(figures["modules_ms"].values())  # what the network's own forward does between its modules
    print(f"{'(between modules)':<24} {rest:>8.1f} {rest / total:>7.1%}")
    print(figures["operators"])


if __name__ == "__main__":
    main()
