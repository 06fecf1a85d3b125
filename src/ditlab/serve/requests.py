"""What a generation request may say, and its checks against the served model and the server's limits.

The JSON schema (``GenerateRequest``) is strict: unknown fields, strings for numbers and the like are
refused before anything else, so no request can smuggle in a file path or an option the page does not
offer. ``check_request`` then turns a request into a ``Plan`` (every value resolved: the model's
defaults, a random seed) or raises ``ApiError`` naming the field, the problem and the fix.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**31 - 1
MAX_PROMPT_CHARS = 1000
MAX_LIST = 64  # classes or prompts in one request


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a one-line message with the fix, the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "code": self.status}


@dataclass
class Limits:
    """What one request may ask for, and how the server queues work (``ditlab serve`` flags)."""

    max_num: int = 16  # images per request
    max_steps: int = 1000
    max_cfg: float = 20.0
    queue_size: int = 32  # requests waiting (not yet running); more get HTTP 429
    concurrency: int = 1  # generations running at once
    max_batch: int = 64  # images of same-settings requests run as one batch
    keep_jobs: int = 64  # finished jobs whose results stay available
    preview_every: int = 0  # steps between live x0 previews; 0 = about 8 per generation

    def to_dict(self) -> dict[str, Any]:
        return {"max_num": self.max_num, "max_steps": self.max_steps, "max_cfg": self.max_cfg,
                "queue_size": self.queue_size, "concurrency": self.concurrency, "max_batch": self.max_batch}


class GenerateRequest(BaseModel):
    """``POST /api/generate``. Give ``class`` (class models) or ``prompt`` (text models), or neither
    (unconditional models; class models then spread ``num`` over every class)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    model: str | None = Field(None, description="a name from GET /api/models; optional when one model is served")
    class_: int | str | list[int | str] | None = Field(
        None, alias="class", description="class models: a label, a class name, or a list; num is spread over them")
    prompt: str | list[str] | None = Field(None, description="text models: a prompt, or a list spread over num")
    negative_prompt: str | None = Field(None, description="text models: the unconditional branch of guidance")
    num: int = Field(1, description="number of images")
    steps: int | None = Field(None, description="sampler steps (default: the model's)")
    cfg: float | None = Field(None, description="classifier-free guidance scale (default: the model's)")
    sampler: str | None = Field(None, description="one of the model's samplers (default: the model's)")
    seed: int | None = Field(None, description="image i uses seed + i; null or absent = a random seed")
    size: int | None = Field(None, description="image side; only the model's own size is accepted")
    frames: int | None = Field(None, description="video models: frames per video")
    fps: float | None = Field(None, description="video models: frames per second of the GIF/MP4 files")
    wait: bool = Field(True, description="answer with the images when the work starts at once (else a job_id); "
                                         "false: always answer with a job_id at once")


@dataclass
class Plan:
    """A checked request: every value resolved."""

    model: str
    num: int
    steps: int
    cfg: float
    sampler: str
    seed: int
    labels: list[int] | None = None  # class models: the requested labels, spread over num by the pipeline
    prompts: list[str] | None = None
    negative_prompt: str | None = None
    frames: int | None = None
    fps: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # pipeline keywords the model needs (frames)

    def batch_key(self) -> tuple:
        """Requests with equal keys run as one batch (conditions and seeds may differ)."""
        return (self.model, self.steps, self.cfg, self.sampler, self.negative_prompt,
                tuple(sorted(self.extra.items())))

    def settings(self) -> dict[str, Any]:
        """What the result reports (and the gallery shows)."""
        out: dict[str, Any] = {"model": self.model, "num": self.num, "steps": self.steps, "cfg": self.cfg,
                               "sampler": self.sampler, "seed": self.seed}
        if self.labels is not None:
            out["class"] = self.labels
        if self.prompts is not None:
            out["prompt"] = self.prompts
        if self.negative_prompt is not None:
            out["negative_prompt"] = self.negative_prompt
        if self.frames is not None:
            out.update(frames=self.frames, fps=self.fps)
        return out


def _int_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ApiError(422, f"{name} must be between {low} and {high}, got {value}: pass a value in that range", name)
    return value


def _labels(value: int | str | list[int | str], info: dict[str, Any]) -> list[int]:
    names = [str(n) for n in (info.get("class_names") or [])]
    num_classes = int(info.get("num_classes") or len(names))
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > MAX_LIST:
        raise ApiError(422, f"class must name 1 to {MAX_LIST} classes, got {len(items)}: pass a label or a short list",
                       "class")
    labels = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
                raise ApiError(422, f"class {item!r} is not a class name of this model: use a label 0.."
                                    f"{num_classes - 1} or one of {shown}", "class")
            labels.append(names.index(item))
        elif not 0 <= item < num_classes:
            raise ApiError(422, f"class {item} is outside this model's classes: use a label 0..{num_classes - 1}",
                           "class")
        else:
            labels.append(int(item))
    return labels


def _prompts(value: str | list[str]) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > MAX_LIST:
        raise ApiError(422, f"prompt must hold 1 to {MAX_LIST} prompts, got {len(items)}: shorten the list", "prompt")
    for p in items:
        if len(p) > MAX_PROMPT_CHARS:
            raise ApiError(422, f"a prompt has {len(p)} characters: keep each under {MAX_PROMPT_CHARS}", "prompt")
    return list(items)


def _condition(req: GenerateRequest, info: dict[str, Any]) -> tuple[list[int] | None, list[str] | None]:
    kind = info["condition"]
    if req.class_ is not None and kind != "class":
        fix = "send prompt instead" if kind == "text" else "drop class (the model takes no condition)"
        raise ApiError(422, f"this model is {'a text model' if kind == 'text' else 'unconditional'}: {fix}", "class")
    if req.prompt is not None and kind != "text":
        fix = "send class instead" if kind == "class" else "drop prompt (the model takes no condition)"
        raise ApiError(422, f"this model is {'class-conditional' if kind == 'class' else 'unconditional'}: {fix}",
                       "prompt")
    if req.negative_prompt is not None and kind != "text":
        raise ApiError(422, "negative_prompt needs a text model: drop it", "negative_prompt")
    if kind == "class":
        return (_labels(req.class_, info) if req.class_ is not None else None), None
    if kind == "text":
        return None, _prompts(req.prompt if req.prompt is not None else "")
    return None, None


def check_request(req: GenerateRequest, models: dict[str, dict[str, Any]], limits: Limits,
                  *, accepts_frames: dict[str, bool] | None = None) -> Plan:
    """Resolve ``req`` against the served models' ``describe()`` and the limits; ``ApiError`` if it cannot run.

    Args:
        models: name -> ``Pipeline.describe()`` (plus ``num_classes``) of every served model.
        accepts_frames: name -> whether the model's pipeline takes a ``frames`` keyword.
    """
    if req.model is None:
        if len(models) != 1:
            raise ApiError(422, f"{len(models)} models are served: name one in model ({', '.join(models)})", "model")
        name = next(iter(models))
    elif req.model not in models:
        raise ApiError(422, f"unknown model {req.model!r}: choose one of {', '.join(models)} (GET /api/models)",
                       "model")
    else:
        name = req.model
    info = models[name]
    labels, prompts = _condition(req, info)
    num = _int_range("num", req.num, 1, limits.max_num)
    defaults = info["defaults"]
    steps = _int_range("steps", req.steps if req.steps is not None else int(defaults["steps"]), 1, limits.max_steps)
    cfg = float(req.cfg) if req.cfg is not None else float(defaults["cfg_scale"])
    if not 0.0 <= cfg <= limits.max_cfg:  # NaN fails too
        raise ApiError(422, f"cfg must be between 0 and {limits.max_cfg:g}, got {cfg}: 1 = no guidance, "
                            "larger = closer to the condition", "cfg")
    sampler = req.sampler if req.sampler is not None else defaults["sampler"]
    if sampler not in info["samplers"]:
        raise ApiError(422, f"unknown sampler {sampler!r} for this model: choose one of {', '.join(info['samplers'])}",
                       "sampler")
    seed = secrets.randbelow(MAX_SEED + 1 - limits.max_num) if req.seed is None else req.seed
    _int_range("seed", seed, 0, MAX_SEED - limits.max_num)
    image_size = info.get("image_size")
    if req.size is not None and image_size and req.size != int(image_size):
        raise ApiError(422, f"this model makes {image_size}x{image_size} images, not {req.size}: drop size or pass "
                            f"{image_size}", "size")
    plan = Plan(model=name, num=num, steps=steps, cfg=cfg, sampler=sampler, seed=seed, labels=labels,
                prompts=prompts, negative_prompt=req.negative_prompt)
    _video(req, info, plan, bool((accepts_frames or {}).get(name)))
    return plan


def _video(req: GenerateRequest, info: dict[str, Any], plan: Plan, accepts_frames: bool) -> None:
    if not info.get("video"):
        for key in ("frames", "fps"):
            if getattr(req, key) is not None:
                raise ApiError(422, f"{key} is for video models and this one makes images: drop it", key)
        return
    model_frames = int(info["latent_shape"][1])
    frames = req.frames if req.frames is not None else model_frames
    if accepts_frames:
        _int_range("frames", frames, 1, max(model_frames, int(info.get("max_frames") or model_frames)))
        if frames != model_frames:
            plan.extra["frames"] = frames
    elif frames != model_frames:
        raise ApiError(422, f"this model makes {model_frames} frames, not {frames}: drop frames or pass "
                            f"{model_frames}", "frames")
    fps = float(req.fps) if req.fps is not None else float(info.get("fps") or 8.0)  # the model's own, if it says
    if not 1.0 <= fps <= 60.0:
        raise ApiError(422, f"fps must be between 1 and 60, got {fps}: 8 suits short clips", "fps")
    plan.frames, plan.fps = frames, fps
