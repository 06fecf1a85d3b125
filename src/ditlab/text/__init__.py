"""ditlab.text: text encoders and cached caption features (see ``encoder.py`` and ``feature_cache.py``).

``transformers`` is imported only when an encoder is loaded, so ``import ditlab.text`` stays cheap.
"""
from __future__ import annotations

from ditlab.text.encoder import (
    BUILTIN_TEXT_ENCODERS,
    DEFAULT_MAX_LENGTH,
    HFTextEncoder,
    TextEncoder,
    TextEncoderError,
    load_text_encoder,
    minilm_folder,
)
from ditlab.text.feature_cache import (
    CaptionFeatures,
    FeatureCacheError,
    caption_features,
    open_caption_features,
    table_path,
)

__all__ = [
    "BUILTIN_TEXT_ENCODERS",
    "DEFAULT_MAX_LENGTH",
    "CaptionFeatures",
    "FeatureCacheError",
    "HFTextEncoder",
    "TextEncoder",
    "TextEncoderError",
    "caption_features",
    "load_text_encoder",
    "minilm_folder",
    "open_caption_features",
    "table_path",
]
