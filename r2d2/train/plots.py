"""Loss curves: a picture of each objective term over steps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SKIP = {"step", "epoch", "lr", "samples_per_s", "temp"}


def plot_losses(history: list[dict[str, float]], path: str | Path) -> Path:
    path = Path(path)
    keys = [k for k in (history[0] if history else {}) if k not in SKIP]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in history]
    for key in keys:
        ax.plot(steps, [row.get(key, float("nan")) for row in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("training losses")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
