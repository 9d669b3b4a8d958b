"""Batched, reproducible data augmentation for training batches.

Each operation transforms a whole batch with tensor ops (no Python loop over
samples), so it runs at the same speed on CPU and GPU and never becomes the
bottleneck of a small model.  All randomness is drawn from a caller-supplied
``torch.Generator``: the trainer seeds one generator per run, which makes
augmented training exactly repeatable.  Random numbers are drawn on the
generator's device and moved to the batch's device, so a CPU generator works
for GPU batches too (the draws are a few numbers per image).

Image operations need ``(N, C, H, W)`` batches; flat ``(N, F)`` feature
batches only support :func:`gaussian_noise`.  No operation modifies its input
in place: a batch may be a view into the prepared dataset.

This module depends on torch only, so it can be used and tested on its own.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "STEP_NAMES",
    "AugmentFn",
    "build_augment",
    "gaussian_noise",
    "hflip",
    "random_erase",
    "random_rotation",
    "random_shift",
    "rotate",
]

AugmentFn = Callable[[Tensor, torch.Generator], Tensor]


# --------------------------------------------------------------------------
# Parameter checks (shared by the operations and by build_augment, so a bad
# spec fails when the pipeline is built, not in the middle of training)
# --------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    """A real number that is not a bool (True is never meant as 1.0 here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_probability(p: Any) -> None:
    """Probabilities must lie in [0, 1]."""
    if not _is_number(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")


def _check_range(value: Any, name: str, low: float, high: float, *, open_low: bool = False) -> tuple[float, float]:
    """A (min, max) pair with low <= min <= max <= high (min > low when open_low)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}")
    lo, hi = value
    ok = _is_number(lo) and _is_number(hi) and (lo > low if open_low else lo >= low) and lo <= hi <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be a pair min <= max within {bracket}{low}, {high}], got {value!r}")
    return float(lo), float(hi)


def _check_shift(pixels: int) -> None:
    """Shifts are whole pixels, so the result stays a pure permutation plus zeros."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
        raise ValueError(f"random_shift pixels must be an integer >= 0, got {pixels!r}")


def _check_rotation(degrees: float) -> None:
    """Angles beyond 180 degrees would just repeat the same rotations."""
    if not _is_number(degrees) or not 0.0 <= degrees <= 180.0:
        raise ValueError(f"random_rotation degrees must be a number in [0, 180], got {degrees!r}")


def _check_hflip(p: float = 0.5) -> None:
    """hflip only has a probability."""
    _check_probability(p)


def _check_erase(
    p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)
) -> None:
    """Erased area is a fraction of the image; aspect ratio must be positive."""
    _check_probability(p)
    _check_range(scale, "random_erase scale", 0.0, 1.0, open_low=True)
    _check_range(ratio, "random_erase ratio", 0.0, math.inf, open_low=True)


def _check_noise(std: float) -> None:
    """Noise standard deviation must be a finite non-negative number."""
    if not _is_number(std) or std < 0:
        raise ValueError(f"gaussian_noise std must be a number >= 0, got {std!r}")


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _require_images(x: Tensor, op: str) -> tuple[int, int, int, int]:
    """Image operations need (N, C, H, W); say so clearly for flat feature batches."""
    if x.dim() != 4:
        raise ValueError(
            f"{op} needs image batches shaped (N, C, H, W), got shape {tuple(x.shape)}; "
            "flat (N, features) inputs only support gaussian_noise"
        )
    n, c, h, w = x.shape
    return n, c, h, w


def _require_float(x: Tensor, op: str) -> None:
    """Interpolation and noise need floating point; prepared batches always are."""
    if not x.is_floating_point():
        raise ValueError(f"{op} needs a floating-point batch, got {x.dtype}; apply it after prepare()")


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """n float32 draws from U[low, high), made on the generator's device then moved."""
    draws = torch.rand(n, generator=gen, device=gen.device)
    return (low + (high - low) * draws).to(device)


def _randint(low: int, high: int, n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """n integers uniform in [low, high] (inclusive)."""
    return torch.randint(low, high + 1, (n,), generator=gen, device=gen.device).to(device)


def _chosen(n: int, p: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """Which samples an operation applies to: sample k is chosen when the k-th U[0,1) draw is < p."""
    return torch.rand(n, generator=gen, device=gen.device).to(device) < p


# --------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------


def random_shift(x: Tensor, pixels: int, gen: torch.Generator) -> Tensor:
    """Translate each image by its own integer offset in [-pixels, pixels] per axis, zero-filled.

    Output pixel (r, c) takes input pixel (r - dy, c - dx): content moves by
    (+dy, +dx).  Implemented as pad + two gathers, so it is exact (no
    interpolation) and works for any dtype.
    """
    _check_shift(pixels)
    n, c, h, w = _require_images(x, "random_shift")
    if pixels == 0:
        return x
    dy = _randint(-pixels, pixels, n, gen, x.device)
    dx = _randint(-pixels, pixels, n, gen, x.device)
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    rows = torch.arange(h, device=x.device) + pixels - dy[:, None]  # (N, H) rows of `padded`
    cols = torch.arange(w, device=x.device) + pixels - dx[:, None]  # (N, W) columns of `padded`
    picked_rows = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pixels))
    return picked_rows.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate image k counter-clockwise (as displayed, row 0 at the top) by ``degrees[k]``.

    Rotation is about the image centre with bilinear sampling and zero fill.
    The affine matrix is corrected for the aspect ratio, so non-square images
    rotate rigidly instead of being sheared.
    """
    n, _, h, w = _require_images(x, "rotate")
    _require_float(x, "rotate")
    radians = torch.deg2rad(degrees.to(device=x.device, dtype=x.dtype))
    cos, sin = radians.cos(), radians.sin()
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (h / w)
    theta[:, 1, 0] = sin * (w / h)
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_rotation(x: Tensor, degrees: float, gen: torch.Generator) -> Tensor:
    """Rotate each image by its own angle drawn uniformly from [-degrees, degrees]."""
    _check_rotation(degrees)
    n, _, _, _ = _require_images(x, "random_rotation")
    _require_float(x, "random_rotation")
    if degrees == 0:
        return x
    return rotate(x, _uniform(n, -degrees, degrees, gen, x.device))


def hflip(x: Tensor, gen: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p`` (independently per image)."""
    _check_hflip(p)
    n, _, _, _ = _require_images(x, "hflip")
    flip = _chosen(n, p, gen, x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _erase_boxes(
    n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image rectangle (top, left, height, width) covering a ``scale`` fraction of the image."""
    area = _uniform(n, scale[0], scale[1], gen, device) * (h * w)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen, device))  # height / width
    box_h = torch.sqrt(area * aspect).round().clamp(1, h).long()
    box_w = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (_uniform(n, 0.0, 1.0, gen, device) * (h - box_h + 1)).long().clamp(max=h - box_h)
    left = (_uniform(n, 0.0, 1.0, gen, device) * (w - box_w + 1)).long().clamp(max=w - box_w)
    return top, left, box_h, box_w


def random_erase(
    x: Tensor,
    gen: torch.Generator,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> Tensor:
    """With probability ``p`` per image, set one random rectangle to 0 in every channel.

    The rectangle's area is a uniform fraction in ``scale`` of the image and
    its height/width ratio is log-uniform in ``ratio`` (rounded to whole
    pixels and clipped to the image).
    """
    _check_probability(p)
    lo_hi_scale = _check_range(scale, "random_erase scale", 0.0, 1.0, open_low=True)
    lo_hi_ratio = _check_range(ratio, "random_erase ratio", 0.0, math.inf, open_low=True)
    n, _, h, w = _require_images(x, "random_erase")
    chosen = _chosen(n, p, gen, x.device)
    top, left, box_h, box_w = _erase_boxes(n, h, w, lo_hi_scale, lo_hi_ratio, gen, x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # (N, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]
    return x.masked_fill(mask[:, None], 0)


def gaussian_noise(x: Tensor, std: float, gen: torch.Generator) -> Tensor:
    """Add independent N(0, std^2) noise to every element (images or flat features)."""
    _check_noise(std)
    _require_float(x, "gaussian_noise")
    if std == 0:
        return x
    noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
    return x + std * noise


# --------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------

_STEPS: dict[str, tuple[Callable[..., Tensor], Callable[..., None]]] = {
    "random_shift": (random_shift, _check_shift),
    "random_rotation": (random_rotation, _check_rotation),
    "hflip": (hflip, _check_hflip),
    "random_erase": (random_erase, _check_erase),
    "gaussian_noise": (gaussian_noise, _check_noise),
}
STEP_NAMES: tuple[str, ...] = tuple(_STEPS)


def _bind_step(index: int, step: Any) -> tuple[Callable[..., Tensor], dict[str, Any]]:
    """Validate one (name, params) step and return the operation with its keyword arguments."""
    if not isinstance(step, (tuple, list)) or len(step) != 2:
        raise ValueError(f"augment step {index} must be a (name, params) pair, got {step!r}")
    name, params = step
    if name not in _STEPS:
        raise ValueError(f"unknown augmentation {name!r} (step {index}); valid names: {', '.join(STEP_NAMES)}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"augmentation {name!r} (step {index}): params must be a mapping, got {params!r}")
    op, check = _STEPS[name]
    signature = inspect.signature(check)
    valid = ", ".join(signature.parameters)
    unknown = sorted(str(key) for key in params if key not in signature.parameters)
    if unknown:
        raise ValueError(
            f"augmentation {name!r} (step {index}): unknown parameter(s) {', '.join(unknown)}; "
            f"its parameters are: {valid}"
        )
    try:
        signature.bind(**params)
    except TypeError as exc:
        raise ValueError(f"augmentation {name!r} (step {index}): {exc}; its parameters are: {valid}") from None
    check(**params)
    return op, dict(params)


def _identity(x: Tensor, gen: torch.Generator) -> Tensor:
    """The empty pipeline: returns the batch untouched and draws no random numbers."""
    return x


def build_augment(steps: Sequence[tuple[str, Mapping[str, Any] | None]]) -> AugmentFn:
    """Compose augmentation steps, applied in order, into ``augment(x, gen) -> x``.

    Every step is validated here (name and parameters), so a bad spec fails
    before training starts.  An empty list gives an identity that does no work.
    """
    bound = [_bind_step(i, step) for i, step in enumerate(steps)]
    if not bound:
        return _identity

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        for op, params in bound:
            x = op(x, gen=gen, **params)
        return x

    return augment
