"""Tests for nnspec.data.augment: each operation changes the batch, does what it says, and is reproducible."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.data import augment as aug
from nnspec.data.augment import (
    build_augment,
    gaussian_noise,
    hflip,
    random_erase,
    random_rotation,
    random_shift,
    rotate,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clone_gen(source: torch.Generator) -> torch.Generator:
    """A generator in exactly the same state, to replay the draws an operation will make."""
    copy = torch.Generator()
    copy.set_state(source.get_state())
    return copy


def batch(n: int = 16, c: int = 2, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    """Strictly positive, asymmetric images, so flips, erasures and moves are all visible."""
    return torch.rand(n, c, h, w, generator=gen(seed)) + 0.5


OPS = {
    "random_shift": lambda x, g: random_shift(x, 2, g),
    "random_rotation": lambda x, g: random_rotation(x, 30.0, g),
    "hflip": lambda x, g: hflip(x, g),
    "random_erase": lambda x, g: random_erase(x, g, p=1.0),
    "gaussian_noise": lambda x, g: gaussian_noise(x, 0.1, g),
}


# --------------------------------------------------------------------------
# properties every operation shares
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPS))
def test_op_changes_batch_keeps_shape_and_input(name: str) -> None:
    x = batch()
    before = x.clone()
    out = OPS[name](x, gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    assert torch.equal(x, before)  # never in place


@pytest.mark.parametrize("name", list(OPS))
def test_op_is_reproducible_from_generator_seed(name: str) -> None:
    x = batch(n=32)
    first = OPS[name](x, gen(7))
    assert torch.equal(first, OPS[name](x, gen(7)))
    assert not torch.equal(first, OPS[name](x, gen(8)))


@pytest.mark.parametrize("name", ["random_shift", "random_rotation", "hflip", "random_erase"])
def test_image_ops_reject_flat_inputs(name: str) -> None:
    with pytest.raises(ValueError, match=r"needs image batches shaped \(N, C, H, W\).*only support gaussian_noise"):
        OPS[name](torch.rand(4, 10), gen())


def test_noise_works_on_flat_inputs() -> None:
    x = torch.zeros(2000, 50)
    out = gaussian_noise(x, 0.5, gen())
    assert out.shape == x.shape
    assert abs(out.std().item() - 0.5) < 0.01 and abs(out.mean().item()) < 0.01


def test_float_only_ops_reject_integer_batches() -> None:
    pixels = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs a floating-point batch"):
        random_rotation(pixels, 10.0, gen())
    with pytest.raises(ValueError, match="needs a floating-point batch"):
        gaussian_noise(pixels, 0.1, gen())
    assert random_shift(pixels + 1, 1, gen()).dtype == torch.uint8  # exact ops keep integer dtypes


# --------------------------------------------------------------------------
# random_shift
# --------------------------------------------------------------------------


def lit_pixel_batch(n: int, size: int, row: int, col: int) -> torch.Tensor:
    x = torch.zeros(n, 1, size, size)
    x[:, 0, row, col] = 1.0
    return x


@given(k=st.integers(1, 4), seed=st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_shift_moves_a_lit_pixel_by_at_most_k(k: int, seed: int) -> None:
    x = lit_pixel_batch(n=32, size=13, row=6, col=6)  # centre: never shifted out for k <= 4
    out = random_shift(x, k, gen(seed))
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(32))  # exactly one lit pixel, value kept
    flat = out.reshape(32, -1).argmax(dim=1)
    rows, cols = flat // 13, flat % 13
    assert int((rows - 6).abs().max()) <= k and int((cols - 6).abs().max()) <= k
    assert bool(((rows != 6) | (cols != 6)).any())


def test_shift_covers_every_offset_in_range() -> None:
    x = lit_pixel_batch(n=400, size=9, row=4, col=4)
    flat = random_shift(x, 2, gen(3)).reshape(400, -1).argmax(dim=1)
    offsets = {(int(r) - 4, int(c) - 4) for r, c in zip(flat // 9, flat % 9)}
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_shift_zero_fills_and_moves_whole_image() -> None:
    x = torch.arange(1.0, 26.0).reshape(1, 1, 5, 5).repeat(50, 3, 1, 1)
    out = random_shift(x, 1, gen(5))
    for image in out:  # every image is the original moved by one (dy, dx), the rest zeros
        matches = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                expected = torch.zeros(3, 5, 5)
                src = x[0][:, max(0, -dy) : 5 - max(0, dy), max(0, -dx) : 5 - max(0, dx)]
                expected[:, max(0, dy) : 5 - max(0, -dy), max(0, dx) : 5 - max(0, -dx)] = src
                matches.append(torch.equal(image, expected))
        assert sum(matches) == 1


def test_shift_by_zero_is_identity() -> None:
    x = batch()
    assert torch.equal(random_shift(x, 0, gen()), x)


# --------------------------------------------------------------------------
# rotation
# --------------------------------------------------------------------------


def test_rotate_by_zero_is_identity() -> None:
    x = batch(h=11, w=17)
    assert torch.allclose(rotate(x, torch.zeros(len(x))), x, atol=1e-5)


def test_rotate_by_90_matches_rot90_counter_clockwise() -> None:
    x = batch(h=9, w=9)
    assert torch.allclose(rotate(x, torch.full((len(x),), 90.0)), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(rotate(x, torch.full((len(x),), -90.0)), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)


def test_rotate_non_square_images_rigidly() -> None:
    """A horizontal 4x2 bar in a 8x16 image becomes a vertical 2x4 bar (no shear or squash)."""
    x = torch.zeros(1, 1, 8, 16)
    x[0, 0, 3:5, 6:10] = 1.0
    expected = torch.zeros(1, 1, 8, 16)
    expected[0, 0, 2:6, 7:9] = 1.0
    assert torch.allclose(rotate(x, torch.tensor([90.0])), expected, atol=1e-5)


def test_random_rotation_angles_stay_in_range() -> None:
    """Replaying the generator gives the angles; the output equals rotate() by exactly those."""
    x = batch(n=64)
    g = gen(4)
    angles = -20.0 + 40.0 * torch.rand(64, generator=clone_gen(g))
    out = random_rotation(x, 20.0, g)
    assert torch.allclose(out, rotate(x, angles), atol=1e-5)
    assert float(angles.abs().max()) <= 20.0 and float(angles.abs().max()) > 10.0


def test_random_rotation_by_zero_degrees_is_identity() -> None:
    x = batch()
    assert torch.allclose(random_rotation(x, 0.0, gen()), x, atol=1e-6)


# --------------------------------------------------------------------------
# hflip
# --------------------------------------------------------------------------


def test_hflip_flips_exactly_the_chosen_images() -> None:
    x = batch(n=64)
    g = gen(2)
    chosen = torch.rand(64, generator=clone_gen(g)) < 0.5
    out = hflip(x, g)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert torch.equal(flipped, chosen) and torch.equal(kept, ~chosen)
    assert 10 < int(chosen.sum()) < 54


@pytest.mark.parametrize(("p", "expect_flip"), [(0.0, False), (1.0, True)])
def test_hflip_probability_extremes(p: float, expect_flip: bool) -> None:
    x = batch()
    assert torch.equal(hflip(x, gen(), p=p), x.flip(-1) if expect_flip else x)


# --------------------------------------------------------------------------
# random_erase
# --------------------------------------------------------------------------


def zero_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box (top, left, height, width) of the True cells of a 2-D mask."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    top, left = int(rows.min()), int(cols.min())
    return top, left, int(rows.max()) - top + 1, int(cols.max()) - left + 1


def test_erase_zeroes_one_rectangle_in_every_channel() -> None:
    x = batch(n=100, c=3, h=20, w=20)
    out = random_erase(x, gen(6), p=1.0, scale=(0.05, 0.3))
    for image in out:
        zeros = image == 0
        assert torch.equal(zeros[0], zeros[1]) and torch.equal(zeros[0], zeros[2])
        top, left, h, w = zero_box(zeros[0])
        assert bool(zeros[0, top : top + h, left : left + w].all())  # the bounding box is filled
        assert int(zeros[0].sum()) == h * w
        assert 0.5 * 0.05 * 400 <= h * w <= 1.5 * 0.3 * 400  # area fraction within scale, up to rounding
    assert torch.equal(out[out != 0], x[out != 0])  # nothing else changed


def test_erase_exact_size_for_fixed_scale_and_ratio() -> None:
    x = batch(n=50, c=1, h=32, w=32)
    out = random_erase(x, gen(9), p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    boxes = [zero_box(image[0] == 0) for image in out]
    assert all(h == 16 and w == 16 for _, _, h, w in boxes)
    assert len({(top, left) for top, left, _, _ in boxes}) > 10  # positions vary


def test_erase_probability() -> None:
    x = batch(n=200)
    erased = (random_erase(x, gen(1), p=0.5) == 0).flatten(1).any(dim=1)
    assert 60 < int(erased.sum()) < 140
    assert torch.equal(random_erase(x, gen(1), p=0.0), x)


# --------------------------------------------------------------------------
# gaussian_noise
# --------------------------------------------------------------------------


def test_noise_std_and_zero_std() -> None:
    x = batch(n=200)
    diff = gaussian_noise(x, 0.2, gen()) - x
    assert abs(diff.std().item() - 0.2) < 0.01
    assert torch.equal(gaussian_noise(x, 0.0, gen()), x)


# --------------------------------------------------------------------------
# parameter validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda x: random_shift(x, -1, gen()), "pixels must be an integer >= 0"),
        (lambda x: random_shift(x, 1.5, gen()), "pixels must be an integer"),  # type: ignore[arg-type]
        (lambda x: random_rotation(x, 200.0, gen()), "degrees must be a number in"),
        (lambda x: hflip(x, gen(), p=1.5), "probability"),
        (lambda x: random_erase(x, gen(), scale=(0.5, 0.2)), "scale must be a pair"),
        (lambda x: random_erase(x, gen(), scale=(0.0, 0.2)), "scale must be a pair"),
        (lambda x: random_erase(x, gen(), ratio=(0.0, 1.0)), "ratio must be a pair"),
        (lambda x: gaussian_noise(x, -0.1, gen()), "std must be a number >= 0"),
        (lambda x: gaussian_noise(x, math.nan, gen()), "std must be a number >= 0"),
    ],
)
def test_bad_parameters_raise(call, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=fragment):
        call(batch(n=2))


# --------------------------------------------------------------------------
# build_augment
# --------------------------------------------------------------------------


def test_empty_pipeline_does_nothing() -> None:
    augment = build_augment([])
    x = batch()
    g = gen(3)
    state = g.get_state()
    assert augment(x, g) is x
    assert torch.equal(g.get_state(), state)  # no random numbers drawn


def test_pipeline_applies_steps_in_order() -> None:
    steps = [("random_shift", {"pixels": 2}), ("hflip", {"p": 0.5}), ("random_erase", {"p": 1.0})]
    x = batch(n=32)
    out = build_augment(steps)(x, gen(11))
    g = gen(11)
    expected = random_erase(hflip(random_shift(x, 2, g), g, p=0.5), g, p=1.0)
    assert torch.equal(out, expected)
    assert torch.equal(build_augment(steps)(x, gen(11)), out)


def test_pipeline_accepts_missing_params_and_defaults() -> None:
    out = build_augment([("hflip", None), ("random_erase", {})])(batch(), gen())
    assert out.shape == batch().shape


def test_pipeline_on_flat_inputs_only_noise() -> None:
    flat = torch.rand(8, 5)
    assert build_augment([("gaussian_noise", {"std": 0.1})])(flat, gen()).shape == (8, 5)
    with pytest.raises(ValueError, match="only support gaussian_noise"):
        build_augment([("random_shift", {"pixels": 1})])(flat, gen())


def test_unknown_step_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'") as info:
        build_augment([("mixup", {})])
    for name in aug.STEP_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("steps", "fragment"),
    [
        ([("random_shift", {"pixel": 2})], "unknown parameter\\(s\\) pixel; its parameters are: pixels"),
        ([("random_shift", {})], "missing a required argument: 'pixels'"),
        ([("random_rotation", {"degrees": -5})], "degrees must be"),
        ([("hflip", {"p": 2})], "probability"),
        ([("hflip", [0.5])], "params must be a mapping"),
        (["hflip"], "must be a \\(name, params\\) pair"),
    ],
)
def test_bad_steps_fail_at_build_time(steps: list, fragment: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=fragment):
        build_augment(steps)
