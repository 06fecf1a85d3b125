"""Training logs: a console progress bar (loss, images/s, ETA), CSV and TensorBoard scalars."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """Writes ``metrics.csv`` (appending on resume) and, when installed, TensorBoard events."""

    def __init__(self, run_dir: Path, *, start_step: int, total_steps: int, tensorboard: bool, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = run_dir
        self.total = total_steps
        self.start_step = start_step
        self._bar = None
        self._tb = None
        self._csv_path = run_dir / "metrics.csv"
        self._fields: list[str] | None = None
        self._t0 = time.perf_counter()
        if not enabled:
            return
        if self._csv_path.is_file():
            with open(self._csv_path) as f:
                header = f.readline().strip()
            self._fields = header.split(",") if header else None
            self._truncate_after(start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
            except Exception:  # tensorboard not installed: CSV only
                self._tb = None
        try:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                file=sys.stderr, mininterval=1.0,
            )
        except ImportError:
            self._bar = None

    def _truncate_after(self, step: int) -> None:
        """On resume, drop CSV rows written after the checkpoint we resume from (they will be redone)."""
        with open(self._csv_path) as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        with open(self._csv_path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """Log one row of scalars at ``step``."""
        if not self.enabled:
            return
        row = {"step": step, **values}
        if self._fields is None:
            self._fields = list(row)
            with open(self._csv_path, "w", newline="") as f:
                csv.writer(f).writerow(self._fields)
        for key in row:
            if key not in self._fields:  # a new column (e.g. eval metric): rewrite the header
                self._fields.append(key)
                self._rewrite_header()
        with open(self._csv_path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self._fields])
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._bar is not None and "loss" in values:
            post = {"loss": f"{values['loss']:.4f}"}
            if "img_per_s" in values:
                post["img/s"] = f"{values['img_per_s']:.0f}"
            self._bar.set_postfix(post, refresh=False)

    def _rewrite_header(self) -> None:
        with open(self._csv_path) as f:
            rows = list(csv.reader(f))
        rows[0] = self._fields
        with open(self._csv_path, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
