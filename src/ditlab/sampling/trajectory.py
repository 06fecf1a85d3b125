"""Looking inside a generation: the current state x_t and the x0 prediction at evenly spaced steps.

    recorder = TrajectoryRecorder(columns=8)
    got = pipe(labels=[3], num=4, steps=25, callback=recorder)
    save_trajectory(recorder.trajectory(), "traj.png", descriptions=got.descriptions)   # or "traj.gif"

The recorder is a ``Pipeline`` step callback (``StepInfo.x`` and ``StepInfo.x0``, decoded by the
pipeline's autoencoder), so it sees exactly what ``ditlab sample`` makes. A PNG holds one strip per
sample (x_t above, x0 prediction below, one column per chosen step); a GIF animates both side by side.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ditlab.errors import UserError
from ditlab.sampling.pipeline import StepInfo

TRAJECTORY_EXTENSIONS = (".png", ".gif")
GIF_FRAMES = 48  # at most this many steps are animated (evenly spaced); the rest are skipped


def trajectory_extension(path: str | Path) -> str:
    """The lower-case extension of a trajectory file; a one-line UserError for any other."""
    ext = Path(path).suffix.lower()
    if ext not in TRAJECTORY_EXTENSIONS:
        raise UserError(f"--trajectory '{path}' must end in .png (strips) or .gif (animation), not "
                        f"'{ext or 'no extension'}'")
    return ext


def spaced_steps(total: int, count: int) -> list[int]:
    """``count`` solver steps (1-based) evenly spaced over 1..total, always ending at ``total``."""
    count = max(1, min(count, total))
    if count == 1:
        return [total]
    return sorted({int(round(1 + (total - 1) * k / (count - 1))) for k in range(count)})


@dataclass
class Trajectory:
    """Decoded states of every sample at chosen steps."""

    steps: list[int]  # 1-based solver steps, increasing
    total: int  # solver steps of the generation
    x: np.ndarray  # uint8 (N, K, H, W, C): the current state x_t after each chosen step
    x0: np.ndarray  # uint8 (N, K, H, W, C): the x0 prediction at each chosen step


class TrajectoryRecorder:
    """A ``Pipeline`` callback that keeps x_t and x0 (decoded) at ``columns`` evenly spaced steps.

    Args:
        columns: how many steps to keep (``spaced_steps``); the last step is always kept.
    """

    def __init__(self, columns: int = 8):
        if columns < 1:
            raise UserError(f"--trajectory-steps must be >= 1, got {columns}")
        self.columns = columns
        self._chosen: list[int] | None = None
        self._total = 0
        self._kept: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # batch start -> step -> (x, x0)

    def __call__(self, info: StepInfo) -> None:
        if self._chosen is None or info.total != self._total:
            self._total, self._chosen = info.total, spaced_steps(info.total, self.columns)
        if info.step in self._chosen:
            self._kept.setdefault(info.start, {})[info.step] = (_first_frame(info.decode_x()),
                                                                _first_frame(info.decode()))

    def trajectory(self) -> Trajectory:
        """Everything recorded so far, samples in request order."""
        if not self._kept or self._chosen is None:
            raise ValueError("nothing recorded: pass the recorder as the pipeline's callback first")
        starts = sorted(self._kept)
        x = np.concatenate([np.stack([self._kept[s][k][0] for k in self._chosen], axis=1) for s in starts])
        x0 = np.concatenate([np.stack([self._kept[s][k][1] for k in self._chosen], axis=1) for s in starts])
        return Trajectory(steps=list(self._chosen), total=self._total, x=x, x0=x0)  # (N, K, H, W, C) each


def _first_frame(images: np.ndarray) -> np.ndarray:
    """Video (B, F, H, W, C) -> its first frame (B, H, W, C); images unchanged."""
    return images[:, 0] if images.ndim == 5 else images


def _upscale(images: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor so the short side is >= min_side."""
    factor = max(1, -(-min_side // min(images.shape[-3], images.shape[-2])))
    if factor == 1:
        return images
    return images.repeat(factor, axis=-3).repeat(factor, axis=-2)


def save_trajectory_png(traj: Trajectory, path: str | Path, descriptions: Sequence[str] | None = None) -> Path:
    """One strip per sample: x_t (top) and the x0 prediction (bottom) at each chosen step (matplotlib)."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state

    from ditlab.files import atomic_write

    n, k = traj.x.shape[:2]
    gray = traj.x.shape[-1] == 1
    cell = 1.0 if n <= 16 else 0.6
    fig = Figure(figsize=(cell * k + 1.2, cell * 2 * n + 0.4))
    axes = fig.subplots(2 * n, k, squeeze=False)
    for i in range(n):
        name = f" ({descriptions[i]})" if descriptions and descriptions[i] else ""
        for row, (images, label) in enumerate(((traj.x, f"#{i}{name}\nx_t"), (traj.x0, "x0 pred."))):
            for j in range(k):
                ax = axes[2 * i + row, j]
                img = images[i, j]
                ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255,
                          interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and row == 0:
                    ax.set_title(f"step {traj.steps[j]}/{traj.total}", fontsize=7)
                if j == 0:
                    ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.12, right=0.99, top=1 - 0.3 / (cell * 2 * n + 0.4), bottom=0.01,
                        wspace=0.05, hspace=0.08)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), durable=False)


def trajectory_frames(traj: Trajectory, min_side: int = 64) -> np.ndarray:
    """Animation frames (K, H', W', C): every sample's x_t and x0 side by side, samples tiled in a grid."""
    from ditlab.sampling.outputs import make_grid

    pairs = np.concatenate([traj.x, traj.x0], axis=-2)  # (N, K, H, 2W, C): x_t | x0
    pairs = _upscale(pairs, min_side)
    return np.stack([make_grid(pairs[:, j]) for j in range(pairs.shape[1])])


def save_trajectory_gif(traj: Trajectory, path: str | Path, fps: float = 8.0) -> Path:
    """An animation of x_t | x0 for every sample (``ditlab.data.video_io.write_video``), holding the end."""
    from ditlab.data.video_io import write_video

    frames = trajectory_frames(traj)
    hold = np.repeat(frames[-1:], max(1, int(fps)), axis=0)  # about a second on the final image
    return write_video(path, np.concatenate([frames, hold]), fps=fps)


def save_trajectory(traj: Trajectory, path: str | Path, descriptions: Sequence[str] | None = None) -> Path:
    """``.png`` strips or a ``.gif`` animation, by the file's extension."""
    if trajectory_extension(path) == ".gif":
        return save_trajectory_gif(traj, path)
    return save_trajectory_png(traj, path, descriptions)
