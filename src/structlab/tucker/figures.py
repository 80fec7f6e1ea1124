"""The studies' figures: Pareto plots of a metric against attention parameters, and mode spectra."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FAMILY_STYLE = {
    "mha": ("tab:gray", "s"),
    "gqa": ("tab:blue", "^"),
    "mla": ("tab:orange", "D"),
    "tucker": ("tab:green", "o"),
    "tucker from mha": ("tab:red", "*"),  # initialised by HOSVD of a trained MHA layer, then fine-tuned
}
MODE_NAMES = {"qk": ("head", "query", "key"), "vo": ("head", "output", "value")}


@dataclass(frozen=True)
class Point:
    """One configuration: its family, label, attention parameters and the metric's mean and spread."""

    family: str
    label: str
    params: float
    mean: float
    std: float


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_figure(path: Path, panels: Sequence[tuple[str, Sequence[Point]]], ylabel: str) -> None:
    """One panel per (title, points): metric (mean ± std over seeds) against attention parameters on a
    log axis, each family in its colour, its Pareto frontier joined by a line."""
    from structlab.tucker.pareto import pareto_front

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels, strict=True):
        for family, (color, marker) in FAMILY_STYLE.items():
            mine = [p for p in points if p.family == family]
            if not mine:
                continue
            ax.errorbar([p.params for p in mine], [p.mean for p in mine], yerr=[p.std for p in mine], fmt=marker,
                        color=color, label=family.upper() if " " not in family else f"Tucker ({family[7:]})",
                        capsize=3, markersize=8 if marker == "*" else 6)
            front = [mine[i] for i in pareto_front([p.params for p in mine], [p.mean for p in mine])]
            ax.plot([p.params for p in front], [p.mean for p in front], "-", color=color, alpha=0.6)
            for p in mine:
                ax.annotate(p.label.split(":", 1)[-1], (p.params, p.mean), fontsize=7, xytext=(4, 3),
                            textcoords="offset points", color=color)
        ax.set_xscale("log")
        ax.set_xlabel("attention parameters (all layers)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(wspace=0.25)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def spectra_figure(path: Path, rows: Sequence[tuple[str, Sequence[dict[str, list[list[float]]]]]]) -> None:
    """Mode spectra: one row per (title, layers); six columns, the modes of W_qk (head, query, key) and
    of W_vo (head, output, value); one line per layer, singular values scaled by the largest, against
    the index as a fraction of the mode's size."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 6, figsize=(17, 2.9 * len(rows)), squeeze=False)
    for r, (title, layers) in enumerate(rows):
        colors = plt.cm.viridis([i / max(1, len(layers) - 1) for i in range(len(layers))])
        for c, (side, mode) in enumerate((s, m) for s in ("qk", "vo") for m in range(3)):
            ax = axes[r][c]
            for i, layer in enumerate(layers):
                values = layer[side][mode]
                n = len(values)
                ax.semilogy([(k + 1) / n for k in range(n)], values, "-o" if n <= 16 else "-", markersize=3,
                            color=colors[i], label=f"layer {i}", linewidth=1)
            ax.set_title(f"{title}: W_{side} {MODE_NAMES[side][mode]} mode", fontsize=9)
            ax.set_ylim(1e-3, 1.5)
            ax.grid(True, which="both", alpha=0.3)
            if c == 0:
                ax.set_ylabel("sigma / sigma_max")
            if r == len(rows) - 1:
                ax.set_xlabel("index / mode size")
        axes[r][0].legend(fontsize=7)
    fig.subplots_adjust(wspace=0.3, hspace=0.45)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
