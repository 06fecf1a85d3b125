"""The table and figures of a text-to-image design study (``ditlab design-study``).

A study is a dict: ``{"compute", "batch", "fractions", "models": [{"name", "design", "depth", "hidden_size",
"gflops", "params", "steps", "evals": [{"step", "train_compute", "held_out": {digit_accuracy, thickness_right,
slant_right, all_right}, "seen": {...}, "frechet_ratio", ...}]}]}``. Every model gets the same training
compute, so at each fraction of it the designs are compared at equal cost. Two figures: the held-out
adherence and the Fréchet distance against training compute (one line per model: colour = design, line
style = size), and the same at the full compute against each model's forward Gflops.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

HELD_OUT_METRICS = ("digit_accuracy", "thickness_right", "slant_right", "all_right")
TITLES = {"digit_accuracy": "held-out digit right", "thickness_right": "held-out thickness right",
          "slant_right": "held-out slant right", "all_right": "held-out: all three right",
          "frechet_ratio": "Fréchet distance / real-data floor"}
SIZE_STYLES = ("--", "-", ":", "-.")


def metric_value(e: dict[str, Any], metric: str) -> float | None:
    """A held-out adherence figure or the Fréchet ratio of one evaluation."""
    if metric == "frechet_ratio":
        return e.get("frechet_ratio")
    return e["held_out"].get(metric)


def final_evals(study: dict[str, Any]) -> list[tuple[dict, dict]]:
    """(model, its evaluation at the full compute) for every model that reached it."""
    out = []
    for m in study["models"]:
        last = next((e for e in m["evals"] if e["step"] == m["steps"]), None)
        if last is not None:
            out.append((m, last))
    return out


def winners(study: dict[str, Any]) -> dict[str, str]:
    """At the full compute: the model with the best value of each metric (highest adherence, lowest FD ratio)."""
    done = final_evals(study)
    best = {}
    for metric in (*HELD_OUT_METRICS, "frechet_ratio"):
        pts = [(metric_value(e, metric), m["name"]) for m, e in done if metric_value(e, metric) is not None]
        if pts:
            best[metric] = (min(pts) if metric == "frechet_ratio" else max(pts))[1]
    return best


def study_table(study: dict[str, Any]) -> list[str]:
    """Markdown rows: one per model and evaluation."""
    lines = ["| model | params (M) | Gflops | steps | train compute (Gflops) | held-out digit | thickness | slant | "
             "all three | seen all three | FD / floor | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in study["models"]:
        for e in m["evals"]:
            h, s = e["held_out"], e["seen"]
            fd = e.get("frechet_ratio")
            lines.append(
                f"| {m['name']} | {m['params'] / 1e6:.2f} | {m['gflops']:.4f} | {e['step']} | {e['train_compute']:.3g} "
                f"| {h['digit_accuracy']:.1%} | {h['thickness_right']:.1%} | {h['slant_right']:.1%} "
                f"| {h['all_right']:.1%} | {s['all_right']:.1%} | {'-' if fd is None else f'{fd:.2f}'} "
                f"| {e.get('train_seconds', 0):.0f} |")
    return lines


def write_design_study(study: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``designs.md`` (table + winners) and the two figures; returns their paths."""
    from ditlab.files import atomic_write

    out_dir = Path(out_dir)
    paths = plot_design_study(study, out_dir)
    lines = [f"# Text-to-image designs at equal training compute ({study['compute']:.3g} Gflops each)", "",
             *study_table(study), ""]
    for metric, name in winners(study).items():
        lines.append(f"- best {TITLES[metric]} at full compute: {name}")
    paths["markdown"] = out_dir / "designs.md"
    atomic_write(paths["markdown"], "\n".join(lines) + "\n")
    return paths


def plot_design_study(study: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``designs_compute.png`` (metrics vs training compute) and ``designs_gflops.png`` (vs forward Gflops)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    metrics = [*HELD_OUT_METRICS, "frechet_ratio"]
    designs = list(dict.fromkeys(m["design"] for m in study["models"]))
    sizes = list(dict.fromkeys((m["depth"], m["hidden_size"]) for m in study["models"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {d: colors[i % len(colors)] for i, d in enumerate(designs)}
    style = {s: SIZE_STYLES[i % len(SIZE_STYLES)] for i, s in enumerate(sizes)}
    note = (f"{study.get('per_combination', '?')} samples per held-out combination, FD over {study.get('fd_num', '?')}"
            f" samples, cfg {study.get('cfg_scale', '?')}")
    paths: dict[str, Path] = {}

    def figure(name: str, draw, xlabel: str, title: str) -> None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.3), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            draw(ax, metric)
            ax.set_title(TITLES[metric], fontsize=8)
            ax.set_xlabel(xlabel, fontsize=7)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # crowded minor labels on a short axis
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=5)
        fig.suptitle(f"{title} ({note})", fontsize=8)
        fig.tight_layout()
        paths[name] = out_dir / f"designs_{name}.png"
        tmp = paths[name].with_name(f".{paths[name].name}.tmp.png")
        fig.savefig(tmp, dpi=80)
        os.replace(tmp, paths[name])
        plt.close(fig)

    def by_compute(ax, metric: str) -> None:
        for m in study["models"]:
            pts = [(e["train_compute"], metric_value(e, metric)) for e in m["evals"]
                   if metric_value(e, metric) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, color=color[m["design"]],
                        linestyle=style[(m["depth"], m["hidden_size"])], label=m["name"])

    def by_gflops(ax, metric: str) -> None:
        done = final_evals(study)
        for d in designs:
            pts = sorted((m["gflops"], metric_value(e, metric)) for m, e in done
                         if m["design"] == d and metric_value(e, metric) is not None)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, color=color[d], label=d)

    figure("compute", by_compute, "training compute (Gflops)", "metrics vs training compute")
    figure("gflops", by_gflops, "forward Gflops per sample", "at the full compute, vs model Gflops")
    return paths
