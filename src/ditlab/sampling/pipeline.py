"""The one way ditlab generates: ``Pipeline`` = network + process + autoencoder + condition + defaults.

    pipe = Pipeline.from_run("runs/mnist")                      # or Pipeline.from_pretrained(dir, autoencoder=...)
    out = pipe(labels=[3, 7], num=8, seed=0)                    # out.images: uint8 (8, H, W, C)
    out = pipe(prompts=["a thick 7"], num=4, cfg_scale=2.0)     # text models
    out = pipe(labels=[1], num=4, callback=lambda s: print(s.step, s.total))

Sample i uses noise seed ``seed + i`` and solver seed ``seed + i + 2**31`` (``ditlab.seeding``), so
results do not depend on batch size, batching order or device count. The callback receives a
``StepInfo`` after every solver step and cancels the generation by returning ``CANCEL`` or raising
``GenerationCancelled``; the pipeline then raises ``GenerationCancelled``. The CLI, in-training grids,
evaluation and the web app all call this class; nothing else generates.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ditlab.conditioning import Cond, Condition, cond_rows, cond_to
from ditlab.errors import ProcessError, UserError
from ditlab.sampling.outputs import to_uint8
from ditlab.seeding import noise_seed, solver_seed

CANCEL = object()  # a callback returns this to stop the generation


class GenerationCancelled(Exception):
    """Raised by ``Pipeline.__call__`` when the step callback cancelled the generation."""


@dataclass
class SamplingDefaults:
    """What a pipeline uses when a call does not say: the sampler (None = the process's), steps, guidance."""

    sampler: str | None = None
    steps: int = 50
    cfg_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "steps": self.steps, "cfg_scale": self.cfg_scale}


@dataclass
class StepInfo:
    """What the callback sees after each solver step of one batch."""

    step: int  # solver steps done in this batch, 1..total
    total: int
    x0: torch.Tensor  # the current (guided) data prediction of the batch, latents
    batch: int  # index of the batch, 0..num_batches-1
    num_batches: int
    start: int  # position of the batch's first sample in the request
    decoder: Callable[[torch.Tensor], np.ndarray] = field(repr=False)
    x: torch.Tensor | None = None  # the current state x_t of the batch after this step, latents

    def decode(self) -> np.ndarray:
        """The current prediction as uint8 images (batch, H, W, C) (video: (batch, F, H, W, C))."""
        return self.decoder(self.x0)

    def decode_x(self) -> np.ndarray:
        """The current (noisy) state x_t decoded like ``decode`` (what a trajectory shows beside x0)."""
        if self.x is None:
            raise ValueError("this StepInfo carries no current state x")
        return self.decoder(self.x)


@dataclass
class Samples:
    """The result of a generation."""

    images: np.ndarray | None  # uint8 (N, H, W, C) or (N, F, H, W, C); None when not decoded
    latents: torch.Tensor | None  # (N, C, ...) when asked for
    descriptions: list[str]  # per sample: class name or prompt ("" when unconditional)
    labels: np.ndarray | None = None  # class models
    prompts: list[str] | None = None  # text models
    settings: dict[str, Any] = field(default_factory=dict)


def spread(items: Sequence[Any], num: int) -> list[Any]:
    """``num`` entries spread evenly over ``items`` in order (the first items take any remainder)."""
    k = len(items)
    counts = [num // k + (1 if i < num % k else 0) for i in range(k)]
    return [item for item, n in zip(items, counts, strict=True) for _ in range(n)]


def check_sampling(process, sampler: str | None, steps: int) -> str:
    """The sampler name to use; ProcessError (one line, listing the valid ones) for a sampler or step
    count ``process`` cannot run, before any work starts."""
    sampler = sampler or process.default_sampler
    if sampler not in process.samplers:
        raise ProcessError(f"sampler {sampler!r} does not run the {process.kind} process: pass --sampler with one of "
                           f"{', '.join(process.samplers)}")
    process.sampling_grid(steps, sampler)  # a step count the process cannot run: a ProcessError
    return sampler


class Pipeline:
    """A trained network ready to generate. Build it with ``from_run``, ``from_pretrained`` or ``load``.

    Args:
        model: the network ``model(x, t, **cond)`` (eval mode is set here).
        process: a ``ditlab.diffusion`` process.
        autoencoder: decodes latents to images (``ditlab.autoencoders``).
        condition: what the model is conditioned on (``ditlab.conditioning``).
        latent_shape: (C, h, w), or (C, F, h, w) for video.
        defaults: sampler, steps and guidance used when a call does not name them.
        info: free-form description (source path, step, class names...) for UIs and logs.
        cuda_graphs: opt-in (H100 figures in docs/performance.md): on a GPU, each network evaluation of a batch is
            replayed from a CUDA graph recorded for its shapes (``ditlab.models.cuda_graph.GraphedForward``;
            the same numbers). Also settable afterwards: ``pipe.cuda_graphs = True``.
    """

    def __init__(self, model: nn.Module, process, autoencoder, condition: Condition, latent_shape: Sequence[int],
                 *, defaults: SamplingDefaults | None = None, device: torch.device | str = "cpu",
                 info: dict[str, Any] | None = None, cuda_graphs: bool = False):
        self.model = model
        self.process = process
        self.autoencoder = autoencoder
        self.condition = condition
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.defaults = defaults or SamplingDefaults()
        self.device = torch.device(device)
        self.info = dict(info or {})
        self.cuda_graphs = cuda_graphs
        self._graphed = None  # (model, its GraphedForward), made on first use

    @property
    def is_video(self) -> bool:
        """The model makes clips: latents (C, F, h, w), ``Samples.images`` uint8 (N, F, H, W, C)."""
        return len(self.latent_shape) == 4

    # ------------------------------------------------------------------ building
    @classmethod
    def from_run(cls, run_dir, *, ema: bool = True, device: torch.device | str = "cpu",
                 autoencoder: str | None = None) -> Pipeline:
        """The latest checkpoint of a ``ditlab train`` run directory (EMA weights unless ``ema=False``)."""
        from ditlab.sampling.loading import pipeline_from_run

        return pipeline_from_run(cls, run_dir, ema=ema, device=device, autoencoder=autoencoder)

    @classmethod
    def from_pretrained(cls, model_dir, *, autoencoder: str | None = None, device: torch.device | str = "cpu",
                        text_encoder: str | None = None) -> Pipeline:
        """A model folder written by ``ditlab convert`` (or ``save_pretrained``); ``autoencoder`` takes what
        ``--autoencoder`` takes elsewhere and is required where the folder names none."""
        from ditlab.sampling.loading import pipeline_from_pretrained

        return pipeline_from_pretrained(cls, model_dir, autoencoder=autoencoder, device=device,
                                        text_encoder=text_encoder)

    @classmethod
    def load(cls, path, *, ema: bool = True, device: torch.device | str = "cpu",
             autoencoder: str | None = None, text_encoder: str | None = None) -> Pipeline:
        """A run directory or a model folder, whichever ``path`` is."""
        from ditlab.sampling.loading import is_run_dir

        if is_run_dir(path):
            return cls.from_run(path, ema=ema, device=device, autoencoder=autoencoder)
        return cls.from_pretrained(path, autoencoder=autoencoder, device=device, text_encoder=text_encoder)

    # ------------------------------------------------------------------ conditions
    def conditions(self, *, labels: Sequence[int] | None = None, prompts: Sequence[str] | None = None,
                   num: int | None = None) -> tuple[Cond, list[str], np.ndarray | None, list[str] | None]:
        """The condition of ``num`` samples spread over ``labels`` or ``prompts`` in order.

        Returns (cond, descriptions, labels per sample, prompts per sample).
        """
        self.check_request(labels=labels, prompts=prompts)
        kind = self.condition.kind
        if kind == "class":
            chosen = list(labels) if labels is not None else list(range(self.condition.num_classes))
            if not chosen:
                raise UserError("no class labels given: pass at least one")
            per_sample = spread(chosen, num if num is not None else len(chosen))
            cond = self.condition.labels(per_sample)
            return cond, self.condition.describe(cond), cond["y"].numpy(), None
        if kind == "text":
            chosen = list(prompts) if prompts is not None else [""]
            if not chosen:
                raise UserError("no prompts given: pass at least one (an empty prompt samples unconditionally)")
            per_sample = spread(chosen, num if num is not None else len(chosen))
            return self.condition.prompts(per_sample), list(per_sample), None, list(per_sample)
        n = num if num is not None else 1
        return {}, [""] * n, None, None

    def check_request(self, *, labels: object = None, prompts: object = None) -> None:
        """A one-line UserError when the request's kind of condition is not the model's."""
        kind = self.condition.kind
        if prompts is not None and kind != "text":
            raise UserError(f"this model is {'class-conditional' if kind == 'class' else 'unconditional'}: "
                            f"{'use --class' if kind == 'class' else 'drop --prompt'} instead of a prompt")
        if labels is not None and kind != "class":
            raise UserError(f"this model is {'a text model' if kind == 'text' else 'unconditional'}: "
                            f"{'use --prompt' if kind == 'text' else 'drop --class'} instead of class labels")

    def _uncond(self, cond: Cond, n: int, negative_prompt: str | None) -> Cond:
        if negative_prompt is not None:
            if self.condition.kind != "text":
                raise UserError("--negative-prompt needs a text model: drop it")
            return self.condition.prompts([negative_prompt] * n)
        return self.condition.null(n)

    # ------------------------------------------------------------------ sizes
    def latent_shape_at(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """The latent shape of samples ``height`` x ``width`` pixels (None: the pipeline's default size); a
        one-line UserError for a size the model cannot take (not whole patches of latents, or beyond its
        position table)."""
        if height is None and width is None:
            return self.latent_shape
        down = int(getattr(self.autoencoder, "downsample", 1) or 1)
        cfg = getattr(self.model, "config", None)
        patch = int(getattr(cfg, "patch_size", 1))
        step = down * patch
        default_h, default_w = self.latent_shape[-2] * down, self.latent_shape[-1] * down
        sides = {"--height": default_h if height is None else int(height),
                 "--width": default_w if width is None else int(width)}
        for flag, side in sides.items():
            if side < step or side % step:
                near = max(step, round(side / step) * step)
                raise UserError(f"{flag} {side} is not a multiple of {step} (patch {patch} x autoencoder "
                                f"downsampling {down}): use e.g. {near}")
        limit = int(getattr(cfg, "pos_max_size", 0) or 0)
        if limit and max(sides.values()) // step > limit:
            raise UserError(f"{sides['--height']}x{sides['--width']} exceeds this model's position table of {limit} "
                            f"patches per side: use at most {limit * step} pixels per side")
        return (*self.latent_shape[:-2], sides["--height"] // down, sides["--width"] // down)

    # ------------------------------------------------------------------ generating
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (N, C, h, w) or (N, C, F, h, w) -> uint8 (N, H, W, C) or (N, F, H, W, C)."""
        with torch.no_grad():
            if latents.dim() == 5:  # video: frames are decoded one by one as images
                n, c, f, h, w = latents.shape
                frames = latents.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)
                images = to_uint8(self.autoencoder.decode(frames.to(self.device)))  # (N*F, H, W, C)
                return images.reshape(n, f, *images.shape[1:])
            return to_uint8(self.autoencoder.decode(latents.to(self.device)))

    @torch.no_grad()
    def __call__(
        self, *, labels: Sequence[int] | None = None, prompts: Sequence[str] | None = None,
        cond: Cond | None = None, num: int | None = None, seed: int = 0, indices: Sequence[int] | None = None,
        sampler: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
        negative_prompt: str | None = None, batch_size: int = 64,
        callback: Callable[[StepInfo], Any] | None = None, decode: bool = True, return_latents: bool = False,
        height: int | None = None, width: int | None = None,
    ) -> Samples:
        """Generate ``num`` samples (default: one per label / prompt).

        Args:
            labels / prompts: spread evenly over ``num`` samples in order; ``cond`` gives the network's
                condition tensors directly instead (N rows).
            seed, indices: sample ``j`` of the request is sample ``indices[j]`` (default ``j``) of the seed's
                sequence: noise seed ``seed + indices[j]``.
            sampler, steps, cfg_scale: default to the pipeline's ``defaults``; guidance needs a condition.
            negative_prompt: text models: the unconditional branch of guidance uses this prompt.
            batch_size: samples per network batch (does not change the results).
            callback: called with a ``StepInfo`` after every solver step; returning ``CANCEL`` or raising
                ``GenerationCancelled`` stops the generation (``GenerationCancelled`` is raised).
            decode / return_latents: what ``Samples`` holds.
            height / width: the sample size in pixels (default: the pipeline's); any multiple of patch x
                autoencoder downsampling the model takes (``latent_shape_at``).
        """
        from ditlab.diffusion import per_sample_generators, per_sample_noise

        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        if negative_prompt is not None and self.condition.kind != "text":
            raise UserError("--negative-prompt needs a text model: drop it")
        shape = self.latent_shape_at(height, width)
        if cond is not None:
            n = next(iter(cond.values())).shape[0] if cond else (num or 1)
            descriptions = self.condition.describe(cond) or [""] * n
            sample_labels = cond["y"].cpu().numpy() if "y" in cond else None
            sample_prompts = None
        else:
            cond, descriptions, sample_labels, sample_prompts = self.conditions(labels=labels, prompts=prompts,
                                                                               num=num)
            n = len(descriptions)
        if n < 1:
            raise UserError(f"the number of samples must be >= 1, got {n}")
        indices = list(range(n)) if indices is None else [int(i) for i in indices]
        if len(indices) != n:
            raise UserError(f"{len(indices)} sample indices for {n} samples: pass one per sample")
        steps = steps or self.defaults.steps
        sampler = check_sampling(self.process, sampler or self.defaults.sampler, steps)
        cfg = self.defaults.cfg_scale if cfg_scale is None else float(cfg_scale)
        if cfg < 0:
            raise UserError(f"guidance scale must be >= 0, got {cfg}")
        guided = cfg != 1.0 and self.condition.kind != "none"
        uncond = self._uncond(cond, n, negative_prompt) if guided else None
        self.model.eval()
        model_fn = self._graphed_model() if self.cuda_graphs else self.model
        batches = list(range(0, n, batch_size))
        images, latents_out = [], []
        for b, start in enumerate(batches):
            stop = min(start + batch_size, n)
            idx = indices[start:stop]
            noise = per_sample_noise(shape, [noise_seed(seed, i) for i in idx]).to(self.device)
            generators = per_sample_generators([solver_seed(seed, i) for i in idx])
            step_callback = None
            if callback is not None:
                step_callback = self._step_callback(callback, b, len(batches), start)
            latents = self.process.sample(
                model_fn, noise, sampler=sampler, steps=steps,
                model_kwargs=cond_to(cond_rows(cond, start, stop), self.device),
                cfg_scale=cfg if guided else 1.0,
                uncond_model_kwargs=cond_to(cond_rows(uncond, start, stop), self.device) if guided else None,
                generators=generators, callback=step_callback,
            )
            if decode:
                images.append(self.decode(latents))
            if return_latents:
                latents_out.append(latents.float().cpu())
        settings = {"sampler": sampler, "steps": steps, "cfg_scale": cfg, "seed": seed,
                    "negative_prompt": negative_prompt}
        if shape != self.latent_shape:
            settings["latent_shape"] = list(shape)
        return Samples(
            images=np.concatenate(images) if decode else None,
            latents=torch.cat(latents_out) if return_latents else None,
            descriptions=list(descriptions), labels=sample_labels, prompts=sample_prompts, settings=settings,
        )

    def _graphed_model(self) -> Callable[..., torch.Tensor]:
        """``self.model`` called through one GraphedForward (its graphs kept across calls, one per batch shape;
        CPU tensors run eagerly)."""
        from ditlab.models.cuda_graph import GraphedForward

        if self._graphed is None or self._graphed[0] is not self.model:  # (a new model: new graphs)
            model = self.model
            self._graphed = (model, GraphedForward(lambda x, t, **cond: model(x, t, **cond)))
        graphed = self._graphed[1]
        return lambda x, t, **cond: graphed(x=x, t=t, **cond)

    def _step_callback(self, callback: Callable[[StepInfo], Any], batch: int, num_batches: int, start: int):
        def on_step(i: int, total: int, x: torch.Tensor | None = None, x0: torch.Tensor | None = None) -> None:
            info = StepInfo(step=i + 1, total=total, x0=x0, batch=batch, num_batches=num_batches, start=start,
                            decoder=self.decode, x=x)
            if callback(info) is CANCEL:
                raise GenerationCancelled(f"cancelled at step {i + 1} of {total}")

        return on_step

    def describe(self) -> dict[str, Any]:
        """What the model takes and its defaults (for UIs and ``GET /api/models``)."""
        cond = self.condition.to_dict()
        return {
            "condition": cond["kind"],
            "class_names": cond.get("class_names"),
            "latent_shape": list(self.latent_shape),
            "video": self.is_video,
            "process": self.process.kind,
            "samplers": list(self.process.samplers),
            "defaults": {**self.defaults.to_dict(), "sampler": self.defaults.sampler or self.process.default_sampler},
            **self.info,
        }
