"""Designs whose structure is not one ``x = block(x, c, context, mask)`` loop, and their named sizes.

SD3's MMDiT (two token streams with one joint attention) and U-ViT (long skip connections between the
first and the second half) are backbone classes of their own (``mmdit.py``, ``uvit.py``). They share
``layers.py`` and ``positions.py`` with DiT, take the same keyword tensors (``y`` or ``context``/
``context_mask``/``pooled``) and are selected by the same config field as DiT's block kinds (``block``), so
``create_model``, ``model_from_config``, ``save_pretrained``/``load_pretrained``, training, checkpoints and
``Pipeline`` treat every design alike. A backbone class registers itself with ``register_design`` and,
like a DiT block kind, declares what it consumes (class attributes ``requires_text``, ``takes_labels``,
``own_options``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ditlab.errors import ModelError

DESIGNS: dict[str, type] = {}  # block name -> backbone class, filled by register_design

# Options only some designs honour, with the value every other design must keep.
OPTION_DEFAULTS: dict[str, Any] = {"qkv_bias": True, "final_conv": False}


def register_design(name: str) -> Callable[[type], type]:
    """Class decorator: ``block=name`` builds this backbone class instead of DiT."""

    def add(cls: type) -> type:
        DESIGNS[name] = cls
        return cls

    return add


def _sizes() -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    text = dict(num_classes=0, context_dim=4096, pooled_dim=2048, learn_sigma=False, timestep_scale=1000.0)
    # MMDiT at DiT's sizes (for comparisons at equal width and depth), text and flow as SD3.
    for size, (depth, d, heads) in {"Test": (2, 32, 2), "T": (6, 192, 3), "S": (12, 384, 6),
                                    "B": (12, 768, 12)}.items():
        models[f"MMDiT-{size}/2"] = dict(block="mmdit", depth=depth, hidden_size=d, num_heads=heads, patch_size=2,
                                         **text)
    # SD3-medium's transformer (Esser et al. 2024; diffusers' SD3Transformer2DModel config of
    # stabilityai/stable-diffusion-3-medium): depth 24, 24 heads of 64, 16 latent channels, T5-XXL tokens (4096)
    # and CLIP-L + CLIP-G pooled vectors (2048), positions cropped from a 192x192 table on a 64-token base.
    models["SD3-medium"] = dict(block="mmdit", depth=24, hidden_size=1536, num_heads=24, patch_size=2,
                                in_channels=16, input_size=(128, 128), pos_max_size=192, pos_base_size=64, **text)
    # PixArt-α XL/2 at 512 px (Chen et al. 2023; diffusers' PixArtTransformer2DModel config of
    # PixArt-alpha/PixArt-XL-2-512x512): a DiT-XL/2 of PixArt blocks on T5-XXL tokens (4096 wide, 120 of them),
    # learned sigma, positions interpolated over the 32-token base grid. A DiT block kind, listed here by name.
    models["PixArt-alpha-XL/2"] = dict(block="pixart", depth=28, hidden_size=1152, num_heads=16, patch_size=2,
                                       input_size=(64, 64), num_classes=0, context_dim=4096, pos_base_size=32,
                                       learn_sigma=True)
    # U-ViT (Bao et al. 2023, Table 2): layers (in + mid + out blocks), width, heads; no qkv bias.
    uvit = {"Test": (3, 32, 2), "T": (7, 192, 3), "S": (13, 512, 8), "S-Deep": (17, 512, 8), "M": (17, 768, 12),
            "L": (21, 1024, 16), "H": (29, 1152, 16)}
    for size, (depth, d, heads) in uvit.items():
        for p in (2, 4):
            if size in ("Test", "T") and p == 4:
                continue
            models[f"U-ViT-{size}/{p}"] = dict(block="u-vit", depth=depth, hidden_size=d, num_heads=heads,
                                               patch_size=p, qkv_bias=False, final_conv=True)
    return models


DESIGN_MODELS: dict[str, dict[str, Any]] = _sizes()  # registered name -> DiTConfig fields


def design_kind(block: str) -> type:
    """The class that declares what design ``block`` consumes: a DiT block kind or a backbone class."""
    from ditlab.models.blocks import BLOCK_KINDS

    kind = DESIGNS.get(block) or BLOCK_KINDS.get(block)
    if kind is None:
        raise ModelError(f"unknown block {block!r}: choose one of {', '.join([*BLOCK_KINDS, *DESIGNS])}")
    return kind


def reads_text(kind: type) -> bool:
    """Whether a design sees text token features (DiT kinds: through tokens; backbones: always)."""
    return bool(getattr(kind, "uses_tokens", False) or getattr(kind, "prefix_tokens", False)
                or kind in DESIGNS.values())


def check_condition(block: str, fields: Mapping[str, Any]) -> None:
    """A one-line ModelError when design ``block`` cannot take the condition whose model fields are ``fields``
    (``Condition.model_fields()``: ``num_classes``, ``context_dim``, ``pooled_dim``): a design that needs text
    given class labels or none, one that takes only class labels given text, or text it cannot see at all."""
    kind = design_kind(block)
    text = int(fields.get("context_dim", 0) or 0) > 0
    labels = int(fields.get("num_classes", 0) or 0) > 0
    if kind.requires_text and not text:
        what = "class labels" if labels else "no condition"
        raise ModelError(f"block {block!r} is a text-to-image design but the data gives {what}: train it on "
                         "captioned data (--condition text), or pick a class design (e.g. --block adaLN-Zero)")
    if labels and not getattr(kind, "takes_labels", True):
        raise ModelError(f"block {block!r} takes no class labels: use --condition none, or a class design "
                         "(e.g. --block adaLN-Zero)")
    if text and not reads_text(kind) and not int(fields.get("pooled_dim", 0) or 0):
        raise ModelError(f"block {block!r} cannot see text tokens and the text encoder gives no pooled vector: "
                         f"pick a text design ({', '.join(text_designs())})")


def text_designs() -> list[str]:
    """Names of the designs that read text tokens."""
    from ditlab.models.blocks import BLOCK_KINDS

    return [n for n, k in {**BLOCK_KINDS, **DESIGNS}.items() if reads_text(k)]
