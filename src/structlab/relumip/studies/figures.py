"""The relumip studies' figures: performance profiles, accuracy/time trade-offs and big-M growth."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def performance_profile(groups: dict[str, list[dict[str, Any]]], time_limit: float, path: Path, title: str) -> None:
    """Share of instances solved (to optimality) within time t, per group, t on a log axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, recs in groups.items():
        if not recs:
            continue
        solved = np.sort([r["seconds"] for r in recs if r["solved"]])
        xs = np.concatenate([[1e-2], solved, [time_limit * 1.5]])
        ys = np.concatenate([[0], np.arange(1, solved.size + 1), [solved.size]]) / len(recs)
        ax.step(xs, ys, where="post", label=f"{label} ({solved.size}/{len(recs)})")
    ax.axvline(time_limit, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("time incl. bounds and model building (s)")
    ax.set_ylabel("share of instances solved")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def trade_off_figure(points: list[dict[str, Any]], path: Path, title: str, error_label: str) -> None:
    """Test error against median solve time per lever (colour: median linear regions or stable share)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colour = np.array([p["colour"] for p in points], dtype=float)
    sc = ax.scatter([p["error"] for p in points], [p["time"] for p in points], c=colour, cmap="viridis", s=40,
                    norm=_log_norm(colour) if points and points[0].get("log_colour") else None)
    for p in points:
        ax.annotate(p["label"], (p["error"], p["time"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.margins(0.15)  # room for the labels
    ax.set_xlabel(error_label)
    ax.set_ylabel("median solve time (s)")
    ax.set_title(title)
    if points:
        fig.colorbar(sc, ax=ax, label=points[0]["colour_label"])
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _log_norm(values: np.ndarray) -> Any:
    from matplotlib.colors import LogNorm

    finite = values[np.isfinite(values) & (values > 0)]
    return LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None


def big_m_figure(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Largest big-M of each hidden layer (median over seeds) against the layer's depth, per architecture."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, method in zip(axes, ("interval", "lp"), strict=True):
        by_arch: dict[str, list[list[float]]] = defaultdict(list)
        for r in rows:
            by_arch[r["arch"]].append(r[f"big_m_{method}"])
        for arch, per_seed in sorted(by_arch.items()):
            med = np.median(np.array(per_seed, dtype=float), axis=0)
            ax.plot(np.arange(1, med.size + 1), med, marker="o", label=arch)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("hidden layer")
        ax.set_title(f"{method} bounds")
    axes[0].set_ylabel("largest big-M in the layer")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
