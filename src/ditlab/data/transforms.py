"""Image transforms: mode conversion, the ADM centre crop, and PIL/uint8 -> [-1, 1] tensors.

The centre crop follows ADM (Dhariwal & Nichol 2021), which DiT uses for ImageNet: halve the image
with a box filter while its short side is at least twice the target (cheap, alias-free), finish with
one bicubic resize so the short side equals the target, then cut the central square.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow image to ``RGB`` (channels=3) or ``L`` (channels=1).

    16-bit and 32-bit grayscale (``I;16*``, ``I``, ``F``) are rescaled from their full range, because
    Pillow's own ``convert("L")`` clips them to 0..255 and turns most 16-bit images white. Transparent
    pixels (RGBA, LA, palette with a transparent index) are composited over white, not dropped to black.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    target = "L" if channels == 1 else "RGB"
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        arr = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16"):
            hi = 65535.0
        else:  # 32-bit int/float: no fixed range, so stretch what the file holds
            lo = float(arr.min()) if arr.size else 0.0
            arr = arr - lo
            hi = float(arr.max()) if arr.size and arr.max() > 0 else 1.0
        arr8 = np.clip(np.rint(arr * (255.0 / hi)), 0, 255).astype(np.uint8)
        image = Image.fromarray(arr8, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != target:
        image = image.convert(target)
    return image


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM centre crop: returns a uint8 array (H, W) or (H, W, C) of side ``image_size``.

    Images smaller than the target are upsampled by the same bicubic step.
    """
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    # max(.., image_size) guards against round() landing one pixel short on extreme aspect ratios.
    new_size = tuple(max(round(s * scale), image_size) for s in image.size)
    image = image.resize(new_size, resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def uint8_to_tensor(arr: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W) / (H, W, C) array or (C, H, W) tensor -> float (C, H, W) in [-1, 1]."""
    if isinstance(arr, np.ndarray):
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:  # arrays that view a PIL image are read-only
            arr = arr.copy()
        t = torch.from_numpy(arr)
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    else:
        t = arr
    return t.float().div(127.5).sub(1.0)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch (N, C, h, w) to (N, C, size, size) with antialiased bicubic filtering."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], 4096):  # chunks keep the float copy small
        chunk = images[start : start + 4096].float()
        chunk = torch.nn.functional.interpolate(
            chunk, size=(size, size), mode="bicubic", align_corners=False, antialias=True
        )
        out[start : start + 4096] = chunk.round().clamp(0, 255).to(torch.uint8)
    return out
