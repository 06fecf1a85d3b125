"""ditlab.interop: the official DiT checkpoint layout, and diffusers' DiTTransformer2DModel,
SD3Transformer2DModel and PixArtTransformer2DModel (``to_diffusers``/``from_diffusers`` pick the converter from
the model's type and design)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ditlab.errors import ModelError
from ditlab.interop import diffusers as _dit
from ditlab.interop import pixart as _pixart
from ditlab.interop import sd3 as _sd3
from ditlab.interop.official import (
    from_official,
    infer_official_geometry,
    official_state_dict,
    read_checkpoint,
    to_official,
)
from ditlab.models import DiT
from ditlab.models.mmdit import MMDiT

# what from_diffusers converts
DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "SD3Transformer2DModel", "PixArtTransformer2DModel")


def to_diffusers(model: nn.Module):
    """The diffusers transformer computing the same function as ``model``: a ``DiTTransformer2DModel`` for a
    DiT, a ``PixArtTransformer2DModel`` for a PixArt DiT, an ``SD3Transformer2DModel`` for an MMDiT; a one-line
    ModelError for other designs."""
    exporters = {DiT: _dit.to_diffusers, MMDiT: _sd3.to_diffusers_sd3}
    export = exporters.get(type(model))
    if type(model) is DiT and model.config.block == "pixart":
        export = _pixart.to_diffusers_pixart
    if export is None:
        raise ModelError(f"diffusers has no counterpart of block {model.config.block!r}: keep the model in "
                         "ditlab's format (save_pretrained)")
    return export(model)


def from_diffusers(transformer, name: str | None = None, **overrides: Any) -> nn.Module:
    """A ditlab model holding the weights of a diffusers ``DiTTransformer2DModel`` (-> DiT),
    ``PixArtTransformer2DModel`` (-> DiT of PixArt blocks) or ``SD3Transformer2DModel`` (-> MMDiT); a one-line
    ModelError for another class."""
    importers = {"DiTTransformer2DModel": _dit.from_diffusers, "SD3Transformer2DModel": _sd3.from_diffusers_sd3,
                 "PixArtTransformer2DModel": _pixart.from_diffusers_pixart}
    kind = type(transformer).__name__
    if kind not in importers:
        raise ModelError(f"ditlab cannot convert a diffusers {kind}: it converts {', '.join(DIFFUSERS_CLASSES)}")
    return importers[kind](transformer, name, **overrides)


__all__ = [
    "DIFFUSERS_CLASSES",
    "from_diffusers",
    "from_official",
    "infer_official_geometry",
    "official_state_dict",
    "read_checkpoint",
    "to_diffusers",
    "to_official",
]
