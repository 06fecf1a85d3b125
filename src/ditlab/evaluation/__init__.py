"""ditlab.evaluation: sample-quality metrics from Inception features, offline.

Typical use (what ``ditlab eval`` does)::

    ext = InceptionFeatures("cuda")                       # inception-2015-12-05, no download
    ref = load_image_source("data/val")                   # folder | ADM .npz | stats .npz
    ref_feats, _ = source_features(ref, ext)              # cached by content hash
    gen_feats = ext.features(quantize_images(samples))    # model output in [-1, 1], (N, 3, H, W)
    compute_metrics(gen_feats, ref_feats, "fid,kid,pr")   # {'fid': ..., 'kid_mean': ..., ...}
"""
from ditlab.evaluation.frechet import feature_statistics, frechet_distance
from ditlab.evaluation.inception import InceptionFeatures, default_weights_path, quantize_images
from ditlab.evaluation.metrics import (
    FeatureStats,
    compute_metrics,
    fid,
    inception_score,
    kid,
    precision_recall,
)
from ditlab.evaluation.sources import (
    ImageSource,
    cached_extract,
    load_image_source,
    save_stats,
    source_features,
)

__all__ = [
    "FeatureStats",
    "ImageSource",
    "InceptionFeatures",
    "cached_extract",
    "compute_metrics",
    "default_weights_path",
    "feature_statistics",
    "fid",
    "frechet_distance",
    "inception_score",
    "kid",
    "load_image_source",
    "precision_recall",
    "quantize_images",
    "save_stats",
    "source_features",
]
