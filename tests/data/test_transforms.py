"""Mode conversion and the ADM centre crop, checked against numbers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.data.transforms import center_crop_arr, resize_uint8, to_mode, uint8_to_tensor


def test_center_crop_box_halving_then_centre():
    # 300x100 horizontal ramp, value = x. Target 50: the short side 100 >= 2*50, so one BOX halving
    # (150x50, pixel j = mean of x=2j, 2j+1 = 2j+0.5), scale 1, crop columns 50..99.
    ramp = np.tile(np.arange(300, dtype=np.float32) * (255.0 / 299.0), (100, 1))
    image = Image.fromarray(np.rint(ramp).astype(np.uint8), mode="L")
    out = center_crop_arr(image, 50)
    assert out.shape == (50, 50)
    expected = (2 * (50 + np.arange(50)) + 0.5) * (255.0 / 299.0)
    assert np.abs(out.astype(np.float64) - expected[None, :]).max() <= 1.0


def test_center_crop_bicubic_scale_and_offsets():
    # 120x90 (W x H), target 64: 90 < 128 so no halving; bicubic to (85, 64); crop left (85-64)//2 = 10.
    rows = np.tile(np.linspace(0, 255, 90)[:, None], (1, 120))  # vertical ramp
    cols = np.tile(np.linspace(0, 255, 120)[None, :], (90, 1))  # horizontal ramp
    image = Image.fromarray(np.stack([rows, cols, np.zeros_like(rows)], -1).round().astype(np.uint8))
    out = center_crop_arr(image, 64)
    assert out.shape == (64, 64, 3)
    # Columns 10..73 of an 85-wide resize of the ramp: centre of pixel 10 maps to source x = 10.5*120/85 - 0.5.
    src_x = (np.arange(10, 74) + 0.5) * 120 / 85 - 0.5
    assert np.abs(out[32, :, 1] - src_x * 255 / 119).max() <= 2.0
    # The full height survives: the vertical ramp still spans 0..255.
    assert out[0, 32, 0] <= 3 and out[-1, 32, 0] >= 252


def test_center_crop_upsamples_small_images():
    image = Image.new("RGB", (10, 20), (10, 200, 30))
    out = center_crop_arr(image, 32)
    assert out.shape == (32, 32, 3)
    assert (out == np.array([10, 200, 30], dtype=np.uint8)).all()  # a flat colour stays exact


def test_center_crop_square_native_size_is_identity():
    arr = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(center_crop_arr(Image.fromarray(arr), 16), arr)


def test_to_mode_16bit_scales_full_range():
    arr = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    image = Image.fromarray(arr)
    assert image.mode.startswith("I;16")
    out = np.asarray(to_mode(image, 1))
    assert out.tolist() == [[0, 128, 255, 1]]
    rgb = np.asarray(to_mode(image, 3))
    assert rgb.shape == (1, 4, 3) and rgb[0, 2].tolist() == [255, 255, 255]


def test_to_mode_rgba_composites_on_white():
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (0, 0, 0, 0)  # fully transparent
    arr[1, 0] = (0, 0, 255, 128)  # half-transparent blue
    out = np.asarray(to_mode(Image.fromarray(arr, mode="RGBA"), 3))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 0, 0] in (127, 128) and out[1, 0, 2] == 255


def test_to_mode_palette_and_grayscale():
    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2])
    assert np.asarray(to_mode(pal, 3)).tolist() == [[[0, 0, 0], [255, 0, 0], [0, 255, 0]]]
    gray = Image.fromarray(np.array([[7, 200]], dtype=np.uint8), mode="L")
    assert np.asarray(to_mode(gray, 3)).tolist() == [[[7, 7, 7], [200, 200, 200]]]
    with pytest.raises(ValueError):
        to_mode(gray, 2)


def test_uint8_to_tensor_range_and_layout():
    arr = np.array([[[0, 255, 128]]], dtype=np.uint8)  # (1, 1, 3) HWC
    t = uint8_to_tensor(arr)
    assert t.shape == (3, 1, 1)
    assert torch.allclose(t.flatten(), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


def test_resize_uint8_keeps_flat_images_flat():
    x = torch.full((3, 1, 8, 8), 77, dtype=torch.uint8)
    y = resize_uint8(x, 20)
    assert y.shape == (3, 1, 20, 20) and (y == 77).all()
