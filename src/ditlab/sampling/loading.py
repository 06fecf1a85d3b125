"""Building a ``Pipeline`` from what is on disk: a training run directory or a model folder.

A run directory (``ditlab train``) holds ``config.json`` and ``checkpoints/step_N/`` whose ``meta.json``
describes everything sampling needs: the model config, the process, the condition, the autoencoder and
the sampling defaults (runs written before those keys existed fall back to ``config.json``).
A model folder (``ditlab convert``, ``save_pretrained``) holds ``config.json`` (the DiT config),
``model.safetensors`` and optionally ``pipeline.json`` (process, condition, sampling defaults,
autoencoder); a converted official DiT defaults to the official process (DDPM, linear schedule, 1000
steps, learned sigma) and sampler (DDPM, 250 steps, guidance 4).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ditlab.errors import CheckpointError

PIPELINE_FILE = "pipeline.json"
RUN_AUTOENCODER_DIR = "autoencoder"  # where `ditlab train --autoencoder auto` keeps the VAE it trained
RUN_CONDITION_DIR = "condition"  # what a run's condition keeps beside its records (text features)
# The official DiT sampling recipe (sample.py of the paper's code): DDPM, 250 steps, guidance 4.
OFFICIAL_SAMPLING = {"sampler": "ddpm", "steps": 250, "cfg_scale": 4.0}
OFFICIAL_PROCESS = {"kind": "ddpm", "schedule": "linear", "num_timesteps": 1000, "prediction": "eps"}
# SD3's recipe (Esser et al. 2024; diffusers' StableDiffusion3Pipeline): rectified flow with time shift 3, Euler,
# 28 steps, guidance 7. Its text is three encoders: CLIP-L and CLIP-G penultimate states (77 tokens, 768 + 1280
# wide, zero-padded to 4096) followed by T5-XXL's (4096 wide) as context, every token attended to (no mask),
# and the two CLIPs' pooled outputs (768 + 1280 = 2048) as the pooled vector.
SD3_PIPELINE: dict[str, Any] = {
    "process": {"kind": "flow", "shift": 3.0, "time_sampling": "logit_normal"},
    "sampling": {"sampler": "euler", "steps": 28, "cfg_scale": 7.0},
    "condition": {"kind": "text", "encoder": "sd3:clip-l+clip-g+t5-xxl", "context_dim": 4096, "pooled_dim": 2048,
                  "max_length": 77, "null": "empty", "attend_padding": True},
}
# PixArt-α's recipe (Chen et al. 2023; diffusers' PixArtAlphaPipeline): IDDPM with the linear schedule, 1000 steps
# and learned sigma; DPM-Solver++ (2M), 20 steps, guidance 4.5; T5-XXL token features (120 tokens, padding
# masked), no pooled vector, the empty prompt's encoding as the unconditional branch.
PIXART_PIPELINE: dict[str, Any] = {
    "process": {**OFFICIAL_PROCESS, "learn_sigma": True},
    "sampling": {"sampler": "dpmpp_2m", "steps": 20, "cfg_scale": 4.5},
    "condition": {"kind": "text", "encoder": "t5-v1_1-xxl", "context_dim": 4096, "pooled_dim": 0,
                  "max_length": 120, "null": "empty", "attend_padding": False},
}
LAYOUT_HINT = ("pass a run directory written by `ditlab train` (config.json + checkpoints/) or a model folder "
               "written by `ditlab convert` (config.json + model.safetensors)")


def is_run_dir(path) -> bool:
    """A ``ditlab train`` run directory (as opposed to a model folder)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return True
    cfg = path / "config.json"
    if not cfg.is_file() or (path / "model.safetensors").is_file():
        return False
    try:
        return "global_batch_size" in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise CheckpointError(f"cannot read {path} ({err.strerror}): {what}") from None
    except ValueError:
        raise CheckpointError(f"{path} is not valid JSON: {what}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object: {what}")
    return data


def _legacy_process(config: dict) -> dict[str, Any]:
    """The process options of a run's config.json (runs whose checkpoints predate ``meta['process']``)."""
    if config.get("process", "ddpm") == "flow":
        return {"kind": "flow", "time_sampling": config.get("time_sampling", "logit_normal"),
                "shift": config.get("shift", 1.0)}
    return {"kind": "ddpm", "schedule": config.get("schedule", "linear"),
            "num_timesteps": config.get("num_timesteps", 1000), "prediction": config.get("prediction", "eps"),
            "learn_sigma": config.get("learn_sigma", True)}


def _legacy_condition(meta: dict, config: dict) -> dict[str, Any]:
    num_classes = int(meta.get("num_classes", 0))
    if not num_classes:
        return {"kind": "none"}
    digits = config.get("data") in ("mnist", "digits") and num_classes == 10
    return {"kind": "class", "num_classes": num_classes, "class_names": [str(i) for i in range(10)] if digits else []}


def _build_process(d: dict[str, Any]):
    from ditlab.diffusion import create_process

    d = dict(d)
    return create_process(d.pop("kind"), **d)


def _load_autoencoder(spec: str, channels: int | None, device: torch.device):
    from ditlab.autoencoders import load_autoencoder

    return load_autoencoder(spec, channels=channels).to(device).eval()


def pipeline_from_run(cls, run_dir, *, ema: bool, device, autoencoder: str | None):
    """See ``Pipeline.from_run``."""
    from ditlab.conditioning import condition_from_dict
    from ditlab.models import model_from_config
    from ditlab.sampling.pipeline import SamplingDefaults
    from ditlab.training.checkpoint import latest_checkpoint, load_weights, read_meta

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory '{run_dir}' does not exist: pass the folder `ditlab train` wrote")
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"'{run_dir}' has no config.json: it is not a ditlab run directory; {LAYOUT_HINT}")
    config = _read_json(run_dir / "config.json", "the run directory is damaged")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"run '{run_dir}' has no checkpoint yet: train it first (ditlab train ...)")
    meta = read_meta(ckpt)
    try:
        model = model_from_config(meta["model"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint '{ckpt}' has no usable model config ({err}): retrain") from None
    weights = load_weights(ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    _load_strict(model, weights, ckpt)
    device = torch.device(device)
    model.to(device).eval()
    process = _build_process(meta.get("process") or _legacy_process(config))
    condition = condition_from_dict(meta.get("condition") or _legacy_condition(meta, config),
                                    root=run_dir / RUN_CONDITION_DIR, device=device)
    spec = autoencoder or meta.get("autoencoder_spec") or config.get("autoencoder", "auto")
    if spec in ("auto", RUN_AUTOENCODER_DIR):
        spec = str(run_dir / RUN_AUTOENCODER_DIR)
    ae = _load_autoencoder(spec, meta.get("image_channels"), device)
    sampling = meta.get("sampling") or {"sampler": config.get("sampler") or None,
                                        "steps": config.get("sample_steps", 50),
                                        "cfg_scale": config.get("cfg_scale", 1.0)}
    info = {"source": str(run_dir), "step": int(meta["step"]), "checkpoint": ckpt.name, "ema": ema,
            "image_size": meta.get("image_size")}
    return cls(model, process, ae, condition, meta["latent_shape"], defaults=SamplingDefaults(**sampling),
               device=device, info=info)


def _load_strict(model, weights: dict, source: Path) -> None:
    expected, got = set(model.state_dict()), set(weights)
    if expected != got:
        missing, unexpected = sorted(expected - got), sorted(got - expected)
        raise CheckpointError(
            f"checkpoint '{source}' does not fit its model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            "it belongs to another model"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise CheckpointError(f"checkpoint '{source}' has tensors of another shape: it belongs to another model") \
            from None


def pipeline_from_pretrained(cls, model_dir, *, autoencoder: str | None, device, text_encoder: str | None):
    """See ``Pipeline.from_pretrained``."""
    from ditlab.conditioning import condition_from_dict
    from ditlab.models import load_pretrained
    from ditlab.sampling.pipeline import SamplingDefaults

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise CheckpointError(f"'{model_dir}' does not exist: {LAYOUT_HINT}")
    if not ((model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()):
        raise CheckpointError(f"'{model_dir}' is neither a run directory nor a model folder: {LAYOUT_HINT}")
    device = torch.device(device)
    model = load_pretrained(model_dir, device=device)
    spec = _read_json(model_dir / PIPELINE_FILE, "re-run `ditlab convert`") \
        if (model_dir / PIPELINE_FILE).is_file() else {}
    cfg = model.config
    process = _build_process(spec.get("process") or {**OFFICIAL_PROCESS, "learn_sigma": cfg.learn_sigma})
    default_condition = ({"kind": "class", "num_classes": cfg.num_classes} if cfg.num_classes else {"kind": "none"})
    condition = condition_from_dict(spec.get("condition") or default_condition, root=model_dir / RUN_CONDITION_DIR,
                                    device=device, text_encoder=text_encoder)
    ae_spec = autoencoder or spec.get("autoencoder")
    if not ae_spec and (model_dir / RUN_AUTOENCODER_DIR).is_dir():
        ae_spec = str(model_dir / RUN_AUTOENCODER_DIR)
    if not ae_spec:
        raise CheckpointError(
            f"model folder '{model_dir}' has no autoencoder: pass --autoencoder (a diffusers AutoencoderKL folder, "
            "a `ditlab train-vae` folder, or pixel)"
        )
    ae = _load_autoencoder(str(ae_spec), None, device)
    side_h, side_w = cfg.input_size
    shape = (cfg.in_channels, cfg.num_frames, side_h, side_w) if cfg.is_video else (cfg.in_channels, side_h, side_w)
    sampling = spec.get("sampling") or OFFICIAL_SAMPLING
    info = {"source": str(model_dir), "converted_from": cfg.extra.get("converted_from")}
    return cls(model, process, ae, condition, shape, defaults=SamplingDefaults(**sampling), device=device, info=info)
