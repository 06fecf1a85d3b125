"""Built-in moving digits: MNIST digits sliding over a black canvas, generated deterministically.

Each video places one (or more) 28x28 MNIST digit on a square black canvas and moves it in one of
8 compass directions, indexed clockwise from up::

    0 up, 1 up-right, 2 right, 3 down-right, 4 down, 5 down-left, 6 left, 7 up-left

Geometry (pixels; ``x`` = column, ``y`` = row, both growing right / down, as in image arrays):

* the digit's box is ``[x, x + 28) x [y, y + 28)``; its top-left corner ``(x, y)`` stays in
  ``[0, L]^2`` with ``L = canvas - 28``, so the digit is always whole;
* the speed ``s`` is an integer (default 2 or 3) and is the step *per moving axis*: direction
  ``(dx, dy)`` in {-1, 0, 1}^2 moves by ``(s dx, s dy)`` per frame (a diagonal covers ``s`` px on
  each axis). Integer steps keep every frame a pixel-exact copy of the digit, no resampling blur;
* the start ``(x0, y0)`` is uniform over the positions at least two frames' travel (``2 s`` px) from
  each edge the digit moves toward (``x0 <= L - 2s`` when moving right, ``x0 >= 2s`` when moving left;
  no constraint on an axis it does not move along), so every video has at least two clean steps;
* **bouncing**: before each step, every axis whose next position would leave ``[0, L]`` (the box
  would cross the canvas edge) has its velocity component negated, then the digit moves by the
  (new) velocity. A bounce therefore reverses one displacement exactly (``d_t = -d_{t-1}`` on that
  axis) and the speed never changes. ``first_bounce`` is the index ``t`` of the first frame reached
  by a reversed step (frames ``0 .. t-1`` move in the requested direction), or ``None``.

Several digits (the classic setting: 64x64, 20 frames, two digits) are drawn independently and
combined with a pixelwise max. Training videos use MNIST training digits, evaluation videos test
digits. Everything is a pure function of ``(seed, split)`` and, per attribute, of the video index:
the first ``n`` videos are the same whatever ``num_videos`` is.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ditlab.errors import DataError

DIRECTION_NAMES = ("up", "up-right", "right", "down-right", "down", "down-left", "left", "up-left")
# (dx, dy) per direction index, image coordinates (y grows downwards).
DIRECTION_VECTORS = np.array([(0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1)], dtype=np.int64)
_DIRECTION_PHRASES = ("upward", "toward the top right", "to the right", "toward the bottom right", "downward",
                      "toward the bottom left", "to the left", "toward the top left")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_SIZE = 28
NUM_DIRECTIONS = 8
NUM_CLASSES = 10 * NUM_DIRECTIONS  # label = digit * 8 + direction
_DEFAULT_NUM_VIDEOS = {"train": 20000, "test": 2000}
_SPLIT_CODE = {"train": 0, "test": 1}


@dataclass(frozen=True)
class MovingMNISTSpec:
    """What a moving-digit video looks like. ``CLASSIC`` is Srivastava et al.'s 64x64, 20 frames, 2 digits."""

    num_frames: int = 8
    canvas: int = 48
    num_digits: int = 1
    speeds: tuple[int, ...] = field(default=(2, 3))

    def validate(self) -> None:
        if self.num_frames < 1:
            raise DataError(f"moving-mnist needs at least 1 frame, got num_frames={self.num_frames}")
        if self.num_digits < 1:
            raise DataError(f"moving-mnist needs at least 1 digit per video, got num_digits={self.num_digits}")
        if not self.speeds or min(self.speeds) < 1:
            raise DataError(f"moving-mnist speeds must be positive integers, got {self.speeds}")
        need = DIGIT_SIZE + 2 * max(self.speeds)
        if self.canvas < need:
            raise DataError(f"a {self.canvas}-px canvas is too small for a 28-px digit moving {max(self.speeds)} px "
                            f"per frame with a two-frame margin: use a canvas of at least {need} px")


DEFAULT = MovingMNISTSpec()
CLASSIC = MovingMNISTSpec(num_frames=20, canvas=64, num_digits=2)


@dataclass
class MovingDigits:
    """Generated videos and what each digit did. D = digits per video.

    frames: uint8 (N, F, S, S); digit, direction, speed, first_bounce (-1: none): int64 (N, D);
    start: int64 (N, D, 2) top-left (x, y) of the digit box at frame 0; positions: int64 (N, D, F, 2).
    """

    frames: np.ndarray
    digit: np.ndarray
    direction: np.ndarray
    speed: np.ndarray
    start: np.ndarray
    first_bounce: np.ndarray
    positions: np.ndarray


def _rng(seed: int, split: str, stream: int) -> np.random.Generator:
    # One generator per attribute: video i's digit, direction, ... never depend on how many videos follow.
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], stream]))


def _pick_digits(seed: int, split: str, pool: int, count: int) -> np.ndarray:
    """``count`` indices into a pool of digits: successive seeded permutations (each digit once per pass)."""
    rng = _rng(seed, split, 0)
    passes = -(-count // pool)
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:count]


def _trajectories(start: np.ndarray, velocity: np.ndarray, num_frames: int, limit: int):
    """Positions (M, F, 2) of boxes bouncing inside [0, limit]^2 and the first bounce frame (M,) (-1: none)."""
    m = start.shape[0]
    pos = np.empty((m, num_frames, 2), dtype=np.int64)
    pos[:, 0] = start
    v = velocity.copy()
    first = np.full(m, -1, dtype=np.int64)
    for t in range(1, num_frames):
        nxt = pos[:, t - 1] + v  # (M, 2)
        leaving = (nxt < 0) | (nxt > limit)
        v = np.where(leaving, -v, v)  # reflect the component that would cross the edge
        hit = leaving.any(axis=1) & (first < 0)
        first[hit] = t
        pos[:, t] = pos[:, t - 1] + v
    return pos, first


def _render(digits: np.ndarray, positions: np.ndarray, canvas: int) -> np.ndarray:
    """Paste digits (M, 28, 28) at positions (M, F, 2) onto black canvases -> (M, F, S, S)."""
    m, f = positions.shape[:2]
    out = np.zeros((m, f, canvas, canvas), dtype=np.uint8)
    span = canvas - DIGIT_SIZE + 1
    s = out.strides
    # A writable view of every 28x28 window: windows[n, t, y, x] is out[n, t, y:y+28, x:x+28].
    windows = np.lib.stride_tricks.as_strided(out, shape=(m, f, span, span, DIGIT_SIZE, DIGIT_SIZE),
                                              strides=(s[0], s[1], s[2], s[3], s[2], s[3]))
    n_idx = np.arange(m)[:, None]  # (M, 1)
    t_idx = np.arange(f)[None, :]  # (1, F)
    windows[n_idx, t_idx, positions[..., 1], positions[..., 0]] = digits[:, None]  # one window per frame
    return out


def generate_moving_digits(
    images: np.ndarray, labels: np.ndarray, num_videos: int, spec: MovingMNISTSpec = DEFAULT, *,
    seed: int = 0, split: str = "train",
) -> MovingDigits:
    """Generate ``num_videos`` moving-digit videos from digit images uint8 (M, 28, 28) and labels (M,).

    Vectorised over videos; the only Python loop is over frames. See the module docstring for the rules.
    """
    spec.validate()
    if split not in _SPLIT_CODE:
        raise DataError(f"unknown split {split!r} for moving-mnist: use one of {', '.join(_SPLIT_CODE)}")
    n, d, f = int(num_videos), spec.num_digits, spec.num_frames
    if n < 1:
        raise DataError(f"moving-mnist needs at least 1 video, got num_videos={num_videos}")
    limit = spec.canvas - DIGIT_SIZE
    count = n * d
    pick = _pick_digits(seed, split, len(images), count)  # (N*D,)
    direction = _rng(seed, split, 1).integers(0, NUM_DIRECTIONS, size=count)
    speed = np.asarray(spec.speeds, dtype=np.int64)[_rng(seed, split, 2).integers(0, len(spec.speeds), size=count)]
    u = _rng(seed, split, 3).random(size=(count, 2))  # uniform draws mapped onto each axis's allowed range
    unit = DIRECTION_VECTORS[direction]  # (N*D, 2)
    lo = np.where(unit < 0, 2 * speed[:, None], 0)
    hi = np.where(unit > 0, limit - 2 * speed[:, None], limit)
    start = lo + np.floor(u * (hi - lo + 1)).astype(np.int64)  # (N*D, 2)
    positions, first = _trajectories(start, unit * speed[:, None], f, limit)  # (N*D, F, 2), (N*D,)
    digit_images = images[pick]
    frames = None
    chunk = 4096  # bounds the temporary layer of multi-digit videos
    for k in range(d):
        layer = np.empty((n, f, spec.canvas, spec.canvas), dtype=np.uint8)
        for a in range(0, n, chunk):
            rows = np.arange(a, min(a + chunk, n)) * d + k
            layer[a : a + len(rows)] = _render(digit_images[rows], positions[rows], spec.canvas)
        frames = layer if frames is None else np.maximum(frames, layer, out=frames)
    return MovingDigits(
        frames=frames,
        digit=np.asarray(labels)[pick].astype(np.int64).reshape(n, d),
        direction=direction.reshape(n, d),
        speed=speed.reshape(n, d),
        start=start.reshape(n, d, 2),
        first_bounce=first.reshape(n, d),
        positions=positions.reshape(n, d, f, 2),
    )


def _article(word: str) -> str:
    return "an" if word[0] in "8e" else "a"  # "an 8", "an eight"


def captions(digits: list[int], directions: list[int]) -> list[str]:
    """A few phrasings of what the video shows, the first being ``"a 3 moving up-left"``."""
    def join(parts: list[str]) -> str:
        return " and ".join(parts)

    pairs = list(zip(digits, directions, strict=True))
    words = [(str(g), _NUMBER_WORDS[g], DIRECTION_NAMES[k], _DIRECTION_PHRASES[k]) for g, k in pairs]
    return [
        join([f"{_article(s)} {s} moving {name}" for s, _, name, _ in words]),
        join([f"the digit {w} moving {phrase}" for _, w, _, phrase in words]),
        join([f"{_article(s)} handwritten {s} drifting {phrase}" for s, _, _, phrase in words]),
        join([f"{_article(w)} {w} sliding {name}" for _, w, name, _ in words]),
    ]


def class_name(label: int) -> str:
    """``"3 up-left"`` for label 3 * 8 + 7."""
    return f"{label // NUM_DIRECTIONS} {DIRECTION_NAMES[label % NUM_DIRECTIONS]}"


class MovingMNIST(torch.utils.data.Dataset):
    """Moving MNIST digits; items are (frames float (1, F, H, W) in [-1, 1], meta dict).

    One digit per video (the default): ``meta = {"label": digit * 8 + direction, "digit", "direction",
    "speed", "start": [x, y], "first_bounce": int | None, "caption": [...]}``, ``num_classes == 80``.
    With several digits the same keys hold one entry per digit (lists), there is no ``"label"`` and
    ``num_classes == 0`` (unconditional, or text through the captions).

    Args:
        split: ``"train"`` (MNIST training digits) or ``"test"`` (test digits).
        num_videos: default 20,000 for train, 2,000 for test.
        spec: geometry; ``CLASSIC`` for 64x64, 20 frames, two digits. Keyword overrides
            (``num_frames``, ``canvas``, ``num_digits``, ``speeds``) replace its fields.
        seed: the same seed and split give the same videos.
    """

    def __init__(self, split: str = "train", num_videos: int | None = None, spec: MovingMNISTSpec = DEFAULT, *,
                 seed: int = 0, num_frames: int | None = None, canvas: int | None = None,
                 num_digits: int | None = None, speeds: tuple[int, ...] | None = None):
        from ditlab.data.builtin import _load_mnist_arrays

        overrides = {"num_frames": num_frames, "canvas": canvas, "num_digits": num_digits,
                     "speeds": None if speeds is None else tuple(int(s) for s in speeds)}
        spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
        spec.validate()
        if split not in _SPLIT_CODE:
            raise DataError(f"unknown split {split!r} for moving-mnist: use one of {', '.join(_SPLIT_CODE)}")
        arrays = _load_mnist_arrays()
        n = _DEFAULT_NUM_VIDEOS[split] if num_videos is None else int(num_videos)
        self.videos = generate_moving_digits(arrays[f"{split}_images"], arrays[f"{split}_labels"], n, spec,
                                             seed=seed, split=split)
        self.spec, self.split, self.seed = spec, split, seed
        self.name = "moving-mnist"
        self.channels = 1
        self.image_size = spec.canvas
        self.num_frames = spec.num_frames
        self.flip = False  # a mirrored digit is no digit, and mirroring would swap left and right
        if spec.num_digits == 1:
            self.num_classes = NUM_CLASSES
            self.class_names = [class_name(i) for i in range(NUM_CLASSES)]
        else:
            self.num_classes = 0
            self.class_names = []

    def __len__(self) -> int:
        return self.videos.frames.shape[0]

    def meta(self, index: int) -> dict:
        """The conditioning metadata of video ``index`` (plain Python values)."""
        v = self.videos
        digits, dirs = v.digit[index].tolist(), v.direction[index].tolist()
        bounces = [None if b < 0 else b for b in v.first_bounce[index].tolist()]
        fields = {"digit": digits, "direction": dirs, "speed": v.speed[index].tolist(),
                  "start": v.start[index].tolist(), "first_bounce": bounces}
        if self.spec.num_digits == 1:
            meta = {"label": digits[0] * NUM_DIRECTIONS + dirs[0], **{k: x[0] for k, x in fields.items()}}
        else:
            meta = fields
        meta["caption"] = captions(digits, dirs)
        return meta

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        frames = torch.from_numpy(self.videos.frames[index]).float().div(127.5).sub(1.0)  # (F, H, W)
        return frames.unsqueeze(0), self.meta(index)  # (1, F, H, W)

    def metas(self) -> list[dict]:
        """Every video's metadata (see ``meta``), without touching the frames."""
        return [self.meta(i) for i in range(len(self))]

    def tensors(self) -> tuple[torch.Tensor, list[dict]]:
        """All videos as uint8 (N, 1, F, H, W) (a view, no copy) and their metas, for encoding once."""
        return torch.from_numpy(self.videos.frames).unsqueeze(1), self.metas()

    def labels(self) -> torch.Tensor:
        """Class labels (N,) int64 (digit * 8 + direction); single-digit videos only."""
        if self.spec.num_digits != 1:
            raise DataError("videos with several digits have no class label: use one digit or condition on captions")
        return torch.from_numpy(self.videos.digit[:, 0] * NUM_DIRECTIONS + self.videos.direction[:, 0])

    def bad_files(self) -> list[str]:
        """Generated data has no files that can fail to decode."""
        return []

    def __repr__(self) -> str:
        s = self.spec
        return (f"MovingMNIST({self.split!r}, n={len(self)}, frames={s.num_frames}, canvas={s.canvas}, "
                f"digits={s.num_digits}, speeds={s.speeds}, seed={self.seed})")
