"""Typed training configuration: one flat dataclass, named presets, YAML files and ``--key value`` flags.

Resolution order (later wins): dataclass defaults -> preset -> YAML file -> command-line flags.
The resolved config is saved as ``config.json`` in every run directory; rerunning the same command
resumes the run.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ditlab.errors import ConfigError
from ditlab.files import atomic_write_json
from ditlab.presets import PRESETS  # the named recipes (re-exported: ditlab.config.PRESETS)


def opt(default: Any, help: str, *, resumable: bool = False) -> Any:
    """A config field with its one-line description (shown by ``ditlab train --help``) and whether it
    may change when a run is resumed (only fields that do not change what is trained may)."""
    return field(default=default, metadata={"help": help, "resumable": resumable})


@dataclass
class TrainConfig:
    """Everything ``ditlab train`` needs. Grouped by role; every field is a ``--key value`` flag."""

    # --- run ---
    run_dir: str = opt("runs/mnist", "run directory (config, checkpoints, logs, samples); rerun to resume",
                       resumable=True)
    seed: int = opt(0, "seed of everything random (data order, noise, dropout, flips)")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N", resumable=True)
    # --- data ---
    data: str = opt("mnist", "mnist | digits | path to an image folder (class subfolders or flat)")
    image_size: int = opt(32, "side of the square training images in pixels")
    buckets: str = opt("", "image folders: aspect-ratio buckets, each batch one size: auto (sizes near image_size^2 "
                           "in area) or HxW,HxW,... in pixels; \"\" = square centre crops")
    flip: bool | None = opt(None, "random horizontal flips (default: on for folders, off for digits)")
    num_workers: int = opt(2, "image decoding processes for folders", resumable=True)
    latents: str | None = opt(None, "train from a latent cache made by `ditlab extract-latents`")
    condition: str = opt("auto", "auto | class | text | none: what the model is conditioned on (auto: what the "
                                 "data has: captions, else classes)")
    text_encoder: str = opt("minilm", "text models: minilm (built in) or a local Hugging Face text-encoder folder "
                                      "(T5/UMT5, CLIP text, BERT-like)")
    text_max_length: int | None = opt(None, "text models: token positions per caption (longer ones are truncated "
                                            "with a warning; default: the encoder's, 64 for minilm)")
    text_null: str = opt("empty", "text models: null condition of caption dropout and guidance: empty (the empty "
                                  "prompt's features) | learned (a learned null token)")
    text_standardize: bool = opt(False, "text models: standardise each text-feature dimension by its mean and std "
                                        "over the dataset's captions (measured once, stored with the features; "
                                        "worse on the text demo at equal steps)")
    # --- video (docs/video.md) ---
    num_frames: int = opt(0, "video: frames per clip (0: the data's own, 8 for moving-mnist); a folder is read "
                             "as videos when > 0")
    frame_stride: int = opt(1, "video folders: take every N-th frame of a video")
    num_videos: int = opt(0, "moving-mnist: number of training videos (0: 20,000)")
    num_digits: int = opt(0, "moving-mnist: digits per video (0: 1; 2 for moving-mnist-classic)")
    video_layout: str = opt("interleaved", "video model: interleaved spatial/temporal blocks | full 3-D attention")
    temporal_patch_size: int = opt(1, "video model: frames per token (1: per-frame patches, > 1: tubelets)")
    image_steps: int = opt(0, "video: train the first N steps on the clips' frames as independent images "
                              "(temporal blocks idle), then on clips: an image model extended to video in one run")
    init_from: str = opt("", "video: start from an image DiT (a run directory's EMA weights, or a model folder) "
                             "with zero-gated temporal blocks")
    # --- autoencoder (latent space) ---
    autoencoder: str = opt("auto", "auto (train ditlab's KL-VAE on this data) | pixel | folder | hub id")
    vae_downsample: int = opt(4, "auto VAE: spatial downsampling factor")
    vae_latent_channels: int = opt(4, "auto VAE: latent channels")
    vae_steps: int = opt(1600, "auto VAE: training steps")
    vae_batch_size: int = opt(16, "auto VAE: batch size")
    vae_lr: float = opt(3e-3, "auto VAE: learning rate")
    vae_kl_weight: float = opt(1e-5, "auto VAE: weight of the KL term")
    vae_sample_posterior: bool = opt(False, "encode a posterior sample instead of its mean")
    # --- model ---
    model: str = opt("DiT-S/2", "registered model name (see `ditlab flops`), e.g. DiT-XL/2")
    depth: int | None = opt(None, "override the model's number of blocks")
    hidden_size: int | None = opt(None, "override the model's width")
    num_heads: int | None = opt(None, "override the model's attention heads")
    patch_size: int | None = opt(None, "override the model's patch size")
    block: str = opt("adaLN-Zero", "block design of DiT names: adaLN-Zero | adaLN | cross-attention | in-context | "
                                   "adaLN-Zero-in-context | pixart (text: adaLN-single + cross-attention) | mmdit | "
                                   "u-vit (MMDiT-*, U-ViT-*, SD3-medium bring their own unless this names another)")
    qk_norm: bool = opt(False, "RMS-normalise queries and keys in attention")
    class_factors: str = opt("", "class labels as mixed-radix factors embedded as a sum of one table each, e.g. "
                                 "10,8 for moving digits (digit x 8 + direction); empty: one row per class")
    pos_embed: str = opt("sincos", "token positions: sincos (2-D sin-cos added to the patches) | rope (2-D rotary; "
                                   "3-D for video)")
    pos_scale: float = opt(1.0, "position coordinates divided by this (PixArt-α's interpolation scale)")
    pos_interpolate: bool = opt(False, "every grid's positions span the default grid's range (PixArt-α's base size)")
    cond_dropout_prob: float = opt(0.1, "probability of dropping the condition (label or caption) for guidance")
    # --- process ---
    process: str = opt("ddpm", "ddpm | flow")
    schedule: str = opt("linear", "ddpm noise schedule: linear | cosine | scaled_linear")
    num_timesteps: int = opt(1000, "ddpm: number of noise steps T")
    prediction: str = opt("eps", "ddpm: what the network predicts: eps | x0 | v")
    learn_sigma: bool = opt(True, "ddpm: learn the reverse variance (hybrid loss)")
    time_sampling: str = opt("logit_normal", "flow: training time density: uniform | logit_normal | mode")
    shift: float = opt(1.0, "flow: SD3 time shift (1 = none)")
    shift_base: int = opt(0, "flow: latent side at which --shift holds; h x w latents use shift*sqrt(hw)/shift_base "
                             "(SD3's resolution-dependent shift; 0 = one shift for every size)")
    # --- optimisation ---
    steps: int = opt(4000, "training steps (raise it and rerun to train further)", resumable=True)
    global_batch_size: int = opt(128, "images per step over all processes")
    lr: float = opt(1e-4, "AdamW learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps")
    lr_schedule: str = opt("constant", "learning rate after warm-up: constant | cosine | linear (either decays to 0 at "
                                       "--steps, over the last --lr_decay_steps steps)")
    lr_decay_steps: int = opt(0, "cosine/linear: the decay spans the last N steps (0 = every step after warm-up)")
    grad_clip: float = opt(1.0, "gradient-norm clipping (0 disables)")
    ema_decay: float = opt(0.9999, "EMA decay of the sampling weights")
    ema_warmup: bool = opt(True, "EMA decay min(ema_decay, (1 + step) / (10 + step)) so short runs are usable")
    autocast: str = opt("none", "none | bf16 | fp16 mixed precision (GPU)")
    grad_checkpointing: int = opt(0, "blocks recomputed in the backward pass (less memory, more time): 0 none, "
                                  "N the first N, -1 or the bare flag all", resumable=True)
    compile: bool = opt(False, "torch.compile the model", resumable=True)
    compile_blocks: bool = opt(False, "torch.compile each block in place instead (regional: one compiled graph "
                               "serves every block); H100: docs/performance.md", resumable=True)
    cuda_graphs: bool = opt(False, "one GPU, no fp16: replay each step's forward + loss + backward (and the VAE's, "
                            "and sampling's network) as a CUDA graph; H100: docs/performance.md", resumable=True)
    fused_kernels: bool = opt(False, "fused GPU kernels for adaLN norm + modulate, gated residuals and sampling's "
                              "GELU (ditlab.models.fused); H100 XL/2: 1.24x over eager; CPU numbers unchanged",
                              resumable=True)
    fsdp: bool = opt(False, "under torchrun: shard parameters, gradients and optimiser state (FSDP2)",
                     resumable=True)
    max_nonfinite_steps: int = opt(10, "stop after this many non-finite losses in a row", resumable=True)
    # --- logging and checkpoints ---
    log_every: int = opt(50, "steps between log lines", resumable=True)
    ckpt_every: int = opt(1000, "steps between checkpoints", resumable=True)
    keep_last: int = opt(2, "checkpoints kept", resumable=True)
    sample_every: int = opt(0, "steps between EMA sample grids (0: only at the end)", resumable=True)
    tensorboard: bool = opt(True, "write TensorBoard events", resumable=True)
    # --- sampling and evaluation at the end of training ---
    sampler: str = opt("", "sampler for grids and evaluation (\"\" = the process's default)", resumable=True)
    sample_steps: int = opt(50, "sampler steps", resumable=True)
    cfg_scale: float = opt(1.0, "classifier-free guidance scale (1 = none)", resumable=True)
    eval_num: int = opt(0, "samples scored at the end (0 = none); MNIST: classifier metrics", resumable=True)
    eval_batch_size: int = opt(250, "samples per batch when evaluating", resumable=True)
    # --- evaluation during training (ditlab/training/periodic_eval.py) ---
    eval_every: int = opt(0, "steps between in-training evaluations (0 = off)", resumable=True)
    eval_fid_num: int = opt(1000, "samples per in-training evaluation", resumable=True)
    eval_metrics: str = opt("auto", "auto | fid | mnist | fid,mnist", resumable=True)
    eval_ref: str = opt("", "FID reference: \"\" = the training set, or an image folder | ADM .npz | stats .npz",
                        resumable=True)
    eval_ref_num: int = opt(10000, "training images in the FID reference (0 = all)", resumable=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resumable_fields() -> frozenset[str]:
    """Fields that may differ between a run's first launch and a resume (declared on the fields)."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable"))


# Names older versions wrote into config.json, mapped to today's fields.
LEGACY_ALIASES = {"class_dropout_prob": "cond_dropout_prob"}


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
# int fields that also take a bare flag or true/false (older runs stored them as booleans): the value of "true"
FLAG_INTS: dict[str, int] = {"grad_checkpointing": -1}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _field_type(name: str) -> tuple[type, bool]:
    """The base type of a field and whether it is Optional."""
    hints = typing.get_type_hints(TrainConfig)
    tp = hints[name]
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def canonical_key(key: str) -> str:
    """``--some-key`` spelling and legacy names -> the field name."""
    key = key.replace("-", "_")
    return LEGACY_ALIASES.get(key, key)


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, FIELDS, n=3)
    return f"did you mean {', '.join(close)}?" if close else "run `ditlab train --dry-run` to see all keys"


def coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (a string from the CLI or a YAML scalar) to the type of field ``key``."""
    key = canonical_key(key)
    if key not in FIELDS:
        raise ConfigError(f"unknown config key '{key}': {_suggest(key)}")
    tp, optional = _field_type(key)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if value is None:
        raise ConfigError(f"config key '{key}' cannot be empty: give a {tp.__name__}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if key in FLAG_INTS and (isinstance(value, bool) or str(value).strip().lower() in _TRUE[1:] + _FALSE[1:]):
                return FLAG_INTS[key] if str(value).strip().lower() in _TRUE else 0  # the old boolean
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config key '{key}' expects {tp.__name__}, got {value!r}: fix the value"
        ) from None
    raise AssertionError(f"unhandled type {tp} for {key}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML override file (a flat mapping of config keys)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found: check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of key: value pairs")
    return data


def resolve_config(
    preset: str = "mnist",
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults -> preset -> YAML -> overrides, each value type-checked and range-checked."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = {}
    for source in (PRESETS[preset], load_yaml(yaml_path) if yaml_path else {}, overrides or {}):
        for key, value in source.items():
            key = canonical_key(key)
            values[key] = coerce(key, value)
    config = TrainConfig(**values)
    validate(config)
    return config


LR_SCHEDULES = ("constant", "cosine", "linear")


def parse_class_factors(text: str) -> tuple[int, ...]:
    """``--class_factors`` as integers (``"10,8"`` -> (10, 8); empty -> ()); ConfigError for anything else."""
    if not text.strip():
        return ()
    parts = [k.strip() for k in text.split(",")]
    if not all(k.isdigit() for k in parts):
        raise ConfigError(f"class_factors must be comma-separated integers such as 10,8, got '{text}'")
    return tuple(int(k) for k in parts)


def validate(c: TrainConfig) -> None:
    """Range checks that need no data or model; raise ConfigError naming the fix."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(c.steps >= 1, f"steps must be >= 1, got {c.steps}")
    need(c.global_batch_size >= 1, f"global_batch_size must be >= 1, got {c.global_batch_size}")
    need(c.lr > 0, f"lr must be > 0, got {c.lr}")
    need(c.lr_schedule in LR_SCHEDULES,
         f"unknown lr_schedule '{c.lr_schedule}': choose {', '.join(LR_SCHEDULES[:-1])} or {LR_SCHEDULES[-1]}")
    need(c.lr_decay_steps >= 0, f"lr_decay_steps must be >= 0 (0 = decay over every step after warm-up), "
                                f"got {c.lr_decay_steps}")
    need(c.image_size >= 1, f"image_size must be >= 1, got {c.image_size}")
    need(0.0 <= c.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {c.ema_decay}")
    need(0.0 <= c.cond_dropout_prob < 1.0, f"cond_dropout_prob must be in [0, 1), got {c.cond_dropout_prob}")
    need(c.condition in ("auto", "class", "text", "none"),
         f"unknown condition '{c.condition}': choose auto, class, text or none")
    need(c.text_null in ("empty", "learned"), f"text_null must be empty or learned, got '{c.text_null}'")
    need(c.text_max_length is None or c.text_max_length >= 2,
         f"text_max_length must be >= 2 (or none for the encoder's default), got {c.text_max_length}")
    need(c.cfg_scale >= 0, f"cfg_scale must be >= 0, got {c.cfg_scale}")
    need(c.sample_steps >= 1, f"sample_steps must be >= 1, got {c.sample_steps}")
    need(c.ckpt_every >= 1, f"ckpt_every must be >= 1, got {c.ckpt_every}")
    need(c.log_every >= 1, f"log_every must be >= 1, got {c.log_every}")
    need(c.keep_last >= 1, f"keep_last must be >= 1, got {c.keep_last}")
    need(c.num_workers >= 0, f"num_workers must be >= 0, got {c.num_workers}")
    need(c.grad_checkpointing >= -1,
         f"grad_checkpointing must be -1 (all blocks), 0 (none) or a number of blocks, got {c.grad_checkpointing}")
    need(not (c.compile and c.compile_blocks),
         "--compile (the whole model) and --compile_blocks (each block) exclude each other: keep one")
    need(c.eval_num >= 0, f"eval_num must be >= 0, got {c.eval_num}")
    need(c.eval_every >= 0, f"eval_every must be >= 0 (0 = no evaluation during training), got {c.eval_every}")
    need(c.eval_fid_num >= 2, f"eval_fid_num must be >= 2 (statistics need two samples), got {c.eval_fid_num}")
    need(c.eval_ref_num == 0 or c.eval_ref_num >= 2,
         f"eval_ref_num must be 0 (the whole training set) or >= 2, got {c.eval_ref_num}")
    metrics = [m.strip() for m in c.eval_metrics.lower().split(",")]
    need(metrics == ["auto"] or all(m in ("fid", "mnist") for m in metrics),
         f"eval_metrics must be auto or a comma-separated list of fid, mnist; got '{c.eval_metrics}'")
    need(c.data == "mnist" or "mnist" not in metrics,
         f"eval_metrics 'mnist' needs --data mnist (data is '{c.data}'): use --eval_metrics fid")
    need(c.autocast in ("none", "bf16", "fp16"), f"autocast must be none, bf16 or fp16, got '{c.autocast}'")
    need(c.process in ("ddpm", "flow"), f"unknown process '{c.process}': choose ddpm or flow")
    need(c.num_frames >= 0 and c.frame_stride >= 1 and c.num_videos >= 0 and c.num_digits >= 0,
         "num_frames, num_videos and num_digits must be >= 0 and frame_stride >= 1")
    need(c.video_layout in ("interleaved", "full"),
         f"unknown video_layout '{c.video_layout}': choose interleaved or full")
    parse_class_factors(c.class_factors)
    need(c.temporal_patch_size >= 1, f"temporal_patch_size must be >= 1, got {c.temporal_patch_size}")
    need(c.image_steps >= 0, f"image_steps must be >= 0, got {c.image_steps}")
    need(not c.num_frames or c.num_frames % c.temporal_patch_size == 0,
         f"num_frames {c.num_frames} is not divisible by temporal_patch_size {c.temporal_patch_size}: "
         "use a multiple of it")
    need(bool(c.data) or bool(c.latents), "no training data: pass --data PATH (or mnist, digits) or --latents CACHE")
    need(c.pos_embed in ("sincos", "rope"), f"unknown pos_embed '{c.pos_embed}': choose sincos or rope")
    need(c.pos_scale > 0, f"pos_scale must be > 0, got {c.pos_scale}")
    need(c.shift_base >= 0, f"shift_base must be >= 0 (0 = no resolution shift), got {c.shift_base}")
    if c.buckets:
        from ditlab.data.buckets import parse_buckets

        parse_buckets(c.buckets, c.image_size, 1)  # the syntax now; divisibility once the geometry is known
        need(not c.latents, "--buckets needs image files (--data FOLDER): a latent cache holds one size")


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as JSON (atomically)."""
    atomic_write_json(path, config.to_dict(), sort_keys=True)


def load_config(path: str | Path) -> TrainConfig:
    """Read a run's ``config.json`` back into a TrainConfig (unknown keys are an error)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"'{path}' not found: is this a ditlab run directory?") from None
    except json.JSONDecodeError:
        raise ConfigError(f"'{path}' is not valid JSON: the run directory is damaged") from None
    values = {canonical_key(key): coerce(key, value) for key, value in data.items()}
    return TrainConfig(**values)


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """Turn ``['--lr', '1e-4', '--steps=10', '--no-tensorboard']`` into ``{'lr': '1e-4', ...}``."""
    result: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument '{token}': overrides look like --key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            name = key.replace("-", "_")
            bare_bool = name in FIELDS and (_field_type(name)[0] is bool or name in FLAG_INTS)
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is None or nxt.startswith("--"):
                if name.startswith("no_") and name[3:] in FIELDS:
                    key, value = name[3:], "false"
                elif bare_bool:
                    value = "true"
                else:
                    raise ConfigError(f"flag --{key} needs a value: --{key} VALUE")
                i += 1
            else:
                value = nxt
                i += 2
        key = key.replace("-", "_")
        coerce(key, value)  # fail early on unknown keys and bad types
        result[key] = value
    return result

