"""ditlab.interop: the official DiT checkpoint layout and diffusers' DiTTransformer2DModel."""
from ditlab.interop.diffusers import from_diffusers, to_diffusers
from ditlab.interop.official import (
    from_official,
    infer_official_geometry,
    official_state_dict,
    read_checkpoint,
    to_official,
)

__all__ = [
    "from_diffusers",
    "from_official",
    "infer_official_geometry",
    "official_state_dict",
    "read_checkpoint",
    "to_diffusers",
    "to_official",
]
