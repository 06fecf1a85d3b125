"""ditlab.models: the Diffusion Transformer networks (Peebles & Xie, 2023) and their registry.

    from ditlab.models import create_model
    model = create_model("DiT-XL/2", input_size=32, num_classes=1000)
    out = model(x, t, y=labels)  # (N, 2C, H, W) with learn_sigma; text models: context=, context_mask=, pooled=
    video = create_model("DiT-S/2", input_size=12, num_frames=8)   # VideoDiT: x (N, C, F, H, W)

Imports nothing else from ditlab except the error types.
"""
from ditlab.models.blocks import BLOCK_TYPES
from ditlab.models.config import DiTConfig, list_models
from ditlab.models.dit import DiT
from ditlab.models.io import load_pretrained, load_state_dict_strict, save_pretrained
from ditlab.models.registry import create_model, model_from_config
from ditlab.models.video import VideoDiT, video_from_image

__all__ = [
    "BLOCK_TYPES",
    "DiT",
    "DiTConfig",
    "create_model",
    "list_models",
    "load_pretrained",
    "load_state_dict_strict",
    "model_from_config",
    "save_pretrained",
    "VideoDiT",
    "video_from_image",
]
