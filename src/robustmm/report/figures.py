"""The report's figures, each a PNG as bytes (matplotlib, no display)."""

from __future__ import annotations

import io

import numpy as np

from ..data.protocol import SWEEP_RATES
from ..metrics import mean_sd
from .loading import ReportData, by_method


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    _pyplot().close(figure)
    return buffer.getvalue()


def sweep_figure(data: ReportData) -> bytes | None:
    plt = _pyplot()
    swept = [m for m in data.modalities if any(m in run.sweeps for run in data.runs)]
    if not swept:
        return None
    figure, axes = plt.subplots(1, len(swept), figsize=(4.4 * len(swept), 3.6), squeeze=False)
    for ax, modality in zip(axes[0], swept):
        for method, runs in by_method(data.runs).items():
            curves = np.array([run.sweeps[modality] for run in runs])
            mean = curves.mean(0)
            sd = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
            ax.plot(SWEEP_RATES, mean, marker="o", markersize=3, label=method)
            ax.fill_between(SWEEP_RATES, mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel(f"test samples missing the {modality}")
        ax.set_ylabel(data.runs[0].metric)
        ax.xaxis.set_major_formatter(__import__("matplotlib").ticker.PercentFormatter(1.0))
        ax.legend(fontsize="small")
    return png(figure)


def radar_figure(data: ReportData, scenarios: list[str]) -> bytes | None:
    if len(scenarios) < 3:
        return None
    plt = _pyplot()
    angles = np.linspace(0, 2 * np.pi, len(scenarios), endpoint=False).tolist()
    figure, ax = plt.subplots(figsize=(5, 5), subplot_kw={"projection": "polar"})
    for method, runs in by_method(data.runs).items():
        values = [mean_sd([run.scenarios[s] for run in runs])[0] for s in scenarios]
        ax.plot(angles + angles[:1], values + values[:1], marker="o", label=method)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
    if data.limits:
        values = [data.limits[s] for s in scenarios]
        ax.plot(angles + angles[:1], values + values[:1], "k--", label="Bayes limit")
    ax.set_xticks(angles, scenarios)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize="small")
    return png(figure)


def gain_figure(gains: dict[str, list[tuple[str, float]]], pair: tuple[str, str]) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(gains), figsize=(4.6 * len(gains), 0.3 * max(map(len, gains.values())) + 1.2),
                                squeeze=False)
    for ax, (scenario, rows) in zip(axes[0], gains.items()):
        names, values = [r[0] for r in rows][::-1], [r[1] for r in rows][::-1]
        ax.barh(names, values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{pair[0]} − {pair[1]}, {scenario}", fontsize="medium")
        ax.set_xlabel("per-class score gain")
    return png(figure)


def tsne_figure(panels: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str], title: str) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.5), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels.items()):
        for index, label in enumerate(class_names):
            chosen = labels == index
            if chosen.any():
                ax.scatter(points[chosen, 0], points[chosen, 1], s=6, label=label)
        ax.set_title(name, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="x-small", markerscale=2)
    figure.suptitle(title)
    return png(figure)


def attention_figure(images: list, attention: dict) -> bytes:
    plt = _pyplot()
    tokens = attention["tokens"]
    figure, axes = plt.subplots(len(images), 1 + len(tokens), figsize=(2.4 * (1 + len(tokens)), 2.4 * len(images)),
                                squeeze=False)
    for row, image in enumerate(images):
        shown = np.asarray(image.convert("RGB"))
        axes[row][0].imshow(shown)
        axes[row][0].set_title("image" if row == 0 else "")
        for column, name in enumerate(tokens, 1):
            axes[row][column].imshow(shown)
            heat = attention["maps"][row, column - 1]
            axes[row][column].imshow(heat, cmap="inferno", alpha=0.6, interpolation="nearest",
                                     extent=(0, shown.shape[1], shown.shape[0], 0))
            axes[row][column].set_title(name if row == 0 else "", fontsize="small")
    for ax in axes.flat:
        ax.axis("off")
    return png(figure)


def reliability_figure(diagrams: dict[str, dict[str, dict]]) -> bytes:
    """One panel per method: the reliability curve of each availability pattern."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(diagrams), figsize=(4 * len(diagrams), 4), squeeze=False)
    for ax, (method, patterns) in zip(axes[0], diagrams.items()):
        ax.plot([0, 1], [0, 1], "k:", linewidth=1)
        for pattern, table in patterns.items():
            ax.plot([b["confidence"] for b in table["bins"]], [b["accuracy"] for b in table["bins"]], marker="o",
                    markersize=3, label=f"{pattern} (ECE {table['ece']:.3f})")
        ax.set_title(method)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize="x-small")
    return png(figure)
