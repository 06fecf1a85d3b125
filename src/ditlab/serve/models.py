"""The served models: names, what each takes (``Pipeline.describe()``), and one batch of jobs as one
``Pipeline`` call. Everything that generates is the pipeline's; this file only stacks requests."""
from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ditlab.errors import ProcessError
from ditlab.sampling import CANCEL, Pipeline, check_sampling, spread
from ditlab.serve.jobs import Job, Result
from ditlab.serve.requests import ApiError, Plan


def model_name(path: str | Path, taken: Sequence[str]) -> str:
    """A short unique name for a served folder: its base name (``runs/mnist`` -> ``mnist``), numbered if taken."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).resolve().name).strip("-") or "model"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def _is_path(value: Any) -> bool:
    """A string naming something on this machine's disk (never shown by /api/models)."""
    return isinstance(value, str) and ("/" in value or "\\" in value) and Path(value).exists()


class ServedModels:
    """Pipelines by name, with their public description (no file paths: the page and API never see them)."""

    def __init__(self, pipelines: dict[str, Pipeline]):
        if not pipelines:
            raise ValueError("serve at least one model")
        self.pipelines = dict(pipelines)
        self.infos = {name: self._info(pipe) for name, pipe in self.pipelines.items()}
        self.accepts_frames = {name: "frames" in inspect.signature(pipe.__call__).parameters
                               for name, pipe in self.pipelines.items()}

    @staticmethod
    def _info(pipe: Pipeline) -> dict[str, Any]:
        d = pipe.describe()
        info = {k: v for k, v in d.items() if k not in ("source", "checkpoint") and not _is_path(v)}  # keep folders
        # private: a page or API client has no business knowing where the models live
        names = d.get("class_names") or []
        info["num_classes"] = int(getattr(pipe.condition, "num_classes", 0) or len(names))
        if info["condition"] == "class" and not names:
            info["class_names"] = [str(i) for i in range(info["num_classes"])]
        if not info.get("image_size"):  # model folders: the latent side times the autoencoder's factor
            factor = getattr(pipe.autoencoder, "downsample", None)
            info["image_size"] = int(pipe.latent_shape[-1]) * int(factor) if factor else None
        return info

    def public(self) -> list[dict[str, Any]]:
        """``GET /api/models``: one entry per model, the first is the default."""
        return [{"name": name, **info} for name, info in self.infos.items()]

    def check_steps(self, plan: Plan) -> None:
        """A step count the model's process cannot run (e.g. more than its 1000 DDPM steps): ApiError."""
        try:
            check_sampling(self.pipelines[plan.model].process, plan.sampler, plan.steps)
        except ProcessError as err:
            raise ApiError(422, str(err).replace("--sampler", "sampler"), "steps") from None

    def run_batch(self, jobs: list[Job], on_step: Callable[[int, int, Callable[[], np.ndarray]], bool]) -> list[Result]:
        """Generate every job's images as one pipeline call (the jobs share ``Plan.batch_key``)."""
        plan = jobs[0].plan
        pipe = self.pipelines[plan.model]
        info = self.infos[plan.model]
        labels: list[int] | None = None
        prompts: list[str] | None = None
        indices: list[int] = []
        for job in jobs:
            p = job.plan
            indices += [p.seed + i for i in range(p.num)]  # noise seed of sample i: seed + i, as alone
            if info["condition"] == "class":
                labels = (labels or []) + spread(p.labels or list(range(info["num_classes"])), p.num)
            elif info["condition"] == "text":
                prompts = (prompts or []) + spread(p.prompts or [""], p.num)
        n = len(indices)
        cond, descriptions, sample_labels, sample_prompts = pipe.conditions(labels=labels, prompts=prompts, num=n)

        def callback(step) -> Any:
            return CANCEL if on_step(step.step, step.total, step.decode) else None

        start = time.time()
        got = pipe(cond=cond, num=n, seed=0, indices=indices, sampler=plan.sampler, steps=plan.steps,
                   cfg_scale=plan.cfg, negative_prompt=plan.negative_prompt, batch_size=n, callback=callback,
                   **plan.extra)
        seconds = time.time() - start
        results, at = [], 0
        for job in jobs:
            rows = slice(at, at + job.plan.num)
            results.append(Result(
                images=got.images[rows], descriptions=list(descriptions[rows]),
                labels=[int(v) for v in sample_labels[rows]] if sample_labels is not None else None,
                prompts=list(sample_prompts[rows]) if sample_prompts is not None else None, seconds=seconds))
            at += job.plan.num
        return results


def load_models(paths: Sequence[str], *, device, ema: bool = True, autoencoder: str | None = None,
                text_encoder: str | None = None) -> ServedModels:
    """``Pipeline.load`` each run directory or model folder (one-line UserErrors for bad ones)."""
    pipelines: dict[str, Pipeline] = {}
    for path in paths:
        name = model_name(path, list(pipelines))
        pipelines[name] = Pipeline.load(path, ema=ema, device=device, autoencoder=autoencoder,
                                        text_encoder=text_encoder)
    return ServedModels(pipelines)
