"""The figures, written as PNG files (matplotlib, Agg backend)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
