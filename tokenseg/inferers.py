"""Click refinement that recomputes only where the clicks changed: the interactive model's inferer.

An annotator's next click changes the guidance channels only near itself (a
Gaussian of sigma 3 voxels). ``ClickRefinementInferer`` remembers, per image,
the last guidance and logits and the weights that made them; when the same
image comes back to the same network with the same weights and with
guidance that differs only in a region, it runs the network on that
region alone, grown by a margin and to at least one patch (MONAI's sliding
window inside it), and blends the result into the remembered logits: all of
it where the guidance changed, fading to the old logits across the margin,
so that no seam shows. A new image, other weights, or a changed region of
more than half the image is a full sliding-window pass. The first click on
an image therefore costs a full pass and every later one about one patch.

Shapes: inputs (1, C + G, D, H, W), the last G channels the clicks
(DeepEdit's guidance); logits (1, C_out, D, H, W).
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Callable, NamedTuple

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import ensure_tuple_rep

__all__ = ["ClickRefinementInferer", "blend_weight", "changed_box", "grow_box"]

# guidance changes below this are the far tails of a click (beyond about 2.5 sigma of its Gaussian)
GUIDANCE_TOLERANCE = 0.05


class _Remembered(NamedTuple):
    """What the last pass on an image computed, and with which weights."""

    network: Callable[[], Callable | None]  # a weak reference: a network that is gone never matches
    weights: tuple[int, ...]  # the weights' versions when the logits were computed
    guidance: torch.Tensor
    logits: torch.Tensor


def _weights_version(network: Callable) -> tuple[int, ...]:
    """A stamp that changes whenever the network's weights do: every in-place write (``load_state_dict`` included)
    bumps a tensor's version counter."""
    if not isinstance(network, torch.nn.Module):
        return ()
    return tuple(t._version for t in (*network.parameters(), *network.buffers()))


def _reference(network: Callable) -> Callable[[], Callable | None]:
    try:
        return weakref.ref(network)
    except TypeError:  # a callable that takes no weak reference: held as it is
        return lambda: network


def changed_box(before: torch.Tensor, after: torch.Tensor) -> tuple[slice, ...] | None:
    """The bounding box of every voxel where the guidance (G, D, H, W) changed; None when nothing did."""
    changed = ((after - before).abs() > GUIDANCE_TOLERANCE).any(dim=0)
    if not changed.any():
        return None
    box = []
    for axis in range(changed.ndim):
        where = changed.any(dim=tuple(a for a in range(changed.ndim) if a != axis)).nonzero().flatten()
        box.append(slice(int(where.min()), int(where.max()) + 1))
    return tuple(box)


def grow_box(core: tuple[slice, ...], roi_size: Sequence[int], shape: Sequence[int], margin: int) -> tuple[slice, ...]:
    """``core`` grown by ``margin`` on each side and to at least ``roi_size``, kept inside ``shape``."""
    region = []
    for s, roi, size in zip(core, roi_size, shape):
        width = min(max(s.stop - s.start + 2 * margin, roi), size)
        start = min(max((s.start + s.stop - width) // 2, 0), size - width)
        region.append(slice(start, start + width))
    return tuple(region)


def blend_weight(region: tuple[slice, ...], core: tuple[slice, ...], shape: Sequence[int]) -> torch.Tensor:
    """(d, h, w) weight of the recomputed ``region``: 1 over ``core``, falling linearly to 0 at the region's
    sides, except where the region meets the image's border (nothing to blend with there)."""
    ramps = []
    for r, c, size in zip(region, core, shape):
        i = torch.arange(r.start, r.stop, dtype=torch.float32)
        low = (i - r.start + 1) / (max(c.start, r.start) - r.start + 1) if r.start > 0 else torch.ones_like(i)
        high = (r.stop - i) / (r.stop - min(c.stop, r.stop) + 1) if r.stop < size else torch.ones_like(i)
        ramps.append(torch.minimum(low, high).clamp(0, 1))
    return ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]


class ClickRefinementInferer(Inferer):
    """Sliding-window inference that, for the next click on the same image, recomputes only around it.

    Args:
        roi_size: the patch (D, H, W) the network runs on.
        guidance_channels: G, the click channels at the end of the input.
        sw_batch_size: windows per network call.
        overlap: sliding-window overlap of a full pass and inside a refined region.
        cache_size: images remembered (guidance and logits of each).
        margin: voxels around the changed box over which the new logits fade into the old.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        guidance_channels: int,
        sw_batch_size: int = 4,
        overlap: float = 0.5,
        cache_size: int = 8,
        margin: int = 4,
    ) -> None:
        super().__init__()
        self.roi_size = ensure_tuple_rep(roi_size, 3)
        self.guidance_channels = guidance_channels
        self.window = SlidingWindowInferer(self.roi_size, sw_batch_size, overlap)
        self.cache_size = cache_size
        self.margin = margin
        self._cache: OrderedDict[str, _Remembered] = OrderedDict()
        self._lock = threading.Lock()
        self.last_region: tuple[slice, ...] | None = None  # what the last call computed (None: the full image)

    def _key(self, inputs: torch.Tensor) -> str:
        image = inputs[:, : inputs.shape[1] - self.guidance_channels].detach().float().contiguous().cpu()
        digest = hashlib.sha1(image.numpy().tobytes()).hexdigest()
        return f"{tuple(inputs.shape)}:{digest}"

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs) -> torch.Tensor:
        """inputs (1, C + G, D, H, W) -> logits (1, C_out, D, H, W)."""
        if inputs.shape[0] != 1:
            raise ValueError(f"ClickRefinementInferer takes one image at a time, got a batch of {inputs.shape[0]}.")
        key, weights = self._key(inputs), _weights_version(network)
        guidance = inputs[0, inputs.shape[1] - self.guidance_channels :]
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and (cached.network() is not network or cached.weights != weights):
            cached = None  # logits of other weights (MONAI Label reloads a retrained checkpoint): never blended in
        core = None
        if cached is not None:
            core = changed_box(cached.guidance.to(guidance.device), guidance)
        region = None if core is None else grow_box(core, self.roi_size, inputs.shape[2:], self.margin)
        if cached is None or (region is not None and self._is_whole(region, inputs.shape[2:])):
            logits = self.window(inputs, network, *args, **kwargs)
            self.last_region = None
        elif region is None:  # the same clicks again
            logits = cached.logits.to(inputs.device)
            self.last_region = tuple(slice(0, 0) for _ in range(3))
        else:
            logits = cached.logits.to(inputs.device).clone()
            crop = (slice(None), slice(None), *region)
            fresh = self.window(inputs[crop], network, *args, **kwargs)
            weight = blend_weight(region, core, inputs.shape[2:]).to(device=fresh.device, dtype=fresh.dtype)
            logits[crop] = weight * fresh + (1 - weight) * logits[crop]
            self.last_region = region
        with self._lock:
            self._cache[key] = _Remembered(_reference(network), weights, guidance.detach().cpu(), logits.detach().cpu())
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return logits

    @staticmethod
    def _is_whole(region: tuple[slice, ...], shape: Sequence[int]) -> bool:
        """A region of most of the image costs as much as a full pass: make it one."""
        return math.prod(s.stop - s.start for s in region) > 0.5 * math.prod(int(n) for n in shape)
