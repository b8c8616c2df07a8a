"""The figures, written as PNG files (matplotlib, Agg backend)."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from s2e_jax.runs import read_jsonl  # noqa: E402


def plot_curves(metrics: dict, path: str, title: str = ""):
    """Test accuracy and label precision per epoch (one line per network) and R(t)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    epochs = np.arange(len(metrics["test_acc"]))
    for name, ax in (("test_acc", axes[0]), ("label_precision", axes[1])):
        v = np.asarray(metrics[name]).reshape(len(epochs), -1)
        for i in range(v.shape[1]):
            ax.plot(epochs, 100 * v[:, i], label=f"network {i + 1}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.replace("_", " ") + " (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(epochs, metrics["r"])
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("R(t)")
    axes[2].set_ylim(0, 1.05)
    axes[2].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _coteaching_curve(epochs, noise_rate):
    t = np.arange(epochs, dtype=np.float64)
    return 1.0 - noise_rate * np.minimum(t / 10.0, 1.0)  # eq. (1), Co-teaching's defaults


def plot_search_dir(root: str, epochs: int, noise_rate: float):
    """Figures 4 and 6 for every algorithm searched into ``root``: ``schedule.png`` (the best R(t)
    against Co-teaching's eq. (1)) and ``search_efficiency.png`` (best validation accuracy so far
    against the number of trainings)."""
    algos = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "trials.jsonl")))
    fig4, ax4 = plt.subplots(figsize=(5.5, 3.8))
    ax4.plot(_coteaching_curve(epochs, noise_rate), "k--", label="Co-teaching (eq. 1)")
    fig6, ax6 = plt.subplots(figsize=(5.5, 3.8))
    for algo in algos:
        best_path = os.path.join(root, algo, "best_schedule.json")
        if os.path.exists(best_path):
            with open(best_path) as f:
                ax4.plot(json.load(f)["curve"], label=algo)
        trials = sorted(read_jsonl(os.path.join(root, algo, "trials.jsonl")), key=lambda r: r["trial"])
        cost = np.cumsum([r["epochs"] / epochs for r in trials])
        best = np.maximum.accumulate([r["val_acc"] if r["epochs"] == epochs and not r["failed"] else 0.0
                                      for r in trials])
        ax6.plot(cost, 100 * best, label=algo)
    ax4.set(xlabel="epoch t", ylabel="R(t)", ylim=(0, 1.05), title="learned R(t) (Figure 4)")
    ax6.set(xlabel="number of trainings", ylabel="best validation accuracy (%)",
            title="search efficiency (Figure 6)")
    for fig, ax, name in ((fig4, ax4, "schedule.png"), (fig6, ax6, "search_efficiency.png")):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(root, name), dpi=110)
        plt.close(fig)
