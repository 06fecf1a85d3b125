"""The DiT configuration dataclass and the registry of named sizes (Peebles & Xie, 2023, Table 1)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ditlab.errors import ModelError
from ditlab.models.designs import DESIGN_MODELS, DESIGNS, OPTION_DEFAULTS, design_kind

# (depth, hidden_size, num_heads). S/B/L/XL are the paper's Table 1; T is a ViT-Tiny-like size
# for CPU demos and "Test" a 2-block size for unit tests.
SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    "T": (6, 192, 3),
    "Test": (2, 32, 2),
}
PAPER_SIZES = ("S", "B", "L", "XL")
# Saved by older versions, meaningless now: label dropout moved from the network to Condition.drop.
LEGACY_KEYS = frozenset({"class_dropout_prob"})
PATCH_SIZES = (2, 4, 8)
# Video models (num_frames > 0, ditlab.models.video): Latte's interleaved spatial / temporal blocks, or
# full 3-D attention over every token of the clip.
VIDEO_LAYOUTS = ("interleaved", "full")
VIDEO_KEYS = ("num_frames", "temporal_patch_size", "layout")  # left out of image models' dicts


def _registry() -> dict[str, tuple[int, int, int, int]]:
    names: dict[str, tuple[int, int, int, int]] = {}
    for size in ("S", "B", "L", "XL", "T"):
        for p in PATCH_SIZES:
            names[f"DiT-{size}/{p}"] = (*SIZES[size], p)
    names["DiT-Test/2"] = (*SIZES["Test"], 2)
    return names


REGISTRY: dict[str, tuple[int, int, int, int]] = _registry()  # name -> (depth, D, heads, patch)


@dataclass
class DiTConfig:
    """Everything that fixes a DiT's architecture; ``to_dict``/``DiTConfig(**d)`` round-trip.

    ``input_size`` is the latent (H, W) (32 for 256-px images through an 8x autoencoder);
    ``timestep_scale`` multiplies t before the sinusoidal embedding (1000 for flow matching);
    ``timestep_freq_shift`` only exists to reproduce diffusers' DiT, whose sinusoid differs.
    Condition dropout is not a model setting: it happens in ``Condition.drop`` during training.
    """

    name: str = "DiT-S/2"
    input_size: tuple[int, int] = (32, 32)
    in_channels: int = 4
    num_classes: int = 1000
    # > 1 factors whose product is num_classes: label = mixed-radix digits (moving digits: (10, 8) = digit x 8 +
    # direction), embedded as the sum of one table per factor; () = one table of num_classes rows
    class_factors: tuple[int, ...] = ()
    learn_sigma: bool = True
    context_dim: int = 0  # text: width of the encoder's token features (0 = no text tokens)
    pooled_dim: int = 0  # text: width of the pooled prompt vector added to the time embedding (0 = none)
    learned_null: bool = False  # text: a row without tokens (the null condition) reads a learned token
    depth: int = 12
    hidden_size: int = 384
    num_heads: int = 6
    patch_size: int = 2
    mlp_ratio: float = 4.0
    block: str = "adaLN-Zero"
    qk_norm: bool = False
    grad_checkpointing: bool | int = False  # True / -1: every block; N > 0: the first N blocks
    timestep_scale: float = 1.0
    frequency_embedding_size: int = 256
    timestep_freq_shift: float = 0.0  # 0: the paper's embedder; 1: diffusers' DiTTransformer2DModel
    # positions (ditlab.models.positions): "sincos" added to the patch tokens, or "rope" (2-D rotary, in attention;
    # 3-D over time, rows and columns in a video model)
    pos_embed: str = "sincos"
    pos_scale: float = 1.0  # coordinates divided by this (PixArt-α's interpolation scale)
    pos_base_size: int = 0  # > 0: every grid spans the coordinates of this many tokens (PixArt-α's base size)
    pos_max_size: int = 0  # > 0: a grid's positions are the centre crop of a table this wide (SD3)
    qkv_bias: bool = True  # U-ViT: False
    final_conv: bool = False  # U-ViT: a 3x3 convolution on the unpatchified output
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, e.g. provenance
    # --- video (num_frames = 0: an image model; see ditlab.models.video) ---
    num_frames: int = 0  # frames of the clips it is trained on (positions are computed for any count)
    temporal_patch_size: int = 1  # frames per token: 1 = per-frame 2-D patches, > 1 = tubelets
    layout: str = "interleaved"  # interleaved spatial / temporal blocks, or full 3-D attention

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, int):
            size = (size, size)
        size = tuple(int(s) for s in size)
        if len(size) != 2:
            raise ModelError(f"input_size must be an int or (H, W), got {self.input_size!r}")
        self.input_size = size  # type: ignore[assignment]
        self.class_factors = tuple(int(k) for k in self.class_factors)  # type: ignore[assignment]
        self.validate()

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (H/p, W/p)."""
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size

    def validate(self) -> None:
        """Raise ModelError for an impossible geometry, naming the fix."""
        h, w = self.input_size
        p = self.patch_size
        if p < 1 or h < 1 or w < 1:
            raise ModelError(f"patch_size and input_size must be positive, got p={p}, size={(h, w)}")
        if h % p or w % p:
            raise ModelError(
                f"input size {h}x{w} is not divisible by patch size {p}: use a latent side that is a "
                f"multiple of {p} (image side a multiple of {p} x the autoencoder downsampling)"
            )
        kind = design_kind(self.block)  # ModelError naming the valid ones for an unknown block
        if self.context_dim < 0 or self.pooled_dim < 0:
            raise ModelError(f"context_dim and pooled_dim must be >= 0, got {self.context_dim}, {self.pooled_dim}")
        if self.num_classes and self.context_dim:
            raise ModelError("a model takes class labels or text, not both: set num_classes=0 or context_dim=0")
        if kind.requires_text and not self.context_dim:
            raise ModelError(f"block {self.block!r} cross-attends to text tokens: build it with context_dim > 0 "
                             "(a text condition)")
        if self.num_classes and not getattr(kind, "takes_labels", True):
            raise ModelError(f"block {self.block!r} takes no class labels: build it with num_classes=0")
        for key, default in OPTION_DEFAULTS.items():
            if getattr(self, key) != default and key not in getattr(kind, "own_options", ()):
                raise ModelError(f"{key}={getattr(self, key)!r} is not an option of block {self.block!r}: "
                                 f"leave it at {default!r}")
        if self.pos_embed not in ("sincos", "rope"):
            raise ModelError(f"unknown pos_embed {self.pos_embed!r}: choose sincos or rope")
        if self.pos_embed == "rope" and (self.hidden_size // self.num_heads) % 4:
            raise ModelError(f"2-D RoPE needs a head width divisible by 4, got {self.hidden_size // self.num_heads}: "
                             "change hidden_size or num_heads")
        if not self.pos_scale > 0 or self.pos_base_size < 0 or self.pos_max_size < 0:
            raise ModelError(f"pos_scale must be > 0 and pos_base_size, pos_max_size >= 0, got {self.pos_scale}, "
                             f"{self.pos_base_size}, {self.pos_max_size}")
        if self.pos_max_size and max(self.grid_size) > self.pos_max_size:
            raise ModelError(f"a {self.grid_size[0]}x{self.grid_size[1]} token grid exceeds the position table's "
                             f"{self.pos_max_size} tokens per side: use a smaller input_size")
        if self.hidden_size % self.num_heads:
            raise ModelError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}: "
                "pick a head count that divides it"
            )
        if self.hidden_size % 4:
            raise ModelError(f"hidden_size {self.hidden_size} must be divisible by 4 (2-D sin-cos positions)")
        if self.depth < 1 or self.in_channels < 1:
            raise ModelError(f"depth and in_channels must be >= 1, got {self.depth}, {self.in_channels}")
        if self.num_classes < 0:
            raise ModelError(f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if self.class_factors and (len(self.class_factors) < 2 or min(self.class_factors) < 2
                                   or math.prod(self.class_factors) != self.num_classes):
            raise ModelError(f"class_factors {list(self.class_factors)} must be two or more factors >= 2 whose product "
                             f"is num_classes ({self.num_classes}), e.g. 10,8 for 80 classes: fix or drop them")
        self._validate_video()

    def _validate_video(self) -> None:
        pt = self.temporal_patch_size
        if self.num_frames < 0 or pt < 1:
            raise ModelError(f"num_frames must be >= 0 and temporal_patch_size >= 1, got {self.num_frames}, {pt}")
        if not self.num_frames:
            if pt != 1 or self.layout != VIDEO_LAYOUTS[0]:
                raise ModelError("temporal_patch_size and layout describe video models: set num_frames > 0")
            return
        if self.num_frames % pt:
            raise ModelError(f"{self.num_frames} frames are not divisible by the temporal patch size {pt}: "
                             f"use a frame count that is a multiple of {pt}")
        if self.layout not in VIDEO_LAYOUTS:
            raise ModelError(f"unknown video layout {self.layout!r}: choose one of {', '.join(VIDEO_LAYOUTS)}")
        if self.block in DESIGNS:
            raise ModelError(f"{self.block!r} has a backbone of its own, which has no video form: use adaLN-Zero, "
                             "adaLN or cross-attention blocks")
        if design_kind(self.block).prefix_tokens:
            raise ModelError(f"block {self.block!r} prepends condition tokens, which a video model does not "
                             "support: use adaLN-Zero, adaLN or cross-attention")
        if self.pos_embed == "rope" and self.block != "adaLN-Zero":
            raise ModelError("3-D RoPE in a video model needs adaLN-Zero blocks: use --pos_embed sincos or "
                             "--block adaLN-Zero")
        if (self.pos_scale, self.pos_base_size, self.pos_max_size) != (1.0, 0, 0):
            raise ModelError("pos_scale, pos_base_size and pos_max_size are image-grid options a video model "
                             "does not take: leave them at their defaults")

    @property
    def is_video(self) -> bool:
        """A space-time model of (N, C, F, H, W) latents."""
        return self.num_frames > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["class_factors"] = list(self.class_factors)
        if not self.class_factors:  # models with one label table describe themselves as they always did
            d.pop("class_factors")
        if not self.num_frames:  # image models describe themselves as they always did
            for key in VIDEO_KEYS:
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        """Inverse of ``to_dict``; unknown keys are a ModelError naming them (keys older ditlab versions
        saved that no longer describe the architecture are dropped)."""
        d = {k: v for k, v in d.items() if k not in LEGACY_KEYS}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelError(
                f"unknown model config keys {unknown}: valid keys are {', '.join(sorted(names))}"
            )
        return cls(**d)


def checkpointed_count(setting: bool | int, depth: int) -> int:
    """How many leading blocks of ``depth`` a ``grad_checkpointing`` setting recomputes in the backward pass:
    True or -1 every block, N > 0 the first N, False or 0 none."""
    if setting is True or (not isinstance(setting, bool) and setting < 0):
        return depth
    return min(int(setting), depth)


def list_models() -> list[str]:
    """Registered model names, the paper's 12 first (S, B, L, XL x patch 2/4/8), then tiny ones, then the
    other designs (MMDiT, SD3-medium, U-ViT; ``ditlab.models.designs``)."""
    return [*REGISTRY, *DESIGN_MODELS]


def config_for(name: str, **overrides: Any) -> DiTConfig:
    """The config of a registered model with keyword overrides (any DiTConfig field but ``name``)."""
    if name in DESIGN_MODELS:
        base: dict[str, Any] = dict(name=name, **DESIGN_MODELS[name])
    elif name in REGISTRY:
        depth, hidden, heads, patch = REGISTRY[name]
        base = dict(name=name, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch)
    else:
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    allowed = {f.name for f in dataclasses.fields(DiTConfig)} - {"name"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ModelError(f"unknown model option(s) {unknown}: valid ones are {', '.join(sorted(allowed))}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return DiTConfig(**base)
