"""The numbers and figures of a scaling study (Peebles & Xie 2023, Figs. 2, 8, 9 and 11).

A study (``ditlab scale``) is a dict: ``{"metric": "mnist_fd" | "fid", "floor": ..., "models": [{"name",
"gflops", "batch", "evals": [{"step", <metric>, "mnist_accuracy", ...}, ...]}, ...]}``. From it:

* ``training_compute``: the paper's x-axis of Fig. 9, Gflops x batch size x steps x 3 (a backward pass
  costs about twice a forward pass);
* ``gflops_correlations``: Pearson's r between log10(Gflops) and each metric over the models, at
  every checkpoint (the paper reports -0.93 for FID-50K at 400K steps, Fig. 8);
* three figures, one panel per metric: metric vs Gflops through each size's patch sizes (Figs. 2 and 8),
  metric vs training steps per model (Fig. 11), metric vs training compute per model (Fig. 9).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PATCH_STYLES = {8: ":", 4: "--", 2: "-"}  # fewer tokens, fainter line
METRIC_TITLES = {
    "mnist_fd": "Fréchet distance (classifier features)",
    "mnist_accuracy": "class accuracy (classifier)",
    "fid": "FID",
}


def study_metrics(study: dict[str, Any]) -> list[str]:
    """The metrics a study holds: its main one, plus the class accuracy for MNIST."""
    return [study["metric"], "mnist_accuracy"] if study["metric"] == "mnist_fd" else [study["metric"]]


def training_compute(gflops: float, batch: int, step: int) -> float:
    """Total training compute in Gflops: forward Gflops x batch x steps x 3 (forward + backward, Fig. 9)."""
    return float(gflops) * int(batch) * int(step) * 3.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation coefficient of two equally long sequences (NaN when either is constant)."""
    n = len(x)
    if n != len(y) or n < 2:
        raise ValueError(f"pearson needs two sequences of equal length >= 2, got {len(x)} and {len(y)}")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=False))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    tiny = 1e-24 * n * (1.0 + mx * mx + my * my)  # rounding noise of a constant sequence
    return sxy / math.sqrt(sxx * syy) if sxx > tiny and syy > tiny else float("nan")


def _value(e: dict[str, Any], metric: str) -> float:
    return math.log10(e[metric[4:]]) if metric.startswith("log_") else e[metric]


def gflops_correlations(study: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{metric: {step: r}}``: r between log10(Gflops) and the metric over the models evaluated at
    that step (at least 3), for each metric and for log10 of the Fréchet distance / FID."""
    metrics = study_metrics(study)
    metrics = [*metrics, f"log_{metrics[0]}"]
    steps = sorted({e["step"] for m in study["models"] for e in m["evals"]})
    out: dict[str, dict[str, float]] = {k: {} for k in metrics}
    for s in steps:
        rows = [(m["gflops"], e) for m in study["models"] for e in m["evals"] if e["step"] == s]
        if len(rows) < 3:
            continue
        for k in metrics:
            out[k][str(s)] = round(pearson([math.log10(g) for g, _ in rows], [_value(e, k) for _, e in rows]), 4)
    return out


def final_step(study: dict[str, Any]) -> int | None:
    """The last step every model was evaluated at (None before the first evaluation)."""
    last = [m["evals"][-1]["step"] for m in study["models"] if m["evals"]]
    return min(last) if last else None


def _family(name: str) -> str:
    return name.split("/")[0]


def _setup_axes(ax, metric: str, floor: float | None) -> None:
    if metric in ("mnist_fd", "fid"):
        ax.set_yscale("log")
        if floor:
            ax.axhline(floor, color="gray", linestyle=":", linewidth=1, label="real digits (floor)")
    else:
        ax.set_ylim(0, 1.02)
    ax.set_ylabel(METRIC_TITLES.get(metric, metric))
    ax.grid(alpha=0.3, which="both")


def plot_study(study: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``scaling_gflops.png``, ``scaling_steps.png``, ``scaling_compute.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    out_dir = Path(out_dir)
    metrics = study_metrics(study)
    floor = study.get("floor") if study["metric"] == "mnist_fd" else None
    models = sorted(study["models"], key=lambda m: m["gflops"])
    families = list(dict.fromkeys(_family(m["name"]) for m in sorted(models, key=lambda m: m.get("params", 0))))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {f: colors[i % len(colors)] for i, f in enumerate(families)}
    last = final_step(study)
    corr = gflops_correlations(study)
    guide = study.get("cfg_scale", 1.0)
    note = f"{study.get('eval_num', '?')} samples per point" + (", no guidance" if guide == 1.0 else f", cfg {guide}")
    paths = {}

    def figure(name: str, draw, xlabel: str, title: str, xlog: bool = True) -> None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.3), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=False):
            draw(ax, metric)
            _setup_axes(ax, metric, floor if metric == study["metric"] else None)
            ax.set_xlabel(xlabel)
            if xlog:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # crowded minor labels on a short axis
            ax.legend(fontsize=7)
        fig.suptitle(f"{title} ({note})", fontsize=10)
        fig.tight_layout()
        paths[name] = out_dir / f"scaling_{name}.png"
        _save_fig(fig, paths[name])
        plt.close(fig)

    def by_gflops(ax, metric: str) -> None:  # Figs. 2 / 8: one line per size through its patch sizes
        steps = sorted({e["step"] for m in models for e in m["evals"]})
        for f in families:
            members = [m for m in models if _family(m["name"]) == f]
            for s in steps:
                pts = [(m["gflops"], e[metric]) for m in members for e in m["evals"] if e["step"] == s]
                if pts:
                    final = s == last
                    ax.plot(*zip(*pts, strict=False), marker="o", color=color[f], linestyle="-" if final else ":",
                            alpha=1.0 if final else 0.35, label=f"{f}, step {s}" if final else None)
        for m in models:
            e = next((e for e in m["evals"] if e["step"] == last), None)
            if e is not None:
                ax.annotate(m["name"].split("-", 1)[-1], (m["gflops"], e[metric]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        r = corr.get(metric, {}).get(str(last))
        ax.set_title(f"step {last} solid, earlier dotted; r(log Gflops, metric) = {r:.2f}" if r is not None
                     else f"step {last} solid, earlier dotted", fontsize=8)

    def by_x(xfun):
        def draw(ax, metric: str) -> None:
            for m in models:
                ax.plot([xfun(m, e) for e in m["evals"]], [e[metric] for e in m["evals"]], marker="o", markersize=3,
                        color=color[_family(m["name"])], linestyle=PATCH_STYLES.get(m["patch_size"], "-"),
                        label=m["name"].split("-", 1)[-1])
        return draw

    figure("gflops", by_gflops, "Gflops per forward pass", "metric vs model Gflops (Fig. 2/8)")
    figure("steps", by_x(lambda m, e: e["step"]), "training steps", "metric vs training steps (Fig. 11)", xlog=False)
    figure("compute", by_x(lambda m, e: training_compute(m["gflops"], m["batch"], e["step"])),
           "training compute, Gflops (forward Gflops x batch x steps x 3)", "metric vs training compute (Fig. 9)")
    return paths


def _save_fig(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
